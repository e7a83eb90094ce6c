"""Opening the Optuna storage: safe when workers create a new storage at once, errors that say what failed."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import optuna
import pytest

from difffeat_tune._errors import ConfigError, StorageError
from difffeat_tune.search._storage import (
    GRACE_PERIOD_ENV, HEARTBEAT_INTERVAL, HEARTBEAT_INTERVAL_ENV, HeartbeatPolicy, open_storage,
)
from tests._postgres import free_port
from tests.test_cli import run_cli

optuna.logging.set_verbosity(optuna.logging.WARNING)

#: Workers starting at once, and rounds (each on a new storage): the unguarded code failed every round.
WORKERS, ROUNDS = 3, 3


def _open_at_once(url: str, workers: int = WORKERS) -> list[BaseException]:
    """Open ``url`` from ``workers`` threads released together; return what they raised."""
    barrier = threading.Barrier(workers)
    errors: list[BaseException] = []

    def work() -> None:
        barrier.wait()
        try:
            open_storage(url)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def _usable(url: str) -> None:
    study = optuna.create_study(storage=open_storage(url, heartbeat=False), study_name="s", load_if_exists=True)
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    assert len(optuna.load_study(study_name="s", storage=url).trials) == 2


def test_workers_opening_a_new_sqlite_file_at_once_all_succeed(tmp_path: Path) -> None:
    for round_ in range(ROUNDS):
        database = tmp_path / f"r{round_}" / "studies.db"
        url = f"sqlite:///{database}"
        assert _open_at_once(url) == []
        _usable(url)
        assert database.with_name("studies.db.lock").exists()  # the lock sits next to the file


def test_workers_creating_a_new_postgresql_database_at_once_all_succeed(postgres, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO, logger="difffeat_tune.search._storage")
    for _ in range(ROUNDS):
        url = postgres.create_database()
        assert _open_at_once(url) == []
        _usable(url)
    # No file lock on a server: the workers that lost the race to create the tables tried again.
    assert any("creating its tables" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("url", "message", "hint"), [
    ("runs/studies.db", "'runs/studies.db' is not a database URL", "sqlite:///runs/studies.db"),
    ("", "'' is not a database URL", "postgresql+psycopg://"),
    ("foo://host/db", "unknown database dialect 'foo'", "sqlite:///"),
    ("postgres://user@host/db", "unknown database dialect 'postgres'", "postgresql://"),
    ("postgresql://user:s3cret@host:port/db", "'postgresql://user:***@host:port/db' is not a database URL", "sqlite:///"),
])
def test_malformed_url_or_unknown_dialect_is_a_bad_url(url: str, message: str, hint: str) -> None:
    with pytest.raises(ConfigError) as raised:
        open_storage(url)
    assert message in raised.value.message and hint in (raised.value.hint or "")
    assert "s3cret" not in str(raised.value)


def test_missing_driver_names_the_package_to_install() -> None:
    with pytest.raises(ConfigError) as raised:
        open_storage("mysql://user:s3cret@db.example/optuna")
    assert "mysqlclient" in raised.value.message and "pip install 'mysqlclient'" in (raised.value.hint or "")
    assert "s3cret" not in str(raised.value)


def test_missing_postgresql_driver_names_psycopg2_binary() -> None:
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("psycopg2 is installed here")
    with pytest.raises(ConfigError, match="psycopg2-binary"):
        open_storage("postgresql+psycopg2://user@db.example/optuna")


def test_unreachable_server_is_a_storage_error_not_a_bad_url() -> None:
    url = f"postgresql+psycopg://user:s3cret@127.0.0.1:{free_port()}/optuna"  # nothing listens there
    with pytest.raises(StorageError) as raised:
        open_storage(url)
    text = str(raised.value)
    assert "cannot connect to the storage" in text and "127.0.0.1" in text and "server runs" in text
    assert "SQLAlchemy URL" not in text and "s3cret" not in text


def test_missing_database_on_a_running_server_says_so(postgres) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(StorageError) as raised:
        open_storage(postgres.url("no_such_db"))
    assert "no_such_db" in raised.value.message and "does not exist" in raised.value.message
    assert "createdb" in (raised.value.hint or "")


def test_sqlite_file_under_a_regular_file_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("not a folder")
    with pytest.raises(StorageError) as raised:
        open_storage(f"sqlite:///{tmp_path}/plain/studies.db")
    assert "cannot create the folder" in raised.value.message and "plain" in raised.value.message


def test_file_that_is_not_a_database_is_a_storage_error(tmp_path: Path) -> None:
    bad = tmp_path / "studies.db"
    bad.write_bytes(b"this is no SQLite file, " * 100)
    with pytest.raises(StorageError) as raised:
        open_storage(f"sqlite:///{bad}")
    assert "could not prepare the Optuna tables" in raised.value.message
    assert "not a database" in raised.value.message


def test_heartbeat_defaults_and_environment_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    storage = open_storage(url)
    assert (storage.heartbeat_interval, storage.grace_period) == (HEARTBEAT_INTERVAL, HeartbeatPolicy().grace)
    monkeypatch.setenv(HEARTBEAT_INTERVAL_ENV, "1")
    monkeypatch.setenv(GRACE_PERIOD_ENV, "3")
    storage = open_storage(url)
    assert (storage.heartbeat_interval, storage.grace_period) == (1, 3)
    explicit = open_storage(url, heartbeat=HeartbeatPolicy(interval=2, grace=5))
    assert (explicit.heartbeat_interval, explicit.grace_period) == (2, 5)
    assert open_storage(url, heartbeat=False).heartbeat_interval is None


@pytest.mark.parametrize(("interval", "grace", "message"), [
    ("soon", "3", f"{HEARTBEAT_INTERVAL_ENV}='soon'"),
    ("0", "3", "at least 1"),
    ("5", "5", "must be longer than its interval"),
])
def test_bad_heartbeat_settings_name_the_variable_or_value(interval: str, grace: str, message: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(HEARTBEAT_INTERVAL_ENV, interval)
    monkeypatch.setenv(GRACE_PERIOD_ENV, grace)
    with pytest.raises(ConfigError, match=message):
        open_storage(f"sqlite:///{tmp_path}/s.db")


def test_cli_reports_a_bad_storage_url_before_any_extraction(tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["run", "heuristic", "--storage", "postgres://user@host/db"], capsys, monkeypatch)
    text = " ".join((out + err).split())
    assert code == 2 and "unknown database dialect 'postgres'" in text and "Traceback" not in text
    assert not list(tmp_path.rglob("*.parquet"))  # nothing was extracted for a run that cannot store results
