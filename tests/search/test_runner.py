from __future__ import annotations

import json
import threading
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

import optuna
import pytest

from difffeat_tune._errors import ConfigError
from difffeat_tune.search.compare import Comparison
from difffeat_tune.search.runner import open_storage
from tests.conftest import IMAGE_PEAK, TEXT_PEAK, run_study


def test_heuristic_run_finds_the_fusion_of_both_peaks(tmp_path: Path, synthetic_view, small_space) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path}/s.db"
    summary = run_study(synthetic_view, small_space, url, "h")
    # 9 image + 4 text + (cross around the peaks: image 5 x text 3) fusion trials.
    assert summary.phases == {"image": 9, "text": 4, "fusion": 15}
    assert summary.trials == {"complete": 28}
    best = summary.best_config
    assert best is not None and best["modality"] == "fusion"
    assert summary.selection_split == "val" and summary.eval_split == "test"
    assert set(summary.eval_metrics) >= {"map", "of1"}
    study = optuna.load_study(study_name="h", storage=url)
    image_best = max((t for t in study.trials if t.user_attrs["phase"] == "image"), key=lambda t: t.value)
    text_best = max((t for t in study.trials if t.user_attrs["phase"] == "text"), key=lambda t: t.value)
    assert (image_best.params["image_t"], image_best.params["image_b"]) == IMAGE_PEAK
    assert (text_best.params["text_t"], text_best.params["text_b"]) == TEXT_PEAK
    for trial in study.trials:
        assert {"phase", "modality", "config", "map", "of1", "epochs_run", "split"} <= set(trial.user_attrs)
        assert "metrics" not in trial.user_attrs  # flat attributes, no JSON blob
    assert summary.probe_epochs == 28 * 15


def test_rerunning_the_same_study_resumes_without_repeating(tmp_path: Path, synthetic_view, small_space) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path}/s.db"
    first = run_study(synthetic_view, small_space, url, "h", evaluate_best=False, n_trials=5)
    assert first.trials == {"complete": 5}
    done = run_study(synthetic_view, small_space, url, "h")
    assert done.trials["complete"] == 28
    params = [tuple(sorted(t.params.items())) for t in optuna.load_study(study_name="h", storage=url).trials
              if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(params) == len(set(params))


def test_grid_run_covers_the_fusion_grid_once(tmp_path: Path, synthetic_view, small_space) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path}/s.db"
    summary = run_study(synthetic_view, small_space, url, "g", sampler="grid", epochs=2)
    assert summary.trials == {"complete": 36} and summary.phases == {"fusion": 36}
    again = run_study(synthetic_view, small_space, url, "g", sampler="grid", epochs=2)
    assert again.trials == {"complete": 36}


def test_a_study_cannot_switch_sampler(tmp_path: Path, synthetic_view, small_space) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path}/s.db"
    run_study(synthetic_view, small_space, url, "x", evaluate_best=False, n_trials=1, epochs=1)
    with pytest.raises(ConfigError, match="sampler heuristic"):
        run_study(synthetic_view, small_space, url, "x", sampler="grid", n_trials=1, epochs=1)


def test_median_pruner_prunes_some_trials_and_spends_fewer_epochs(tmp_path: Path, synthetic_view, small_space) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path}/s.db"
    plain = run_study(synthetic_view, small_space, url, "plain", evaluate_best=False)
    pruned = run_study(synthetic_view, small_space, url, "pruned", pruner="median", evaluate_best=False)
    assert pruned.trials.get("pruned", 0) > 0
    assert pruned.probe_epochs < plain.probe_epochs


def test_comparison_reports_regret_and_saves_markdown_json_and_notes(tmp_path: Path, synthetic_view, small_space) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path}/s.db"
    h = run_study(synthetic_view, small_space, url, "c-heuristic")
    g = run_study(synthetic_view, small_space, url, "c-grid", sampler="grid")
    comparison = Comparison(heuristic=h, grid=g)
    # like with like: the best fusion pair of each study (the heuristic's overall best may be unimodal)
    assert comparison.kind == "fusion"
    assert comparison.regret == pytest.approx(g.best_by_modality["fusion"]["score"] - h.best_by_modality["fusion"]["score"])
    paths = comparison.save(tmp_path / "runs", "c", open_storage(url, heartbeat=False))
    data = json.loads(paths[1].read_text())
    assert data["trial_ratio"] == pytest.approx(28 / 36)
    assert "| best fusion |" in paths[0].read_text() and "best fusion minus the heuristic's best fusion" in paths[0].read_text()
    from optuna_dashboard import get_note

    note = get_note(optuna.load_study(study_name="c-grid", storage=url))
    assert "Heuristic search vs full grid" in str(note)


