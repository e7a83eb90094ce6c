"""What the Optuna storage costs a search: SQLite, PostgreSQL and Optuna's in-memory storage, in one run.

The embedded default's grid (600 trials) and heuristic (62 trials) run on the same cached
features with the same objective on each storage, each on a new study: a new SQLite file (the
default storage, opened as the package opens it), a new database on the tests' throw-away
PostgreSQL server (``tests/_postgres.py``; skipped with the reason when its binaries or driver
are missing) and ``optuna.storages.InMemoryStorage``. Printed side by side: the search's wall
time, its ratio to in-memory, and per trial the calls that reached the storage (every storage
method the study called, counted on the storage object, helpers that read nothing left out) and,
on the databases, the transactions that wrote. The last line sums it up::

    storage: grid sqlite 1.10x, postgresql 1.25x; heuristic sqlite 1.15x, postgresql 1.30x of in-memory

    python experiments/bench_storage.py [--threads 1] [--samplers grid,heuristic] [--repeat 1]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests._postgres, when run as a script

from difffeat_tune.features import StoreSettings, ensure_features
from difffeat_tune.probe.objective import Objective
from difffeat_tune.search._storage import open_storage
from difffeat_tune.search.runner import run_search
from difffeat_tune.settings import Settings

logger = logging.getLogger("bench_storage")

KINDS = ("memory", "sqlite", "postgresql")


@dataclass
class Measured:
    """One search on one storage."""

    seconds: float
    trials: int
    calls: Counter[str]
    writes: int

    def per_trial(self, count: int) -> float:
        return count / max(1, self.trials)


#: Methods that do not reach the data (checks and settings), left out of the counts.
_NOT_CALLS = frozenset({"check_trial_is_updatable", "get_heartbeat_interval", "get_heartbeat_stale_trial_callback",
                        "remove_session", "is_heartbeat_enabled"})
#: The private methods through which Optuna's cache in front of an RDB storage reaches it.
_CACHE_CALLS = frozenset({"_create_new_trial", "_set_trial_param", "_get_trials", "_get_best_trial_id",
                          "_get_stale_trial_ids"})


def _counting(storage: optuna.storages.BaseStorage, calls: Counter[str]) -> None:
    """Count the calls that reach ``storage`` (its methods patched on the instance)."""
    for name in dir(type(storage)):
        if (name.startswith("_") and name not in _CACHE_CALLS) or name in _NOT_CALLS:
            continue
        method = getattr(storage, name, None)
        if not callable(method):
            continue

        def counted(*args: Any, __method: Callable[..., Any] = method, __name: str = name, **kwargs: Any) -> Any:
            calls[__name] += 1
            return __method(*args, **kwargs)

        setattr(storage, name, counted)


@contextmanager
def _storages(kinds: tuple[str, ...], folder: Path) -> Iterator[Callable[[str, str], Any]]:
    """``make(kind, tag)`` -> a new, empty storage of that kind; a PostgreSQL server while needed."""
    server = None
    if "postgresql" in kinds:
        from tests._postgres import PostgresServer, PostgresUnavailable

        try:
            server = PostgresServer.start()
        except PostgresUnavailable as exc:
            logger.warning("PostgreSQL skipped: %s", exc)

    def make(kind: str, tag: str) -> Any:
        if kind == "memory":
            return optuna.storages.InMemoryStorage()
        if kind == "sqlite":
            return open_storage(f"sqlite:///{folder / tag}.db")
        if server is None:
            return None
        return open_storage(server.create_database(tag))

    try:
        yield make
    finally:
        if server is not None:
            server.stop()


def _measure(settings: Settings, view: Any, objective: Objective, storage: Any) -> Measured:
    calls: Counter[str] = Counter()
    _counting(storage, calls)
    writes = Counter[str]()
    engine = getattr(storage, "engine", None)
    if engine is not None:  # transactions that wrote something (a read's session commits too)
        def on_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if statement.lstrip()[:6].upper() in ("INSERT", "UPDATE", "DELETE"):
                conn.info["wrote"] = True

        def on_commit(conn: Any) -> None:
            writes["transactions"] += bool(conn.info.pop("wrote", False))

        sqlalchemy.event.listen(engine, "before_cursor_execute", on_execute)
        sqlalchemy.event.listen(engine, "commit", on_commit)
    started = time.perf_counter()
    summary = run_search(settings, view, objective=objective, storage=storage)
    seconds = time.perf_counter() - started
    return Measured(seconds, sum(summary.trials.values()), calls, writes["transactions"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--features", type=Path, default=Path("runs") / "features")
    parser.add_argument("--space", default="embedded")
    parser.add_argument("--epochs", type=int, default=None, help="probe epochs (default: the space's)")
    parser.add_argument("--samplers", default="grid,heuristic", help="comma-separated: grid, heuristic")
    parser.add_argument("--storages", default=",".join(KINDS), help=f"comma-separated: {', '.join(KINDS)}")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0 = torch's default)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds over every storage; the fastest run of each counts")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    samplers = tuple(s for s in args.samplers.split(",") if s)
    kinds = tuple(k for k in KINDS if k in args.storages.split(","))

    settings = Settings.create(space=args.space, store=StoreSettings(features=args.features), device="cpu",
                               epochs=args.epochs, evaluate_best=False)
    prepared = ensure_features(settings.features)
    settings = settings.with_space(prepared.space)
    objective = Objective(prepared.view, settings.probe, device=settings.device)
    results: dict[tuple[str, str], Measured] = {}
    with tempfile.TemporaryDirectory() as tmp, _storages(kinds, Path(tmp)) as make:
        for round_ in range(args.repeat):  # rounds interleave the storages: a load change hits them alike
            for sampler in samplers:
                for kind in kinds:
                    storage = make(kind, f"bench_{sampler}_{kind}_{round_}")
                    if storage is None:
                        continue
                    search = replace(settings.search, sampler=sampler, study_name=f"bench-{sampler}")
                    measured = _measure(replace(settings, search=search), prepared.view, objective, storage)
                    logger.info("round %d: %s on %s: %.1f s", round_ + 1, sampler, kind, measured.seconds)
                    best = results.get((sampler, kind))
                    if best is None or measured.seconds < best.seconds:
                        results[(sampler, kind)] = measured

    print(f"\nstorage costs on {prepared.view.folder.name}, {settings.probe.recipe.epochs} epochs, "
          f"{torch.get_num_threads()} torch thread(s)")
    print(f"{'search':<10}{'storage':<12}{'trials':>7}{'seconds':>9}{'x memory':>10}{'calls/trial':>13}"
          f"{'writes/trial':>14}  most frequent calls per trial")
    ratios: dict[tuple[str, str], float] = {}
    for (sampler, kind), m in results.items():
        base = results.get((sampler, "memory"))
        ratio = m.seconds / base.seconds if base else float("nan")
        ratios[(sampler, kind)] = ratio
        top = ", ".join(f"{name} {m.per_trial(n):.1f}" for name, n in m.calls.most_common(4))
        writes = f"{m.per_trial(m.writes):.1f}" if kind != "memory" else "-"
        print(f"{sampler:<10}{kind:<12}{m.trials:>7}{m.seconds:>9.1f}{ratio:>9.2f}x"
              f"{m.per_trial(sum(m.calls.values())):>13.1f}{writes:>14}  {top}")

    def ratio(sampler: str, kind: str) -> str:
        value = ratios.get((sampler, kind))
        return f"{value:.2f}x" if value is not None else "n/a"

    print("storage: " + "; ".join(f"{s} sqlite {ratio(s, 'sqlite')}, postgresql {ratio(s, 'postgresql')}"
                                  for s in samplers) + " of in-memory")


if __name__ == "__main__":
    main()
