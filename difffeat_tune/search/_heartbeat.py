"""Heartbeats of running trials, and failing the trials of workers that died.

Both engines ask for trials and tell their results themselves (``study.ask`` / ``study.tell``),
so nobody else records the storage's heartbeats of their running trials: :class:`Heartbeat` does,
from one background thread per engine. A worker that dies stops beating; once the storage's grace
period has passed, :func:`fail_stale` (called by every waiting worker) marks its trials FAIL, and
the samplers retry their configurations.
"""

from __future__ import annotations

import logging
import threading
import warnings
from types import TracebackType
from typing import Any

import optuna

logger = logging.getLogger(__name__)


def heartbeat_interval(storage: Any) -> float | None:
    """The storage's heartbeat interval in seconds, or ``None`` if it records no heartbeats."""
    getter = getattr(storage, "get_heartbeat_interval", None)
    return getter() if getter is not None else None


def fail_stale(study: optuna.Study) -> None:
    """Mark FAIL the RUNNING trials whose heartbeat is older than the storage's grace period."""
    if heartbeat_interval(study._storage) is None:
        return
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna; we rely on them knowingly
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


class Heartbeat:
    """Records the heartbeat of the trials it holds every interval, from a daemon thread.

    Use as a context manager around an engine's run; :meth:`add` a trial when it is asked,
    :meth:`discard` it before it is told. Does nothing for a storage without heartbeats.

    Args:
        storage: the study's storage.
    """

    def __init__(self, storage: Any) -> None:
        self._storage = storage
        self._interval = heartbeat_interval(storage)
        self._live: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def add(self, trial_id: int, *, beat: bool = True) -> None:
        """Beat for ``trial_id`` now and at every interval until it is discarded.

        ``beat=False`` skips the first beat, for a trial whose sampler has just recorded it.
        """
        if self._interval is None:
            return
        if beat:
            self._storage.record_heartbeat(trial_id)
        with self._lock:
            self._live.add(trial_id)
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="difffeat-heartbeat", daemon=True)
            self._thread.start()

    def discard(self, trial_id: int) -> None:
        with self._lock:
            self._live.discard(trial_id)

    def close(self) -> None:
        """Stop beating (the trials still held go stale after the grace period)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        assert self._interval is not None
        while not self._stop.wait(self._interval):
            with self._lock:
                live = list(self._live)
            for trial_id in live:
                try:
                    self._storage.record_heartbeat(trial_id)
                except Exception:  # noqa: BLE001 - the next beat retries
                    logger.debug("heartbeat of trial %d failed", trial_id, exc_info=True)
