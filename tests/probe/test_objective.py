from __future__ import annotations

import pytest
import torch

from difffeat_tune._errors import ConfigError, StoreError
from difffeat_tune.config import TrialConfig
from difffeat_tune.probe import DEFAULT_MAX_BATCH_PROBES
from difffeat_tune.probe.objective import Objective, ObjectiveSettings
from difffeat_tune.probe.train import TrainRecipe
from tests.conftest import IMAGE_PEAK, TEXT_PEAK

FAST = ObjectiveSettings(recipe=TrainRecipe(epochs=15, batch_size=32, cpu_threads=1))


def test_scores_on_val_and_evaluates_on_test_by_default(synthetic_view) -> None:  # type: ignore[no-untyped-def]
    objective = Objective(synthetic_view, FAST, device="cpu")
    assert objective.selection_split == "val" and objective.eval_split == "test"
    result = objective(TrialConfig("image", image=IMAGE_PEAK))
    assert result.split == "val" and result.epochs_run == 15 and len(result.history) == 15
    assert set(result.metrics) >= {"map", "cp", "cr", "cf1", "op", "or", "of1"}
    assert objective.evaluate(TrialConfig("image", image=IMAGE_PEAK)).split == "test"


def test_the_informative_configuration_scores_higher(synthetic_view) -> None:  # type: ignore[no-untyped-def]
    objective = Objective(synthetic_view, FAST, device="cpu")
    peak = objective(TrialConfig("image", image=IMAGE_PEAK)).score
    far = objective(TrialConfig("image", image=(50, 12))).score
    assert peak > far + 0.05


def test_fusion_beats_each_modality_alone(synthetic_view) -> None:  # type: ignore[no-untyped-def]
    objective = Objective(synthetic_view, FAST, device="cpu")
    image = objective(TrialConfig("image", image=IMAGE_PEAK)).score
    text = objective(TrialConfig("text", text=TEXT_PEAK)).score
    for method in ("simple_concat", "linear_concat", "linear_add", "cross_attention"):
        fused = objective(TrialConfig("fusion", image=IMAGE_PEAK, text=TEXT_PEAK, fusion=method, d_alg=32)).score
        assert fused > max(image, text), method


def test_paper_protocol_selects_on_the_evaluation_split(synthetic_view) -> None:  # type: ignore[no-untyped-def]
    objective = Objective(synthetic_view, ObjectiveSettings(recipe=TrainRecipe(epochs=2), protocol="paper"), "cpu")
    assert objective.selection_split == "test"
    assert objective(TrialConfig("text", text=TEXT_PEAK)).split == "test"


