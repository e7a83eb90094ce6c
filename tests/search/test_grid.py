"""The grid sampler: every point once, a failed point retried up to max_failures, an interrupted grid resumed."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from difffeat_tune._errors import ConfigError
from difffeat_tune.search._options import SearchOptions
from difffeat_tune.search._protocol import STOPPED, TrialProtocol
from difffeat_tune.search._samplers import GridSearchSampler, plan_state
from difffeat_tune.search.runner import open_study
from difffeat_tune.settings import Settings
from difffeat_tune.space import load_space
from tests.conftest import run_study, write_synthetic_store

#: A 2 x 2 image grid and a 1 x 2 text grid: 8 fusion points.
TINY = """
[image]
t = [10, 30]
b = [4, 8]
[text]
t = [0]
b = [8, 12]
[fusion]
methods = ["linear_add"]
d_alg = 16
"""
AXES = {"x": [0, 1, 2, 3]}


def _tell(study: optuna.Study, state: TrialState) -> int:
    trial = study.ask()
    trial.suggest_categorical("x", AXES["x"])
    study.tell(trial, 1.0 if state == TrialState.COMPLETE else None, state=state)
    return int(study.trials[-1].system_attrs["grid_id"])


def test_a_failed_point_is_tried_again_then_given_up_after_max_failures() -> None:
    sampler = GridSearchSampler(AXES, seed=0, max_failures=2)
    study = optuna.create_study(sampler=sampler, direction="maximize")
    first = [_tell(study, TrialState.FAIL if k == 1 else TrialState.COMPLETE) for k in range(4)]
    assert sorted(first) == [0, 1, 2, 3]  # the first trials take every point once
    failed = first[1]
    progress = sampler.progress(study.trials)
    assert progress.free == [failed] and not progress.exhausted  # Optuna's own sampler calls it visited
    assert _tell(study, TrialState.FAIL) == failed  # the retry takes the failed point
    progress = sampler.progress(study.trials)
    assert progress.given_up == {failed} and progress.free == [] and progress.exhausted
    assert sampler.is_exhausted(study)


def test_with_max_failures_1_a_failed_point_is_not_retried() -> None:
    sampler = GridSearchSampler(AXES, seed=0, max_failures=1)
    study = optuna.create_study(sampler=sampler, direction="maximize")
    for k in range(4):
        _tell(study, TrialState.FAIL if k == 0 else TrialState.COMPLETE)
    assert sampler.progress(study.trials).exhausted
    with pytest.raises(ConfigError, match="max_failures must be an integer of 1 or more, got 0"):
        GridSearchSampler(AXES, max_failures=0)


def test_an_interrupted_grid_resumes_and_trains_the_points_it_lost(tmp_path: Path) -> None:
    (tmp_path / "tiny.toml").write_text(TINY)
    space = load_space(tmp_path / "tiny.toml")
    view = write_synthetic_store(tmp_path / "features")
    url = f"sqlite:///{tmp_path}/studies.db"
    settings = Settings.create(space=space, search=SearchOptions(storage=url, sampler="grid"), device="cpu")
    study = open_study(settings, "grid")
    with TrialProtocol(study, settings.space, settings.search) as protocol:
        lost = protocol.ask(3, protocol.next_state())  # a run interrupted while these trained
        protocol.abandon(STOPPED, lost)
    state = plan_state(study, settings.space, settings.search)
    assert state.pending == 8 and not state.finished  # the 3 interrupted points are pending again
    summary = run_study(view, space, url, "grid", sampler="grid", evaluate_best=False, epochs=2)
    assert summary.trials == {"complete": 8, "fail": 3} and summary.phases == {"fusion": 8}
    trials = optuna.load_study(study_name="grid", storage=url).trials
    complete = sorted(t.user_attrs["config"] for t in trials if t.state == TrialState.COMPLETE)
    assert complete == sorted(c.label() for c in space.fusion_configs(("linear_add",)))
    assert {t.user_attrs["config"] for t in trials if t.state == TrialState.FAIL} <= set(complete)
