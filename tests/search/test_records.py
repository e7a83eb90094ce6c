"""A trial's record in few transactions, on a SQLite file set up for many small writes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from difffeat_tune.search._records import deferred_writes, finish, write_trial
from difffeat_tune.search._storage import SQLITE_TIMEOUT, open_storage
from tests.conftest import run_study

optuna.logging.set_verbosity(optuna.logging.WARNING)

#: What every finished trial of a search carries, each its own user attribute.
TRIAL_ATTRS = {"phase", "modality", "config", "epochs_run", "seconds", "split", "history"}


@contextmanager
def counted_writes() -> Iterator[Counter[str]]:
    """Count committed transactions that wrote (``"all"``) and those that wrote trial user attributes."""
    counts: Counter[str] = Counter()

    def on_execute(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        verb = statement.lstrip().split(None, 1)[0].upper()
        if verb in ("INSERT", "UPDATE", "DELETE"):
            conn.info["wrote"] = True
            if "trial_user_attributes" in statement:
                conn.info["user_attrs"] = True

    def on_commit(conn) -> None:  # type: ignore[no-untyped-def]
        counts["all"] += bool(conn.info.pop("wrote", False))
        counts["user_attrs"] += bool(conn.info.pop("user_attrs", False))

    engine = sqlalchemy.engine.Engine
    sqlalchemy.event.listen(engine, "before_cursor_execute", on_execute)
    sqlalchemy.event.listen(engine, "commit", on_commit)
    try:
        yield counts
    finally:
        sqlalchemy.event.remove(engine, "before_cursor_execute", on_execute)
        sqlalchemy.event.remove(engine, "commit", on_commit)


def _pragma(storage: optuna.storages.RDBStorage, name: str) -> object:
    with storage.engine.connect() as connection:
        return connection.exec_driver_sql(f"PRAGMA {name}").scalar()


def test_open_storage_puts_a_sqlite_file_in_wal_mode_with_normal_sync(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    for _ in range(2):  # a new file, then the same file opened again
        storage = open_storage(url, heartbeat=False)
        assert _pragma(storage, "journal_mode") == "wal"
        assert _pragma(storage, "synchronous") == 1  # NORMAL
        assert _pragma(storage, "busy_timeout") == SQLITE_TIMEOUT * 1000
        storage.engine.dispose()


def test_sixteen_user_attributes_are_one_transaction_and_each_its_own_key(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    study = optuna.create_study(storage=open_storage(url, heartbeat=False), study_name="s", direction="maximize")
    trial = study.ask()
    attrs = {f"a{i}": i / 4 for i in range(14)} | {"split": "val", "history": [0.1, 0.2]}
    with counted_writes() as counts:
        write_trial(study._storage, trial._trial_id, user_attrs=attrs, state=TrialState.COMPLETE, values=[0.5])
    assert counts == {"all": 1, "user_attrs": 1}
    stored = optuna.load_study(study_name="s", storage=url).trials[0]
    assert stored.user_attrs == attrs and stored.state == TrialState.COMPLETE and stored.value == 0.5


def test_a_trial_written_twice_keeps_the_last_value_of_each_attribute(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    study = optuna.create_study(storage=open_storage(url, heartbeat=False), study_name="s")
    trial = study.ask()
    write_trial(study._storage, trial._trial_id, user_attrs={"a": 1, "b": "x"}, system_attrs={"c": [1]})
    write_trial(study._storage, trial._trial_id, user_attrs={"a": 2})
    stored = optuna.load_study(study_name="s", storage=url).trials[0]
    assert stored.user_attrs == {"a": 2, "b": "x"} and stored.system_attrs["c"] == [1]


def test_deferred_writes_reach_the_storage_at_the_end_of_the_block_only(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    study = optuna.create_study(storage=open_storage(url, heartbeat=False), study_name="s", direction="maximize")
    trial = study.ask()
    with counted_writes() as counts, deferred_writes(trial):
        x = trial.suggest_categorical("x", [1, 2, 3])
        y = trial.suggest_float("y", 0.0, 1.0)
        trial.set_user_attr("config", f"x={x}")
        assert trial.params == {"x": x, "y": y} and trial.user_attrs == {"config": f"x={x}"}
        assert optuna.load_study(study_name="s", storage=url).trials[0].params == {}
    assert counts["all"] == 1
    failed = study.ask()
    with pytest.raises(RuntimeError), deferred_writes(failed):
        failed.suggest_categorical("x", [1, 2, 3])
        raise RuntimeError("the block fails: nothing is written")
    first, second = optuna.load_study(study_name="s", storage=url).trials
    assert first.params == {"x": x, "y": y} and first.user_attrs == {"config": f"x={x}"}
    assert second.params == {} and second.state == TrialState.RUNNING


def test_finish_gives_a_pruned_trial_its_last_intermediate_value_on_any_storage(tmp_path: Path) -> None:
    for storage in (open_storage(f"sqlite:///{tmp_path / 'studies.db'}", heartbeat=False),
                    optuna.storages.InMemoryStorage()):
        study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
        trial = study.ask()
        trial.report(0.3, 1)
        trial.report(0.4, 2)
        frozen = finish(study, trial, TrialState.PRUNED, user_attrs={"epochs_run": 2})
        stored = study.trials[0]
        assert (frozen.state, frozen.value) == (stored.state, stored.value) == (TrialState.PRUNED, 0.4)
        assert stored.user_attrs == {"epochs_run": 2}
        with pytest.raises(ValueError, match="finite"):
            finish(study, study.ask(), TrialState.COMPLETE, float("nan"))


def test_a_grid_trial_costs_few_write_transactions_and_keeps_every_attribute(  # type: ignore[no-untyped-def]
        tmp_path: Path, synthetic_view, small_space) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    with counted_writes() as counts:
        summary = run_study(synthetic_view, small_space, url, "g", sampler="grid", epochs=2, evaluate_best=False)
    trials = summary.trials["complete"]
    assert trials == 36
    # Per trial: its creation, its grid point with its first heartbeat, its configuration, its
    # result (one attribute per transaction wrote about 30); plus the run's own few writes.
    assert counts["all"] <= 4 * trials + 30
    assert counts["user_attrs"] <= 2 * trials + 1
    metrics = {"map", "cp", "cr", "cf1", "op", "or", "of1", "n_classes_scored", "n_classes_excluded"}  # multi-label
    for trial in optuna.load_study(study_name="g", storage=url).trials:
        assert TRIAL_ATTRS | metrics <= set(trial.user_attrs)
        assert trial.user_attrs["modality"] == trial.user_attrs["phase"] == "fusion"
        assert isinstance(trial.user_attrs["map"], float) and len(trial.user_attrs["history"]) == 2
        assert len(trial.params) == 6
