"""The local engine: trials run in this process, asked and told by ``workers`` trial loops.

Each loop reads where the plan stands (:func:`~difffeat_tune.search._samplers.plan_state`) and
asks trials only while configurations are pending, up to a batch of ``batch_trials`` of them,
trains their probes, and tells each trial its own result (COMPLETE, PRUNED by the study's pruner,
or FAIL with its ``error``). While nothing is pending and the plan is not finished (the
heuristic's phase barrier, or the last trials of other workers), it waits, failing the trials of
dead workers (:func:`~difffeat_tune.search._heartbeat.fail_stale`) so that their configurations
are retried. A finished study asks nothing, so running it again adds no trial.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from difffeat_tune.config import TrialConfig
from difffeat_tune.search import _attrs as A
from difffeat_tune.search._heartbeat import Heartbeat, fail_stale
from difffeat_tune.search._samplers import plan_state
from difffeat_tune.search._suggest import suggest_config
from difffeat_tune.search.runner import SearchRun, record_config

logger = logging.getLogger(__name__)

#: Seconds between two reads of the plan while a worker waits.
POLL_INTERVAL = 0.5


@dataclass
class _Asked:
    trial: optuna.Trial
    config: TrialConfig


class _Budget:
    """How many more trials this process may ask (``None``: no limit), shared by its loops."""

    def __init__(self, n_trials: int | None) -> None:
        self._left = n_trials
        self._lock = threading.Lock()

    def take(self, wanted: int) -> int:
        with self._lock:
            if self._left is None:
                return wanted
            granted = min(wanted, self._left)
            self._left -= granted
            return granted

    @property
    def spent(self) -> bool:
        return self._left is not None and self._left <= 0


def run_local(run: SearchRun) -> None:
    """Run the trials of ``run`` in this process until the plan is finished or the budget spent."""
    search = run.settings.search
    budget = _Budget(search.n_trials)
    with Heartbeat(run.study._storage) as heartbeat:
        if search.workers == 1:
            _loop(run, budget, heartbeat)
            return
        errors: list[BaseException] = []

        def worker() -> None:
            try:
                _loop(run, budget, heartbeat)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
                errors.append(exc)

        threads = [threading.Thread(target=worker, name=f"difffeat-worker-{i}") for i in range(search.workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]


def _loop(run: SearchRun, budget: _Budget, heartbeat: Heartbeat) -> None:
    settings = run.settings
    batch_size = settings.search.batch_trials or 1
    while not budget.spent:
        state = plan_state(run.study, settings.space, settings.search)
        if state.finished:
            return
        if not state.can_ask:
            fail_stale(run.study)
            time.sleep(POLL_INTERVAL)
            continue
        asked = _ask(run, budget.take(min(batch_size, state.pending)), heartbeat)
        if asked:
            _train(run, asked, heartbeat)


def _ask(run: SearchRun, wanted: int, heartbeat: Heartbeat) -> list[_Asked]:
    asked: list[_Asked] = []
    for _ in range(wanted):
        try:
            with warnings.catch_warnings():  # the engine records the heartbeats itself (Heartbeat)
                warnings.filterwarnings("ignore", message="Heartbeat of storage", category=UserWarning)
                trial = run.study.ask()
        except TimeoutError:  # another worker took the last pending configuration
            break
        try:
            config = suggest_config(trial, run.settings.space)
        except optuna.TrialPruned:  # nothing left for this trial (a race with another worker)
            _tell(run, trial, TrialState.PRUNED)
            break
        record_config(trial, config)
        heartbeat.add(trial._trial_id)
        asked.append(_Asked(trial, config))
    return asked


def _train(run: SearchRun, asked: Sequence[_Asked], heartbeat: Heartbeat) -> None:
    pending = list(asked)
    try:
        while pending:
            item = pending.pop(0)
            _train_one(run, item)
            heartbeat.discard(item.trial._trial_id)
    except BaseException:  # interrupted: the trials not yet told fail, so their configurations are retried
        for item in pending:
            heartbeat.discard(item.trial._trial_id)
            A.record_error(run.study, item.trial._trial_id, "stopped before it finished")
            _tell(run, item.trial, TrialState.FAIL)
        raise


def _train_one(run: SearchRun, item: _Asked) -> None:
    trial = item.trial

    def on_epoch(epoch: int, score: float) -> bool:
        trial.report(score, epoch)
        return trial.should_prune()

    try:
        result = run.objective(item.config, on_epoch)
    except Exception as exc:  # noqa: BLE001 - every error of a configuration is recorded, not raised
        logger.warning("trial %d (%s) failed: %s", trial.number, item.config.label(), A.first_line(exc))
        logger.debug("trial %d traceback", trial.number, exc_info=True)
        A.record_error(run.study, trial._trial_id, exc)
        _tell(run, trial, TrialState.FAIL)
        return
    for key, value in A.result_attrs(result.metrics, result.epochs_run, result.seconds, result.split).items():
        trial.set_user_attr(key, value)
    if result.stopped_early:
        _tell(run, trial, TrialState.PRUNED)
    else:
        _tell(run, trial, TrialState.COMPLETE, result.score)


def _tell(run: SearchRun, trial: optuna.Trial, state: TrialState, value: float | None = None) -> None:
    frozen = run.study.tell(trial, value, state=state)
    for callback in run.callbacks:
        callback(run.study, frozen)
