"""The trial protocol both engines follow, on a real SQLite study, without an engine."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from difffeat_tune._errors import StoreError
from difffeat_tune.config import TrialConfig
from difffeat_tune.probe.objective import TrialResult
from difffeat_tune.search._options import SearchOptions
from difffeat_tune.search._protocol import STOPPED, TrialProtocol
from difffeat_tune.search.runner import open_study
from difffeat_tune.settings import Settings

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _protocol(space, tmp_path: Path, name: str = "p", *, storage=None, poll_interval: float = 0.01,  # type: ignore[no-untyped-def]
              callbacks=(), **overrides: object) -> TrialProtocol:
    """The protocol over a new (or resumed) study, as an engine builds it."""
    overrides.setdefault("epochs", 4)
    settings = Settings.create(space=space, search=SearchOptions(storage=f"sqlite:///{tmp_path}/s.db", study_name=name),
                               device="cpu", **overrides)
    study = open_study(settings, name, storage=storage)
    return TrialProtocol(study, settings.space, settings.search, callbacks=callbacks, poll_interval=poll_interval)


def _result(config: TrialConfig, score: float, *, stopped_early: bool = False) -> TrialResult:
    return TrialResult(config=config, score=score, metrics={"map": score}, split="val", epochs_run=4,
                       history=[score / 2, score], seconds=0.5, stopped_early=stopped_early)


def test_ask_holds_configurations_and_tell_records_their_results(tmp_path: Path, small_space) -> None:  # type: ignore[no-untyped-def]
    told: list[int] = []
    with _protocol(small_space, tmp_path, callbacks=[lambda study, trial: told.append(trial.number)]) as protocol:
        state = protocol.next_state()
        assert state is not None and state.pending == 13 and not state.finished  # 9 image + 4 text
        asked = protocol.ask(20, state)  # no more than the plan has pending
        assert len(asked) == 13 and len({a.config for a in asked}) == 13
        protocol.tell_result(asked[0], _result(asked[0].config, 0.7), history=True)
        protocol.tell_result(asked[1], _result(asked[1].config, 0.6, stopped_early=True), history=False)
        protocol.tell_result(asked[2], _result(asked[2].config, math.nan), history=True)
        protocol.tell_result(asked[3], StoreError("shard x is corrupt\nmore detail"), history=True)
    trials = optuna.load_study(study_name="p", storage=f"sqlite:///{tmp_path}/s.db").trials
    assert [t.state for t in trials[:4]] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.FAIL]
    assert trials[0].value == 0.7 and trials[0].user_attrs["history"] == [0.35, 0.7]
    assert trials[0].user_attrs["config"] == asked[0].config.label() and trials[0].user_attrs["map"] == 0.7
    assert "history" not in trials[1].user_attrs
    assert trials[2].user_attrs["error"] == "the score is not finite (nan)"
    assert trials[3].user_attrs["error"] == "StoreError: shard x is corrupt"
    assert told == [0, 1, 2, 3]


def test_next_state_waits_at_the_phase_barrier_until_a_trial_is_told(tmp_path: Path, small_space) -> None:  # type: ignore[no-untyped-def]
    protocol = _protocol(small_space, tmp_path, poll_interval=30.0)
    asked = protocol.ask(13, protocol.next_state())  # type: ignore[arg-type]
    for item in asked[:-1]:
        protocol.tell_result(item, _result(item.config, 0.5), history=True)
    start = time.perf_counter()
    assert protocol.next_state(block=False) is None  # the fusion plan needs every unimodal result
    assert protocol.next_state(block=False) is None  # and the next read is poll_interval later
    threading.Timer(0.2, protocol.tell_result, (asked[-1], _result(asked[-1].config, 0.5)),
                    {"history": True}).start()
    state = protocol.next_state()  # blocks until the last unimodal trial is told, not 30 s
    assert state is not None and state.can_ask and time.perf_counter() - start < 10
    fusion = protocol.ask(100, state)
    assert fusion and all(a.config.modality == "fusion" for a in fusion)
    for item in fusion:
        protocol.tell_result(item, _result(item.config, 0.9), history=True)
    final = protocol.next_state()
    assert final is not None and final.finished and protocol.ask(1, final) == []
    protocol.close()


def test_the_budget_counts_trials_that_hold_a_configuration(tmp_path: Path, small_space) -> None:  # type: ignore[no-untyped-def]
    protocol = _protocol(small_space, tmp_path, n_trials=3)
    state = protocol.next_state()
    assert len(protocol.ask(2, state)) == 2 and not protocol.spent  # type: ignore[arg-type]
    assert len(protocol.ask(5, state)) == 1 and protocol.spent  # type: ignore[arg-type]
    assert protocol.ask(5, state) == []  # type: ignore[arg-type]
    protocol.close()


def test_report_skips_repeated_epochs_and_asks_the_pruner(tmp_path: Path, small_space) -> None:  # type: ignore[no-untyped-def]
    protocol = _protocol(small_space, tmp_path, pruner="median", epochs=8)
    assert protocol.prunes
    first = protocol.ask(6, protocol.next_state())  # type: ignore[arg-type]
    for item in first[:5]:
        for epoch in range(1, 9):
            assert not protocol.report(item, epoch, 0.9)
        protocol.tell_result(item, _result(item.config, 0.9), history=False)
    weak = first[5]
    assert not protocol.report(weak, 1, 0.1)  # within the median pruner's warm-up (epochs // 4 = 2)
    assert protocol.report(weak, 2, 0.1) and weak.pruned
    assert protocol.report(weak, 2, 0.1) and protocol.report(weak, 1, 0.5)  # a retried worker's repeats
    assert not protocol.report(first[0], 5, math.nan)  # not finite: not recorded
    protocol.tell(weak, TrialState.PRUNED)
    stored = optuna.load_study(study_name="p", storage=f"sqlite:///{tmp_path}/s.db").trials
    assert stored[5].state == TrialState.PRUNED and stored[5].intermediate_values == {1: 0.1, 2: 0.1}
    assert stored[5].value == 0.1  # the last intermediate value
    protocol.close()


def test_abandoned_trials_fail_and_a_trial_failed_meanwhile_is_not_recorded(tmp_path: Path, small_space) -> None:  # type: ignore[no-untyped-def]
    protocol = _protocol(small_space, tmp_path)
    asked = protocol.ask(3, protocol.next_state())  # type: ignore[arg-type]
    protocol.study._storage.set_trial_state_values(asked[0].trial._trial_id, TrialState.FAIL)  # e.g. failed as stale
    protocol.tell_result(asked[0], _result(asked[0].config, 0.8), history=True)  # logged, not raised
    protocol.abandon(STOPPED, asked[1:2])
    protocol.abandon("the driver stopped")  # every trial not told yet
    trials = optuna.load_study(study_name="p", storage=f"sqlite:///{tmp_path}/s.db").trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 3
    assert "error" not in trials[0].user_attrs
    assert [t.user_attrs["error"] for t in trials[1:]] == [STOPPED, "the driver stopped"]
    state = protocol.next_state()
    assert state is not None and state.pending == 13  # failed configurations are retried
    protocol.close()


def test_the_trials_of_a_dead_worker_go_stale_and_are_asked_again(tmp_path: Path, small_space) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path}/s.db"
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        storage = optuna.storages.RDBStorage(url, heartbeat_interval=1, grace_period=1)
    dead = _protocol(small_space, tmp_path, "d", storage=storage)
    held = dead.ask(13, dead.next_state())  # type: ignore[arg-type]
    assert len(held) == 13
    dead.close()  # no more heartbeats, nothing told
    time.sleep(2.5)
    alive = _protocol(small_space, tmp_path, "d", storage=storage)
    state = alive.next_state()  # the first read finds nothing pending and fails the stale trials
    assert state is not None and state.pending == 13  # the heuristic retries failed configurations
    assert {a.config for a in alive.ask(13, state)} == {a.config for a in held}
    alive.close()
