"""The local engine: trials run in this process, asked and told by ``workers`` trial loops.

Each loop reads where the plan stands (:func:`~difffeat_tune.search._samplers.plan_state`) and
asks trials only while configurations are pending, up to a batch of ``batch_trials`` of them
(automatic: the pending configurations of the phase, at most
:data:`~difffeat_tune.probe._memory.DEFAULT_MAX_BATCH_PROBES`, in batches that fit in memory;
one at a time when the study has a pruner, which compares a trial with finished ones),
trains their probes as one computation
(:meth:`~difffeat_tune.probe.objective.Objective.run_many`), and tells each trial its own result
(COMPLETE, PRUNED by the study's pruner, or FAIL with its ``error``). Each trial keeps its
per-epoch scores: as intermediate values reported every epoch when the study has a pruner, else
in one ``history`` attribute. While nothing is pending and the plan is not finished (the
heuristic's phase barrier, or the last trials of other workers), it waits, failing the trials of
dead workers (:func:`~difffeat_tune.search._heartbeat.fail_stale`) so that their configurations
are retried. A finished study asks nothing, so running it again adds no trial. A trial's record
takes four write transactions and no read of what was written (:mod:`~difffeat_tune.search._records`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from difffeat_tune.config import TrialConfig
from difffeat_tune.probe._memory import DEFAULT_MAX_BATCH_PROBES
from difffeat_tune.search import _attrs as A
from difffeat_tune.search._heartbeat import Heartbeat, fail_stale
from difffeat_tune.search._records import ask, deferred_writes, finish
from difffeat_tune.search._samplers import plan_state
from difffeat_tune.search._suggest import suggest_config
from difffeat_tune.search._run import SearchRun, record_config

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
    # A pruner compares a trial with the finished ones at the same epoch; the trials of one batch
    # finish together, so they could never prune each other: with a pruner, one trial at a time.
    batch_size = settings.search.batch_trials or (1 if _has_pruner(run.study) else DEFAULT_MAX_BATCH_PROBES)
    while not budget.spent:
        state = plan_state(run.study, settings.space, settings.search)
        if state.finished:
            return
        if not state.can_ask:
            fail_stale(run.study)
            time.sleep(POLL_INTERVAL)
            continue
        asked = _ask(run, budget.take(min(batch_size, state.pending)), heartbeat, enqueued=state.enqueued > 0)
        if asked:
            _train(run, asked, heartbeat)


def _ask(run: SearchRun, wanted: int, heartbeat: Heartbeat, *, enqueued: bool) -> list[_Asked]:
    asked: list[_Asked] = []
    for _ in range(wanted):
        try:
            trial = ask(run.study, enqueued=enqueued)
        except TimeoutError:  # another worker took the last pending configuration
            break
        # At once: a worker dying from here on leaves a trial that goes stale (the heuristic
        # sampler has beaten it already, before its claim).
        heartbeat.add(trial._trial_id, beat=not getattr(run.study.sampler, "beats_claims", False))
        try:
            with deferred_writes(trial):  # the parameters and the configuration's attributes in one write
                config = suggest_config(trial, run.settings.space)
                record_config(trial, config)
        except optuna.TrialPruned:  # nothing left for this trial (a race with another worker)
            heartbeat.discard(trial._trial_id)
            _tell(run, trial, TrialState.PRUNED)
            break
        asked.append(_Asked(trial, config))
    return asked


def _train(run: SearchRun, asked: Sequence[_Asked], heartbeat: Heartbeat) -> None:
    """Train the asked trials' probes together, then tell each trial its own result."""
    reports = _has_pruner(run.study)

    def on_epoch(k: int, epoch: int, score: float) -> bool:
        trial = asked[k].trial
        trial.report(score, epoch)  # a storage write: only when a pruner reads it
        return trial.should_prune()

    try:
        results = run.objective.run_many([item.config for item in asked], on_epoch if reports else None,
                                         max_probes=run.settings.search.batch_trials)
    except BaseException:  # interrupted: the trials fail, so their configurations are retried
        for item in asked:
            heartbeat.discard(item.trial._trial_id)
            _tell(run, item.trial, TrialState.FAIL, attrs={A.ERROR: "stopped before it finished"})
        raise
    for item, result in zip(asked, results):
        heartbeat.discard(item.trial._trial_id)
        trial = item.trial
        if isinstance(result, Exception):  # every error of a configuration is recorded, not raised
            logger.warning("trial %d (%s) failed: %s", trial.number, item.config.label(), A.first_line(result))
            _tell(run, trial, TrialState.FAIL, attrs={A.ERROR: A.first_line(result)})
            continue
        attrs = A.result_attrs(result.metrics, result.epochs_run, result.seconds, result.split)
        if not reports:
            attrs[A.HISTORY] = [round(float(v), 6) for v in result.history]
        if result.stopped_early:
            _tell(run, trial, TrialState.PRUNED, attrs=attrs)
        elif not math.isfinite(result.score):
            _tell(run, trial, TrialState.FAIL, attrs={**attrs, A.ERROR: f"the score is not finite ({result.score})"})
        else:
            _tell(run, trial, TrialState.COMPLETE, result.score, attrs=attrs)


def _has_pruner(study: optuna.Study) -> bool:
    return not isinstance(study.pruner, optuna.pruners.NopPruner)


def _tell(run: SearchRun, trial: optuna.Trial, state: TrialState, value: float | None = None, *,
          attrs: dict[str, object] | None = None) -> None:
    """The result's user attributes, the state and the value in one write (see :func:`finish`)."""
    frozen = finish(run.study, trial, state, value, attrs)
    for callback in run.callbacks:
        callback(run.study, frozen)
