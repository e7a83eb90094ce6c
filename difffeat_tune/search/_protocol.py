"""The trial protocol both engines follow: ask trials for pending configurations, tell their results.

An engine only decides where a batch of configurations trains (this process, a Ray worker); the
rest is :class:`TrialProtocol`:

* **waiting** (:meth:`TrialProtocol.next_state`): read where the plan stands
  (:func:`~difffeat_tune.search._samplers.plan_state`); while nothing is pending and the plan is
  not finished (the heuristic's phase barrier, or the last trials of other workers), fail the
  trials of dead workers (:func:`~difffeat_tune.search._heartbeat.fail_stale`) and read again
  :data:`POLL_INTERVAL` seconds later, or as soon as a trial is told;
* **asking** (:meth:`TrialProtocol.ask`): create the trial (the sampler claims its configuration
  or grid point), beat for it from then on, suggest its configuration and record its attributes
  in one write; a surplus trial (nothing left for it) is told PRUNED; the run's ``n_trials``
  budget is shared by every caller;
* **running** (:func:`run_batch`, wherever the engine runs it): the configurations of a batch
  of trials (up to :attr:`TrialProtocol.batch_size`) train their probes as one computation; a
  trial holding the user attribute ``proxy`` (the proxy-guided heuristic's proxy stage) is scored
  by :meth:`~difffeat_tune.probe.objective.Objective.proxy_score` on its own instead (never part
  of the stacked probes) and told COMPLETE with that score;
* **telling** (:meth:`TrialProtocol.report`, :meth:`~TrialProtocol.tell_result`,
  :meth:`~TrialProtocol.fail`, :meth:`~TrialProtocol.tell`): per-epoch scores as intermediate
  values with the study's pruner's verdict, then the result's user attributes, state and value in
  one write (:func:`~difffeat_tune.search._records.finish`), then the run's callbacks.

Example:

    .. code-block:: python

        with TrialProtocol(study, space, options) as protocol:
            while not protocol.spent:
                state = protocol.next_state()  # blocks while running trials must end first
                if state.finished:
                    break
                asked = protocol.ask(protocol.batch_size, state)
                results = run_batch(objective, [(a.config, a.proxy) for a in asked])
                for item, result in zip(asked, results):
                    protocol.tell_result(item, result, history=True)

Notes:
    Every worker of a study (threads of one process, processes sharing a storage, a Ray driver)
    can use its own protocol: the plan is read from storage and each configuration is claimed
    once by the sampler. One protocol may be shared by the threads of a process.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType

import optuna
from optuna.trial import FrozenTrial, TrialState

from difffeat_tune.config import TrialConfig
from difffeat_tune.probe._batched import BatchOnEpoch
from difffeat_tune.probe._memory import DEFAULT_MAX_BATCH_PROBES
from difffeat_tune.probe.objective import Objective, TrialResult
from difffeat_tune.search import _attrs as A
from difffeat_tune.search._heartbeat import Heartbeat, fail_stale
from difffeat_tune.search._options import SearchOptions
from difffeat_tune.search._plan import PROXY_ATTR
from difffeat_tune.search._records import ask, deferred_writes, finish
from difffeat_tune.search._run import Callback, record_config
from difffeat_tune.search._samplers import PlanState, plan_state
from difffeat_tune.search._suggest import suggest_config
from difffeat_tune.space import SearchSpace

logger = logging.getLogger(__name__)

#: Seconds between two reads of the plan while running trials must end first.
POLL_INTERVAL = 0.5
#: The error of a trial whose training was interrupted (its configuration is retried).
STOPPED = "stopped before it finished"


@dataclass(eq=False)
class Asked:
    """A trial that holds a configuration, as the engine that asked it knows it.

    Attributes:
        trial: the live Optuna trial.
        config: its configuration.
        reported: the last epoch whose score was reported (a retried worker reports again).
        pruned: the study's pruner stopped it.
        proxy: the proxy scoring it instead of a trained probe (the trial's ``proxy`` attribute), or ``None``.
    """

    trial: optuna.Trial
    config: TrialConfig
    reported: int = 0
    pruned: bool = False
    proxy: str | None = None


def run_batch(objective: Objective, items: Sequence[tuple[TrialConfig, str | None]],
              on_epoch: BatchOnEpoch | None = None, *, max_probes: int | None = None,
              ) -> list[TrialResult | Exception]:
    """The work of a batch of trials, whichever engine runs it: one result per ``(config, proxy)``.

    An item with a proxy is scored by its closed form (no probe, no epochs), one by one; the
    others train together (:meth:`~difffeat_tune.probe.objective.Objective.run_many`, in batches
    of at most ``max_probes`` that fit in memory), ``on_epoch(k, epoch, score)`` naming the item
    k of ``items``. An error of one configuration is its entry (the others are unaffected); an
    interruption (``KeyboardInterrupt``, a worker stopped) propagates.
    """
    results: list[TrialResult | Exception | None] = [None] * len(items)
    trained = [k for k, (_, proxy) in enumerate(items) if proxy is None]
    for k, (config, proxy) in enumerate(items):
        if proxy is not None:
            try:
                results[k] = objective.proxy_score(config, proxy)
            except Exception as exc:  # noqa: BLE001 - every error of a configuration is recorded, not raised
                results[k] = exc
    if trained:
        def item_epoch(j: int, epoch: int, score: float) -> bool:
            return on_epoch(trained[j], epoch, score)  # type: ignore[misc]

        outcomes = objective.run_many([items[k][0] for k in trained], None if on_epoch is None else item_epoch,
                                      max_probes=max_probes)
        for k, outcome in zip(trained, outcomes):
            results[k] = outcome
    return results  # type: ignore[return-value]


class _Budget:
    """How many more trials may be asked (``None``: no limit), shared by every caller."""

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

    def give_back(self, unused: int) -> None:
        with self._lock:
            if self._left is not None:
                self._left += unused

    @property
    def spent(self) -> bool:
        return self._left is not None and self._left <= 0


class TrialProtocol:
    """Asks a study's trials for pending configurations and tells their results, for any engine.

    Use as a context manager around an engine's run (it stops the heartbeats at the end).

    Args:
        study: the open study (its sampler and pruner are used).
        space: the search space (the one the sampler was built with).
        options: the search options (the sampler's name for :func:`plan_state`, ``n_trials``).
        callbacks: ``callback(study, frozen_trial)`` after each told trial.
        poll_interval: seconds between reads of the plan while running trials must end first.
    """

    def __init__(self, study: optuna.Study, space: SearchSpace, options: SearchOptions, *,
                 callbacks: Sequence[Callback] = (), poll_interval: float = POLL_INTERVAL) -> None:
        self.study = study
        self.space = space
        self.options = options
        self.callbacks = tuple(callbacks)
        self.poll_interval = float(poll_interval)
        #: The study's pruner reads intermediate values (with one, a batch holds one trial).
        self.prunes = not isinstance(study.pruner, optuna.pruners.NopPruner)
        #: Trials asked and trained together at most: ``options.batch_trials``, else
        #: :data:`~difffeat_tune.probe._memory.DEFAULT_MAX_BATCH_PROBES` (as many as fit in
        #: memory), 1 with a pruner (it compares a trial with the finished ones at the same epoch;
        #: the trials of one batch finish together, so they could never prune each other).
        self.batch_size = options.batch_trials or (1 if self.prunes else DEFAULT_MAX_BATCH_PROBES)
        self._budget = _Budget(options.n_trials)
        self._heartbeat = Heartbeat(study._storage)
        # A trial the sampler claimed has its first heartbeat already.
        self._first_beat = not getattr(study.sampler, "beats_claims", False)
        self._live: dict[int, Asked] = {}
        self._lock = threading.Lock()
        self._read_after = 0.0
        self._woken = threading.Event()

    def __enter__(self) -> TrialProtocol:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- waiting ---------------------------------------------------------------------------

    def next_state(self, *, block: bool = True) -> PlanState | None:
        """Where the plan stands, once a trial can be asked or the plan is finished.

        While nothing is pending and the plan is not finished, running trials must end first:
        stale trials of dead workers are failed (their configurations become pending again)
        and the plan is read again :attr:`poll_interval` seconds later, or as soon as this
        protocol tells a trial.

        Args:
            block: wait for that; ``False`` returns ``None`` at once instead (for a caller that
                must not block, such as a Tune searcher's ``suggest``).
        """
        while True:
            if time.monotonic() >= self._read_after:
                self._woken.clear()
                state = plan_state(self.study, self.space, self.options)
                if state.finished or state.can_ask:
                    return state
                fail_stale(self.study)
                self._hold()
            if not block:
                return None
            if self._woken.wait(max(0.0, self._read_after - time.monotonic())):
                self._read_after = 0.0

    def _hold(self) -> None:
        self._read_after = time.monotonic() + self.poll_interval

    def _wake(self) -> None:
        """A told trial may move the plan on: read it at the next look."""
        self._read_after = 0.0
        self._woken.set()

    # -- asking ----------------------------------------------------------------------------

    @property
    def spent(self) -> bool:
        """The ``n_trials`` budget is spent: ask nothing more."""
        return self._budget.spent

    def ask(self, wanted: int, state: PlanState) -> list[Asked]:
        """Ask up to ``wanted`` trials (no more than ``state`` has pending, nor the budget allows).

        Each trial beats from its creation on (a worker dying leaves a trial that goes stale),
        and its parameters and attributes (``phase``, ``modality``, ``config``) are one write.
        Fewer trials come back when another worker took the last pending configurations, or
        when a trial is surplus (told PRUNED: nothing was left for it).

        Args:
            wanted: trials to ask.
            state: the plan as :meth:`next_state` just read it.
        """
        granted = self._budget.take(min(wanted, state.pending))
        asked: list[Asked] = []
        try:
            while len(asked) < granted:
                try:
                    trial = ask(self.study, enqueued=state.enqueued > 0)
                except TimeoutError:  # another worker took the last pending configuration
                    self._hold()
                    break
                self._heartbeat.add(trial._trial_id, beat=self._first_beat)
                try:
                    with deferred_writes(trial):  # the parameters and the configuration's attributes in one write
                        config = suggest_config(trial, self.space)
                        record_config(trial, config)
                except optuna.TrialPruned:  # a surplus trial (a race with another worker): close it
                    self._heartbeat.discard(trial._trial_id)
                    self._finish(trial, TrialState.PRUNED)
                    break
                # The sampler set the attributes of its claim on the trial it was given (no read).
                item = Asked(trial, config, proxy=trial.user_attrs.get(PROXY_ATTR) or None)
                with self._lock:
                    self._live[trial._trial_id] = item
                asked.append(item)
        finally:
            self._budget.give_back(granted - len(asked))  # only trials that hold a configuration count
        return asked

    # -- running ---------------------------------------------------------------------------

    # -- telling ---------------------------------------------------------------------------

    def report(self, asked: Asked, epoch: int, score: float) -> bool:
        """Record ``score`` as the trial's intermediate value at ``epoch``; return whether to prune it.

        An epoch already reported (a retried worker starts again) or a score that is not finite
        changes nothing.
        """
        if epoch <= asked.reported or not math.isfinite(score):
            return asked.pruned
        asked.reported = int(epoch)
        asked.trial.report(float(score), int(epoch))
        if self.prunes and asked.trial.should_prune():
            asked.pruned = True
        return asked.pruned

    def tell_result(self, asked: Asked, result: TrialResult | BaseException, *, history: bool) -> None:
        """Tell what training returned: COMPLETE, PRUNED (stopped early) or FAIL (an error, or a
        score that is not finite).

        Args:
            asked: the trial.
            result: its result, or the error its configuration ran into.
            history: record the per-epoch scores as the ``history`` attribute (when they were
                not reported as intermediate values).
        """
        if isinstance(result, BaseException):  # every error of a configuration is recorded, not raised
            logger.warning("trial %d (%s) failed: %s", asked.trial.number, asked.config.label(),
                           A.first_line(result))
            self.fail(asked, result)
            return
        attrs = A.result_attrs(result.metrics, result.epochs_run, result.seconds, result.split)
        if history:
            attrs[A.HISTORY] = [round(float(v), 6) for v in result.history]
        if result.stopped_early:
            self.tell(asked, TrialState.PRUNED, attrs=attrs)
        elif not math.isfinite(result.score):
            self.tell(asked, TrialState.FAIL, attrs={**attrs, A.ERROR: f"the score is not finite ({result.score})"})
        else:
            self.tell(asked, TrialState.COMPLETE, result.score, attrs=attrs)

    def fail(self, asked: Asked, error: BaseException | str) -> None:
        """Tell the trial FAIL with ``error`` (one line): the sampler retries its configuration."""
        self.tell(asked, TrialState.FAIL, attrs={A.ERROR: A.first_line(error)})

    def abandon(self, reason: str, asked: Iterable[Asked] | None = None) -> None:
        """Fail ``asked`` (default: every trial not told yet) with ``reason``, so that they are retried."""
        if asked is None:
            with self._lock:
                asked = list(self._live.values())
        for item in asked:
            self.fail(item, reason)

    def tell(self, asked: Asked, state: TrialState, value: float | None = None, *,
             attrs: dict[str, object] | None = None) -> FrozenTrial | None:
        """The result's user attributes, the state and the value in one write, then the callbacks.

        Returns:
            The finished trial, or ``None`` if it was already finished in storage (failed as
            stale by another worker while this one was paused): its result is not recorded.
        """
        with self._lock:
            self._live.pop(asked.trial._trial_id, None)
        self._heartbeat.discard(asked.trial._trial_id)
        return self._finish(asked.trial, state, value, attrs)

    def _finish(self, trial: optuna.Trial, state: TrialState, value: float | None = None,
                attrs: dict[str, object] | None = None) -> FrozenTrial | None:
        try:
            frozen = finish(self.study, trial, state, value, attrs)
        except optuna.exceptions.UpdateFinishedTrialError:
            logger.warning("trial %d was already finished in storage; its result is not recorded", trial.number)
            return None
        finally:
            self._wake()
        for callback in self.callbacks:
            callback(self.study, frozen)
        return frozen

    def close(self) -> None:
        """Stop the heartbeats (trials not told by then go stale after the grace period)."""
        self._heartbeat.close()
