"""The local engine: trials run in this process, asked and told by ``workers`` trial loops.

Each loop follows the trial protocol (:class:`~difffeat_tune.search._protocol.TrialProtocol`,
shared by the loops): it waits while nothing is pending, asks a batch of up to
:attr:`~difffeat_tune.search._protocol.TrialProtocol.batch_size` trials (automatic: the pending
configurations of the phase, at most
:data:`~difffeat_tune.probe._memory.DEFAULT_MAX_BATCH_PROBES`, in batches that fit in memory;
one at a time when the study has a pruner, which compares a trial with finished ones), runs them
(:func:`~difffeat_tune.search._protocol.run_batch`: the probes trained as one computation, the
proxy trials of the proxy-guided heuristic scored on their own), and tells each trial its own
result (COMPLETE, PRUNED by the study's pruner, or FAIL with its ``error``). Each trial keeps its
per-epoch scores: as intermediate values reported every epoch when the study has a pruner, else
in one ``history`` attribute. A finished study asks nothing,
so running it again adds no trial.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from difffeat_tune.search._protocol import STOPPED, Asked, TrialProtocol, run_batch
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
    while not protocol.spent:
        state = protocol.next_state()
        if state is None or state.finished:
            return
        asked = protocol.ask(protocol.batch_size, state)
        if asked:
            _train(run, protocol, asked)


def _train(run: SearchRun, protocol: TrialProtocol, asked: Sequence[Asked]) -> None:
    """Run the asked trials' configurations as one batch, then tell each trial its own result."""
    def on_epoch(k: int, epoch: int, score: float) -> bool:
        return protocol.report(asked[k], epoch, score)  # a storage write: only when a pruner reads it

    try:
        results = run_batch(run.objective, [(item.config, item.proxy) for item in asked],
                            on_epoch if protocol.prunes else None, max_probes=run.settings.search.batch_trials)
    except BaseException:  # interrupted: the trials fail, so their configurations are retried
        protocol.abandon(STOPPED, asked)
        raise
    for item, result in zip(asked, results):
        protocol.tell_result(item, result, history=not protocol.prunes and item.proxy is None)
