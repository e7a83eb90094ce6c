"""``compare --unimodal-proxy``: the plain heuristic, the grid and the proxy-guided heuristic on the
same features, the third study in the comparison's table, JSON and report."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from difffeat_tune.search._plan import is_proxy
from tests.test_cli import project, run_cli  # noqa: F401 - the CLI tests' manifest data set and space


def _best_fusion(storage: str, name: str) -> float:
    trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    return max(t.value for t in trials if not is_proxy(t) and t.user_attrs.get("phase") == "fusion"
               and t.value is not None)


def test_compare_with_a_proxy_runs_the_proxy_guided_heuristic_as_a_third_study(  # type: ignore[no-untyped-def]
        project: Path, tmp_path: Path, capsys, monkeypatch) -> None:  # noqa: F811
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    storage = f"sqlite:///{runs}/studies.db"
    common = ["--dataset", str(project / "metadata.jsonl"), "--space", str(project / "space.toml"), "--device", "cpu",
              "--features", str(tmp_path / "features"), "--runs", str(runs), "--epochs", "3",
              "--study-name", "metadata", "--no-report"]  # the report of the three studies: tests/report
    code, out, err = run_cli(["compare", *common, "--proxy-top", "1"], capsys, monkeypatch)
    assert code == 2 and "--unimodal-proxy" in " ".join(err.split())  # --proxy-top alone names what it lacks
    code, out, err = run_cli(["compare", *common, "--unimodal-proxy", "logme", "--proxy-top", "1", "--json"],
                             capsys, monkeypatch)
    assert code == 0, err
    result = json.loads(out)
    names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    assert names == {"metadata-heuristic", "metadata-grid", "metadata-heuristic-logme"}
    proxy = result["proxy"]
    assert proxy["study_name"] == "metadata-heuristic-logme" and result["proxy_plan"] == "heuristic-logme"
    assert proxy["phases"]["proxy"] == 8 and proxy["phases"]["image"] == 1 and proxy["phases"]["text"] == 1
    assert result["heuristic"]["phases"].get("proxy") is None  # the plain heuristic trains every configuration
    assert result["proxy_regret"] == pytest.approx(_best_fusion(storage, "metadata-grid")
                                                   - _best_fusion(storage, "metadata-heuristic-logme"))
    assert result["proxy_epoch_ratio"] == pytest.approx(proxy["probe_epochs"] / result["grid"]["probe_epochs"])
    markdown = (runs / "compare-metadata.md").read_text()
    assert "| | heuristic | grid | heuristic-logme |" in markdown and "Regret of the proxy-guided heuristic" in markdown
    # Run again: every study is resumed from the storage, nothing is trained twice.
    trials = {n: len(optuna.load_study(study_name=n, storage=storage).trials) for n in names}
    code, out, err = run_cli(["compare", *common, "--unimodal-proxy", "logme", "--proxy-top", "1", "--json"],
                             capsys, monkeypatch)
    assert code == 0, err
    assert {n: len(optuna.load_study(study_name=n, storage=storage).trials) for n in names} == trials
    assert json.loads(out)["proxy_regret"] == pytest.approx(result["proxy_regret"])
