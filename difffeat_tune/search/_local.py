"""The local engine: trials run in this process, asked and told by ``workers`` trial loops.

Each loop follows the trial protocol (:class:`~difffeat_tune.search._protocol.TrialProtocol`,
shared by the loops): it waits while nothing is pending, asks a batch of up to ``batch_trials``
trials (automatic: the pending configurations of the phase, at most
:data:`~difffeat_tune.probe._memory.DEFAULT_MAX_BATCH_PROBES`, in batches that fit in memory;
one at a time when the study has a pruner, which compares a trial with finished ones), trains
their probes as one computation (:meth:`~difffeat_tune.probe.objective.Objective.run_many`), and
tells each trial its own result (COMPLETE, PRUNED by the study's pruner, or FAIL with its
``error``); the proxy trials of the proxy-guided heuristic are scored on their own first
(:meth:`~difffeat_tune.search._protocol.TrialProtocol.score_proxies`). Each trial keeps its per-epoch scores: as intermediate values reported every epoch
when the study has a pruner, else in one ``history`` attribute. A finished study asks nothing,
so running it again adds no trial.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from difffeat_tune.probe._memory import DEFAULT_MAX_BATCH_PROBES
from difffeat_tune.search._protocol import STOPPED, Asked, TrialProtocol
from difffeat_tune.search._run import SearchRun


def run_local(run: SearchRun) -> None:
    """Run the trials of ``run`` in this process until the plan is finished or the budget spent."""
    settings = run.settings
    with TrialProtocol(run.study, settings.space, settings.search, callbacks=run.callbacks) as protocol:
        if settings.search.workers == 1:
            _loop(run, protocol)
            return
        errors: list[BaseException] = []

        def worker() -> None:
            try:
                _loop(run, protocol)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
                errors.append(exc)

        threads = [threading.Thread(target=worker, name=f"difffeat-worker-{i}")
                   for i in range(settings.search.workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]


def _loop(run: SearchRun, protocol: TrialProtocol) -> None:
    # A pruner compares a trial with the finished ones at the same epoch; the trials of one batch
    # finish together, so they could never prune each other: with a pruner, one trial at a time.
    batch_size = run.settings.search.batch_trials or (1 if protocol.prunes else DEFAULT_MAX_BATCH_PROBES)
    while not protocol.spent:
        state = protocol.next_state()
        if state is None or state.finished:
            return
        asked = protocol.ask(batch_size, state)
        if asked:
            _train(run, protocol, asked)


def _train(run: SearchRun, protocol: TrialProtocol, asked: Sequence[Asked]) -> None:
    """Score the asked proxy trials, train the others' probes together, then tell each trial its own result."""
    asked = protocol.score_proxies(run.objective, asked)
    if not asked:
        return

    def on_epoch(k: int, epoch: int, score: float) -> bool:
        return protocol.report(asked[k], epoch, score)  # a storage write: only when a pruner reads it

    try:
        results = run.objective.run_many([item.config for item in asked], on_epoch if protocol.prunes else None,
                                         max_probes=run.settings.search.batch_trials)
    except BaseException:  # interrupted: the trials fail, so their configurations are retried
        protocol.abandon(STOPPED, asked)
        raise
    for item, result in zip(asked, results):
        protocol.tell_result(item, result, history=not protocol.prunes)