def test_without_a_val_split_selection_uses_a_seeded_train_holdout(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    from tests.conftest import write_synthetic_store

    view = write_synthetic_store(tmp_path / "f")
    (view.folder / "labels" / "val.parquet").unlink()
    info = view.info
    del info["splits"]["val"]
    import json

    (view.folder / "dataset.json").write_text(json.dumps(info))
    from difffeat_tune.store import FeatureStore

    objective = Objective(FeatureStore(tmp_path / "f").view("synthetic"), FAST, "cpu")
    assert objective.selection_split == "train-holdout" and objective.eval_split == "test"
    first = objective(TrialConfig("image", image=IMAGE_PEAK))
    again = Objective(FeatureStore(tmp_path / "f").view("synthetic"), FAST, "cpu")(TrialConfig("image", image=IMAGE_PEAK))
    assert first.score == pytest.approx(again.score)
    shutil.rmtree(tmp_path / "f")


def test_results_are_deterministic(synthetic_view) -> None:  # type: ignore[no-untyped-def]
    config = TrialConfig("fusion", image=IMAGE_PEAK, text=TEXT_PEAK, fusion="linear_add", d_alg=32)
    a = Objective(synthetic_view, FAST, "cpu")(config)
    b = Objective(synthetic_view, FAST, "cpu")(config)
    assert a.history == b.history


def test_on_epoch_sees_every_epoch_and_can_stop_training(synthetic_view) -> None:  # type: ignore[no-untyped-def]
    seen = []
    result = Objective(synthetic_view, FAST, "cpu")(TrialConfig("image", image=IMAGE_PEAK),
                                                    on_epoch=lambda e, s: seen.append((e, s)) or e >= 3)
    assert [e for e, _ in seen] == [1, 2, 3] and result.stopped_early and result.epochs_run == 3


def test_feature_cache_is_bounded_in_bytes_and_reused(synthetic_view) -> None:  # type: ignore[no-untyped-def]
    probe = Objective(synthetic_view, FAST, "cpu")
    one = probe.input_bytes("image", IMAGE_PEAK, "train") + probe.input_bytes("image", IMAGE_PEAK, "val")
    settings = ObjectiveSettings(recipe=TrainRecipe(epochs=1), memory_budget=2 * one + one // 2)
    objective = Objective(synthetic_view, settings, "cpu")
    objective(TrialConfig("image", image=IMAGE_PEAK))
    cached = objective.cache.get(("image", IMAGE_PEAK, "train"))
    objective(TrialConfig("image", image=IMAGE_PEAK))
    assert cached is not None and objective.cache.get(("image", IMAGE_PEAK, "train")) is cached
    for t in (10, 30, 50):
        objective(TrialConfig("image", image=(t, 4)))
        assert objective.cache.bytes_used <= settings.memory_budget
    assert len(objective.cache) < 8 and objective.cache.peak_bytes <= settings.memory_budget  # not all four features


def test_a_configuration_that_was_not_extracted_names_the_missing_shard(synthetic_view) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(StoreError, match="t=20, block 8"):
        Objective(synthetic_view, FAST, "cpu")(TrialConfig("image", image=(20, 8)))


def test_unknown_fusion_method_or_protocol_is_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown fusion method"):
        TrialConfig("fusion", image=(10, 8), text=(0, 8), fusion="late")
    with pytest.raises(ConfigError, match="protocol"):
        ObjectiveSettings(protocol="test")  # type: ignore[arg-type]


def test_ids_that_do_not_match_the_labels_are_an_error(synthetic_view) -> None:  # type: ignore[no-untyped-def]
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = synthetic_view.folder / "labels" / "val.parquet"
    table = pq.read_table(path)
    ids = table.column("id").to_pylist()
    ids[3], ids[4] = ids[4], ids[3]
    pq.write_table(table.set_column(0, "id", pa.array(ids)), path)
    with pytest.raises(StoreError, match="row 3"):
        Objective(synthetic_view, FAST, "cpu")(TrialConfig("text", text=TEXT_PEAK))


def test_representation_is_what_the_classifier_of_the_trained_head_reads(synthetic_view) -> None:  # type: ignore[no-untyped-def]
    objective = Objective(synthetic_view, ObjectiveSettings(recipe=TrainRecipe(epochs=3, batch_size=32)))
    config = TrialConfig("fusion", image=(30, 8), text=(0, 12), fusion="linear_add", d_alg=8)
    fused = objective.representation(config)
    assert fused.features.shape == (80, 8) and fused.labels.shape == (80, 6) and fused.logits.shape == (80, 6)
    assert fused.result.split == "test" and fused.result.metrics == objective.evaluate(config).metrics
    image = objective.representation(TrialConfig("image", image=(30, 8)))
    assert image.features.shape == (80, 16) and (image.labels == fused.labels).all()
    torch.testing.assert_close(image.features.mean(dim=0), torch.zeros(16), atol=0.5, rtol=0)  # standardised on train


def test_representation_logits_score_as_the_evaluation_metrics(synthetic_view) -> None:  # type: ignore[no-untyped-def]
    from difffeat_tune.probe.metrics import mean_average_precision

    objective = Objective(synthetic_view, ObjectiveSettings(recipe=TrainRecipe(epochs=3, batch_size=32)))
    rep = objective.representation(TrialConfig("text", text=(0, 12)))
    targets = torch.from_numpy(rep.labels.astype("int64"))
    assert mean_average_precision(rep.logits, targets, from_logits=True) == pytest.approx(rep.result.metrics["map"])


def _phase_configs() -> list[TrialConfig]:
    """A mixed request: image and text probes (different stores), linear fusion heads, cross attention."""
    return [TrialConfig("image", image=(t, b)) for t, b in ((10, 4), IMAGE_PEAK, (50, 12))] + [
        TrialConfig("text", text=TEXT_PEAK),
        TrialConfig("fusion", image=IMAGE_PEAK, text=TEXT_PEAK, fusion="linear_add", d_alg=8),
        TrialConfig("fusion", image=(10, 4), text=TEXT_PEAK, fusion="linear_add", d_alg=8),
        TrialConfig("fusion", image=IMAGE_PEAK, text=(0, 8), fusion="cross_attention", d_alg=8),
    ]


def test_run_many_equals_one_call_per_configuration(synthetic_view) -> None:  # type: ignore[no-untyped-def]
    settings = ObjectiveSettings(recipe=TrainRecipe(epochs=4, batch_size=32, cpu_threads=1))
    configs = _phase_configs()
    calls: list[tuple[int, int]] = []
    objective = Objective(synthetic_view, settings, "cpu")
    many = objective.run_many(configs, lambda k, e, s: calls.append((k, e)) is None and k == 1 and e >= 2)
    alone = Objective(synthetic_view, settings, "cpu")
    for k, config in enumerate(configs):
        single = alone(config, on_epoch=(lambda e, s: e >= 2) if k == 1 else None)
        result = many[k]
        assert not isinstance(result, Exception)
        assert result.config == config and result.split == single.split == "val"
        assert result.history == pytest.approx(single.history, abs=1e-6)
        assert result.metrics == pytest.approx(single.metrics, abs=1e-6)
        assert result.epochs_run == single.epochs_run and result.stopped_early == single.stopped_early
        assert result.seconds > 0
        assert [e for j, e in calls if j == k] == list(range(1, single.epochs_run + 1))
    assert many[1].stopped_early and many[1].epochs_run == 2


def test_run_many_reports_a_missing_shard_in_place_and_trains_the_others(synthetic_view) -> None:  # type: ignore[no-untyped-def]
    objective = Objective(synthetic_view, ObjectiveSettings(recipe=TrainRecipe(epochs=2, batch_size=32)), "cpu")
    results = objective.run_many([TrialConfig("image", image=IMAGE_PEAK), TrialConfig("image", image=(20, 8)),
                                  TrialConfig("image", image=(10, 8))])
    assert isinstance(results[1], StoreError) and "t=20, block 8" in results[1].message
    assert [r.epochs_run for r in (results[0], results[2])] == [2, 2]  # type: ignore[union-attr]


def test_standardised_inputs_are_cached_per_role_and_shared_by_later_trials(synthetic_view) -> None:  # type: ignore[no-untyped-def]
    objective = Objective(synthetic_view, ObjectiveSettings(recipe=TrainRecipe(epochs=1)), "cpu")
    objective.run_many([TrialConfig("image", image=IMAGE_PEAK), TrialConfig("text", text=TEXT_PEAK)])
    train = objective.cache.get(("image", IMAGE_PEAK, "train"))
    assert train is not None
    torch.testing.assert_close(train.mean(dim=0), torch.zeros(16), atol=1e-5, rtol=0)
    torch.testing.assert_close(train.std(dim=0), torch.ones(16), atol=1e-5, rtol=0)
    objective(TrialConfig("fusion", image=IMAGE_PEAK, text=TEXT_PEAK, fusion="linear_add", d_alg=8))
    assert objective.cache.get(("image", IMAGE_PEAK, "train")) is train


def test_batch_limit_follows_the_memory_budget(synthetic_view) -> None:  # type: ignore[no-untyped-def]
    objective = Objective(synthetic_view, FAST, "cpu")
    image = TrialConfig("image", image=IMAGE_PEAK)
    assert objective.batch_limit(TrialConfig("fusion", image=IMAGE_PEAK, text=TEXT_PEAK,
                                             fusion="cross_attention", d_alg=8)) == 1
    assert objective.batch_limit(image, requested=6) == 6
    roomy = objective.batch_limit(image, memory_budget=2**22)
    assert 1 < roomy < DEFAULT_MAX_BATCH_PROBES
    assert objective.batch_limit(image, requested=roomy + 5, memory_budget=2**22) == roomy
    assert objective.batch_limit(image, memory_budget=2**40) == DEFAULT_MAX_BATCH_PROBES
    assert objective.batch_limit(image, memory_budget=2**20) == 1