def test_dashboard_serves_studies_trials_params_and_user_attrs(tmp_path: Path, synthetic_view, small_space) -> None:  # type: ignore[no-untyped-def]
    from urllib.request import urlopen

    from difffeat_tune.dashboard import dashboard_app

    url = f"sqlite:///{tmp_path}/s.db"
    run_study(synthetic_view, small_space, url, "dash", evaluate_best=False, n_trials=3, epochs=1)

    class _Quiet(WSGIRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = make_server("127.0.0.1", 0, dashboard_app(url), handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        studies = json.load(urlopen(f"{base}/api/studies", timeout=30))["study_summaries"]
        study = next(s for s in studies if s["study_name"] == "dash")
        detail = json.load(urlopen(f"{base}/api/studies/{study['study_id']}", timeout=30))
    finally:
        server.shutdown()
    assert len(detail["trials"]) == 3
    trial = detail["trials"][0]
    assert {p["name"] for p in trial["params"]} == {"modality", "image_t", "image_b"}
    attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
    assert attrs["phase"] == "image" and "metrics" not in attrs
    assert 0 <= float(attrs["map"]) <= 1  # flat, sortable columns in the dashboard


def test_trials_trained_in_batches_equal_trials_trained_one_at_a_time(tmp_path: Path, synthetic_view, small_space) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path}/s.db"
    one = run_study(synthetic_view, small_space, url, "one", batch_trials=1, epochs=4, evaluate_best=False)
    many = run_study(synthetic_view, small_space, url, "many", epochs=4, evaluate_best=False)  # automatic batches
    assert one.trials == many.trials and set(one.trials) == {"complete"}  # the same plan, all of it run
    assert one.best_config == many.best_config and one.best_score == pytest.approx(many.best_score, abs=1e-5)

    def values(name: str) -> dict[str, float]:
        return {t.user_attrs["config"]: t.value for t in optuna.load_study(study_name=name, storage=url).trials}

    alone, together = values("one"), values("many")
    assert alone.keys() == together.keys()
    assert all(together[k] == pytest.approx(v, abs=1e-5) for k, v in alone.items())
    # Without a pruner the per-epoch scores are one attribute per trial, not a write per epoch.
    trial = optuna.load_study(study_name="many", storage=url).trials[0]
    assert not trial.intermediate_values and len(trial.user_attrs["history"]) == 4


def test_an_explicit_batch_size_that_does_not_fit_is_reduced_with_a_warning(  # type: ignore[no-untyped-def]
        tmp_path: Path, synthetic_view, small_space, caplog) -> None:
    from difffeat_tune.probe.objective import Objective, ObjectiveSettings
    from difffeat_tune.probe.train import TrainRecipe
    from difffeat_tune.config import TrialConfig

    objective = Objective(synthetic_view, ObjectiveSettings(recipe=TrainRecipe(epochs=1, batch_size=32)), "cpu")
    config = TrialConfig("image", image=(30, 8))
    one_probe = objective.batch_limit(config, requested=1, memory_budget=10**9)
    assert one_probe == 1
    with caplog.at_level("WARNING"):
        reduced = objective.batch_limit(config, requested=1000, memory_budget=10**7)
    assert 1 < reduced < 1000 and f"reduced to {reduced}" in caplog.text
    assert "MiB" in caplog.text  # sizes in a unit that shows them


def test_an_engine_option_the_engine_does_not_take_is_a_clear_error(tmp_path: Path, synthetic_view, small_space) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=r"the local engine takes no option 'resources_per_trial'") as excinfo:
        run_study(synthetic_view, small_space, f"sqlite:///{tmp_path}/s.db", "e",
                  engine_options={"resources_per_trial": {"cpu": 1}})
    assert "its options: none" in str(excinfo.value)
