"""The proxy-guided heuristic end to end: proxy trials score every unimodal (t, b) without training,
the ``proxy_top`` best per modality are trained, and fusion runs around the best trained ones."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from difffeat_tune.search._plan import (
    PROXY_ATTR,
    PROXY_PHASE,
    best_trained,
    is_proxy,
    rank,
)
from tests.conftest import IMAGE_PEAK, TEXT_PEAK, run_study
from tests.test_cli import project  # noqa: F401 - the CLI tests' manifest data set and space

#: The small test space: 3 x 3 image and 2 x 2 text configurations.
N_IMAGE, N_TEXT = 9, 4
EPOCHS, TOP = 3, 2


def _study(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def _points(trial: optuna.trial.FrozenTrial, modality: str) -> tuple[int, int]:
    return (trial.params[f"{modality}_t"], trial.params[f"{modality}_b"])


def _check_proxy_study(study: optuna.Study, proxy: str) -> None:
    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    proxied = [t for t in trials if is_proxy(t)]
    trained = [t for t in trials if not is_proxy(t)]
    # Every unimodal configuration is scored once by the proxy, with no probe epoch.
    assert sorted(t.user_attrs["modality"] for t in proxied) == ["image"] * N_IMAGE + ["text"] * N_TEXT
    for t in proxied:
        assert t.state == TrialState.COMPLETE and t.user_attrs[PROXY_ATTR] == proxy
        assert t.user_attrs["phase"] == PROXY_PHASE and t.user_attrs["epochs_run"] == 0
        assert t.value == pytest.approx(t.user_attrs[proxy]) and not t.intermediate_values
    # Exactly the proxy_top best by proxy score are trained per modality, each for its epochs.
    for modality in ("image", "text"):
        scores = sorted((t for t in proxied if t.user_attrs["modality"] == modality),
                        key=lambda t: rank(t.value, t.number), reverse=True)
        mine = [t for t in trained if t.user_attrs["phase"] == modality]
        assert sorted(_points(t, modality) for t in mine) == sorted(_points(t, modality) for t in scores[:TOP])
        assert all(t.state == TrialState.COMPLETE and t.user_attrs["epochs_run"] == EPOCHS for t in mine)
    # Fusion crosses the neighbourhoods of the best trained unimodal configurations.
    fusion = [t for t in trained if t.user_attrs["phase"] == "fusion"]
    assert fusion and {t.user_attrs["phase"] for t in trained} == {"image", "text", "fusion"}
    for modality in ("image", "text"):
        best = best_trained(t for t in trained if t.user_attrs["phase"] == modality)
        assert best is not None and _points(best, modality) in {_points(t, modality) for t in fusion}
    overall = best_trained(trials)
    assert overall is not None and not is_proxy(overall)


@pytest.mark.parametrize("proxy", ["ridge", "logme"])
def test_a_proxy_guided_search_trains_only_the_top_configurations(tmp_path: Path, synthetic_view, small_space,
                                                                  proxy: str) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path}/s.db"
    summary = run_study(synthetic_view, small_space, url, "p", unimodal_proxy=proxy, proxy_top=TOP, epochs=EPOCHS,
                        evaluate_best=False)
    study = _study(url, "p")
    _check_proxy_study(study, proxy)
    n_fusion = summary.phases["fusion"]
    assert summary.phases == {PROXY_PHASE: N_IMAGE + N_TEXT, "image": TOP, "text": TOP, "fusion": n_fusion}
    assert summary.probe_epochs == (2 * TOP + n_fusion) * EPOCHS
    # The proxies rank the planted peaks among the top ones, so training finds them.
    image = best_trained(t for t in study.trials if t.user_attrs.get("phase") == "image")
    text = best_trained(t for t in study.trials if t.user_attrs.get("phase") == "text")
    assert image is not None and text is not None
    assert (_points(image, "image"), _points(text, "text")) == (IMAGE_PEAK, TEXT_PEAK)
    # A finished proxy-guided study is finished: running it again adds nothing.
    again = run_study(synthetic_view, small_space, url, "p", unimodal_proxy=proxy, proxy_top=TOP, epochs=EPOCHS,
                      evaluate_best=False)
    assert len(_study(url, "p").trials) == len(study.trials) and again.phases == summary.phases


def test_an_interrupted_proxy_guided_search_continues_where_it_stopped(tmp_path: Path, synthetic_view,
                                                                       small_space) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path}/s.db"
    options = {"unimodal_proxy": "ridge", "proxy_top": TOP, "epochs": EPOCHS, "evaluate_best": False}
    first = run_study(synthetic_view, small_space, url, "p", n_trials=5, **options)
    assert first.phases == {PROXY_PHASE: 5}
    run_study(synthetic_view, small_space, url, "p", workers=2, batch_trials=4, **options)
    study = _study(url, "p")
    _check_proxy_study(study, "ridge")
    labels = [(t.user_attrs["config"], is_proxy(t)) for t in study.trials if not t.user_attrs.get("surplus")]
    assert len(labels) == len(set(labels))  # no configuration scored or trained twice


def test_the_summary_and_the_evaluation_never_take_a_proxy_score_for_a_trained_one(
        tmp_path: Path, synthetic_view, small_space) -> None:  # type: ignore[no-untyped-def]
    # On these features the ridge proxy scores the text peak above every trained fusion.
    url = f"sqlite:///{tmp_path}/s.db"
    summary = run_study(synthetic_view, small_space, url, "p", unimodal_proxy="ridge", proxy_top=TOP, epochs=EPOCHS)
    study = _study(url, "p")
    assert max(t.value for t in study.trials if is_proxy(t)) > max(t.value for t in study.trials if not is_proxy(t))
    best = best_trained(study.trials)
    assert best is not None and summary.best_label == best.user_attrs["config"] and summary.best_score == best.value
    assert study.user_attrs["eval_trial"] == best.number and summary.eval_metrics
    assert set(summary.best_by_modality) == {"image", "text", "fusion"}
    assert not any(is_proxy(study.trials[int(entry["trial"])]) for entry in summary.best_by_modality.values())


def test_the_cli_runs_a_proxy_guided_heuristic_in_a_study_of_its_own(  # type: ignore[no-untyped-def]
        project, tmp_path, capsys, monkeypatch) -> None:  # noqa: F811
    import json

    from tests.test_cli import run_cli

    monkeypatch.chdir(tmp_path)
    common = ["--dataset", str(project / "metadata.jsonl"), "--space", str(project / "space.toml"), "--device", "cpu",
              "--features", str(tmp_path / "features"), "--runs", str(tmp_path / "runs"), "--epochs", "3", "--no-report"]
    code, out, err = run_cli(["run", "heuristic", *common, "--unimodal-proxy", "ridge", "--proxy-top", "1", "--json"],
                             capsys, monkeypatch)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["study_name"].endswith("-heuristic-ridge") and summary["phases"]["proxy"] > 0
    assert summary["phases"]["image"] == 1 and summary["phases"]["text"] == 1  # --proxy-top 1 per modality
    code, out, err = run_cli(["run", "grid", *common, "--unimodal-proxy", "ridge"], capsys, monkeypatch)
    assert code == 2 and "--unimodal-proxy applies to the heuristic sampler" in " ".join(err.split())
    # compare --unimodal-proxy runs it beside the heuristic and the grid: tests/search/test_compare_proxy.py
