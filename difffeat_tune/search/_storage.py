"""The Optuna storage of a study: any SQLAlchemy URL, safe to open from several workers at once.

Opening a storage creates Optuna's tables on first use. Workers that start together on a *new*
storage race to create them and the losers fail ("table studies already exists", "UNIQUE
constraint failed: alembic_version.version_num", or PostgreSQL's "duplicate key value"). Two
guards make that safe:

- a file lock next to a SQLite file (``studies.db.lock``) lets one process of the machine create
  the tables while the others wait;
- for every database, an attempt that lost such a race is retried after a short pause: the
  winner's tables are then found and nothing is created twice.

Errors say what failed: a malformed URL or an unknown dialect (:class:`ConfigError` with an
example URL), a missing driver (the package to install), a server that cannot be reached, or a
failure while preparing the tables (:class:`StorageError`). Passwords never appear in messages.

Every running trial records a heartbeat; a trial silent for the grace period is failed by the next
worker that looks, and its configuration is retried. The interval and the grace default to
:data:`HEARTBEAT_INTERVAL` and :data:`GRACE_PERIOD` and can be shortened for tests and short
trials through the environment variables :data:`HEARTBEAT_INTERVAL_ENV` and
:data:`GRACE_PERIOD_ENV` (whole seconds), or with an explicit :class:`HeartbeatPolicy`.
"""

from __future__ import annotations

import logging
import os
import random
import re
import sqlite3
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import filelock
import optuna
import sqlalchemy
from sqlalchemy.engine import URL, make_url

from difffeat_tune._defaults import DEFAULT_RUNS
from difffeat_tune._errors import ConfigError, StorageError
from difffeat_tune.search._records import RecordStorage

logger = logging.getLogger(__name__)

#: HeartbeatPolicy of running trials (seconds) and the silence after which a trial counts as dead.
HEARTBEAT_INTERVAL = 30
GRACE_PERIOD = 120
#: Environment variables that override them (whole seconds), e.g. for tests with short trials.
HEARTBEAT_INTERVAL_ENV = "DIFFFEAT_HEARTBEAT_INTERVAL"
GRACE_PERIOD_ENV = "DIFFFEAT_GRACE_PERIOD"
#: Seconds SQLite waits on a lock held by another worker before giving up; also the longest wait
#: for the file lock that guards the creation of a SQLite storage.
SQLITE_TIMEOUT = 60
#: Attempts at opening a storage whose tables other workers are creating at the same moment, and
#: the first pause between attempts in seconds (doubled each time, with jitter).
CREATE_ATTEMPTS = 6
CREATE_BACKOFF = 0.1
URL_EXAMPLES = "sqlite:///runs/studies.db or postgresql+psycopg://user:password@host:5432/dbname"
#: The pip package of each database driver module SQLAlchemy may import.
DRIVER_PACKAGES: Mapping[str, str] = MappingProxyType({
    "psycopg": "psycopg[binary]",
    "psycopg2": "psycopg2-binary",
    "asyncpg": "asyncpg",
    "pg8000": "pg8000",
    "MySQLdb": "mysqlclient",
    "pymysql": "PyMySQL",
    "mysql": "mysql-connector-python",
    "mariadb": "mariadb",
    "oracledb": "oracledb",
    "pyodbc": "pyodbc",
})
#: Words in a database error that mean "another worker was creating the same tables".
_RACE_MARKERS = ("already exists", "duplicate key", "unique constraint", "database is locked", "deadlock")


@dataclass(frozen=True)
class HeartbeatPolicy:
    """How often a running trial records a heartbeat, and the silence after which it counts as dead.

    Attributes:
        interval: seconds between heartbeats.
        grace: seconds without a heartbeat after which the trial is failed (and retried).

    Example:
        >>> HeartbeatPolicy.from_env({"DIFFFEAT_HEARTBEAT_INTERVAL": "1", "DIFFFEAT_GRACE_PERIOD": "4"})
        HeartbeatPolicy(interval=1, grace=4)
    """

    interval: int = HEARTBEAT_INTERVAL
    grace: int = GRACE_PERIOD

    def __post_init__(self) -> None:
        for name, value in (("interval", self.interval), ("grace", self.grace)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"heartbeat {name} must be a whole number of seconds, at least 1, got {value!r}")
        if self.grace <= self.interval:
            raise ConfigError(f"heartbeat grace ({self.grace} s) must be longer than its interval ({self.interval} s)",
                              "a live trial would otherwise be failed between two heartbeats")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> HeartbeatPolicy:
        """The defaults, overridden by :data:`HEARTBEAT_INTERVAL_ENV` and :data:`GRACE_PERIOD_ENV`."""
        environ = os.environ if environ is None else environ
        values = {}
        for field, variable, default in (("interval", HEARTBEAT_INTERVAL_ENV, HEARTBEAT_INTERVAL),
                                         ("grace", GRACE_PERIOD_ENV, GRACE_PERIOD)):
            text = environ.get(variable, "").strip()
            try:
                values[field] = int(text) if text else default
            except ValueError:
                raise ConfigError(f"{variable}={text!r} is not a whole number of seconds",
                                  f"set {variable} to an integer such as {default}, or unset it") from None
        return cls(**values)


def default_storage(runs: Path = DEFAULT_RUNS) -> str:
    """The default storage: a SQLite file in the runs folder."""
    return f"sqlite:///{runs / 'studies.db'}"


def open_storage(url: str, *, heartbeat: bool | HeartbeatPolicy = True,
                 create: bool = True) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage for ``url`` (any SQLAlchemy URL), created safely under concurrent starts.

    Args:
        url: e.g. ``sqlite:///runs/studies.db`` or ``postgresql+psycopg://user:pw@host:5432/db``.
        heartbeat: ``True``: running trials beat (:meth:`HeartbeatPolicy.from_env`), so dead workers'
            trials are failed and retried; ``False``: no heartbeat (read-only uses: dashboard,
            reports); or an explicit :class:`HeartbeatPolicy`.
        create: create a SQLite file (and its folder) that does not exist yet; ``False`` for
            commands that only read or annotate existing studies (report, dashboard): a missing
            file is then an error, and nothing is written beside it.

    Raises:
        ConfigError: the URL is malformed, names an unknown dialect, or its driver is not installed.
        StorageError: the database cannot be reached or its tables cannot be prepared.

    Example:
        >>> storage = open_storage("sqlite:///runs/studies.db")  # doctest: +SKIP
        >>> optuna.create_study(storage=storage, study_name="s", load_if_exists=True)  # doctest: +SKIP
    """
    parsed = parse_storage_url(url)
    beat = HeartbeatPolicy.from_env() if heartbeat is True else (heartbeat or None)
    shown = parsed.render_as_string(hide_password=True)
    engine_kwargs: dict[str, object] = {}
    database = _sqlite_file(parsed, create=create)
    if parsed.get_backend_name() == "sqlite":
        engine_kwargs["connect_args"] = {"timeout": SQLITE_TIMEOUT}
    if not create and database is not None and not database.is_file():
        raise StorageError(f"no study storage at {str(database)!r}: the file does not exist",
                           "run a search first (`difffeat-tune run heuristic`), or pass the --storage (or --runs) "
                           "of an existing study database")
    with _creation_lock(database if create else None):
        _check_connection(url, engine_kwargs, shown, sqlite=database)
        return _create(url, engine_kwargs, beat, shown, on_connect=_tune_sqlite if database else None)


def _tune_sqlite(connection: Any, _record: object) -> None:
    """Set up each new connection to a SQLite file for many small transactions from several workers.

    WAL: readers never wait for the writer, and with ``synchronous=NORMAL`` a commit appends to the
    log without an fsync. A killed process loses nothing (its commits are in the log); a power cut
    may lose the last commits. Needs shared memory between the processes: local disks only.
    """
    cursor = connection.cursor()
    try:
        for pragma in (f"busy_timeout={SQLITE_TIMEOUT * 1000}", "synchronous=NORMAL", "journal_mode=WAL"):
            cursor.execute(f"PRAGMA {pragma}")
    except sqlite3.DatabaseError as exc:  # e.g. not a database: the first real query reports it
        logger.debug("SQLite journal mode not set: %s", exc)
    finally:
        cursor.close()


def parse_storage_url(url: str) -> URL:
    """Parse ``url`` and check that its dialect and driver can be loaded.

    Raises:
        ConfigError: a malformed URL, an unknown dialect, or a driver that is not installed.
    """
    try:
        parsed = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError) as exc:
        raise ConfigError(f"storage {_hide_password(url)!r} is not a database URL ({exc})",
                          f"give a SQLAlchemy URL such as {URL_EXAMPLES}") from None
    shown = parsed.render_as_string(hide_password=True)
    try:
        dialect = parsed.get_dialect()
    except sqlalchemy.exc.NoSuchModuleError:
        backend = parsed.get_backend_name()
        hint = ("SQLAlchemy spells PostgreSQL postgresql:// (not postgres://)" if backend == "postgres"
                else f"give a SQLAlchemy URL such as {URL_EXAMPLES}")
        raise ConfigError(f"storage {shown!r} names an unknown database dialect {parsed.drivername!r}", hint) from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        module = (getattr(exc, "name", None) or "").split(".")[0]
        package = DRIVER_PACKAGES.get(module)
        what = f"the Python package {package!r}" if package else f"the driver module {module or parsed.get_driver_name()!r}"
        hint = f"pip install '{package}' next to difffeat-tune" if package else "install the driver named in the error"
        if parsed.get_backend_name() == "postgresql":
            hint += " (pip install 'difffeat-tune[pg]' brings psycopg)"
        raise ConfigError(f"storage {shown!r} needs {what}, which is not installed ({exc})", hint) from None
    return parsed


def _hide_password(url: str) -> str:
    """``url`` with the password of ``scheme://user:password@host`` replaced, for a URL SQLAlchemy cannot parse."""
    return re.sub(r"(://[^/:@]*:)[^/@]*@", r"\1***@", url)


def _sqlite_file(parsed: URL, *, create: bool = True) -> Path | None:
    """The file of a SQLite URL (its folder created if ``create``), or ``None`` (another database, or in memory)."""
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    path = Path(parsed.database)
    if not create:
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create the folder {str(path.parent)!r} of the SQLite storage: {exc.strerror or exc}",
                           "choose a writable --runs folder or another --storage") from None
    return path


@contextmanager
def _creation_lock(database: Path | None) -> Iterator[None]:
    """A file lock next to a SQLite file, held while its tables are checked or created."""
    if database is None:
        yield
        return
    lock_path = database.with_name(database.name + ".lock")
    existed = lock_path.exists()
    try:
        with filelock.FileLock(lock_path, timeout=SQLITE_TIMEOUT):
            try:
                yield
            except StorageError:
                if not existed:  # not a storage after all (a file that is no database): leave nothing beside it
                    lock_path.unlink(missing_ok=True)
                raise
    except filelock.Timeout:
        raise StorageError(f"another process held {str(lock_path)!r} for {SQLITE_TIMEOUT} s while preparing {str(database)!r}",
                           "wait for the other difffeat-tune process, or stop it if it hangs") from None
    except OSError as exc:  # the lock file itself cannot be made: the folder is not writable
        raise StorageError(f"cannot lock the SQLite storage {str(database)!r}: {exc.strerror or exc}",
                           "choose a writable --runs folder or another --storage") from None


def _check_connection(url: str, engine_kwargs: Mapping[str, object], shown: str, *, sqlite: Path | None) -> None:
    """Connect once, so that an unreachable server is told apart from a failure while creating tables."""
    engine = sqlalchemy.create_engine(url, **engine_kwargs)
    if sqlite is not None:  # the first connection, under the creation lock, switches the file to WAL
        sqlalchemy.event.listen(engine, "connect", _tune_sqlite)
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.DBAPIError as exc:
        if sqlite is not None:
            raise StorageError(f"cannot open the SQLite storage {str(sqlite)!r}: {_reason(exc)}",
                               "check that the file is a SQLite database and its folder is writable") from None
        raise StorageError(f"cannot connect to the storage {shown!r}: {_reason(exc)}",
                           "check that the database server runs and accepts connections from this machine, "
                           "that the user and password are right and the database exists (createdb NAME)") from None
    finally:
        engine.dispose()


def _create(url: str, engine_kwargs: Mapping[str, object], beat: HeartbeatPolicy | None, shown: str, *,
            on_connect: Callable[[Any, object], None] | None) -> RecordStorage:
    """Optuna's storage; an attempt that lost a table-creation race to another worker is retried."""
    jitter = random.Random()
    for attempt in range(1, CREATE_ATTEMPTS + 1):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna; we rely on them knowingly
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RecordStorage(
                    url, engine_kwargs=dict(engine_kwargs), on_connect=on_connect,
                    heartbeat_interval=beat.interval if beat else None, grace_period=beat.grace if beat else None)
        except Exception as exc:  # noqa: BLE001 - sorted below: a lost race is retried, the rest is reported
            if _lost_creation_race(exc) and attempt < CREATE_ATTEMPTS:
                pause = CREATE_BACKOFF * 2 ** (attempt - 1) * (0.5 + jitter.random())
                logger.info("storage %s: another worker is creating its tables (%s); retrying in %.2f s",
                            shown, _reason(exc), pause)
                time.sleep(pause)
                continue
            raise StorageError(f"could not prepare the Optuna tables in {shown!r}: {_reason(exc)}",
                               "check that the database user may create tables there; a storage written by another "
                               f"Optuna version may need `optuna storage upgrade --storage {shown}`") from exc
    raise AssertionError("unreachable: the last attempt returns or raises")


def _lost_creation_race(exc: BaseException) -> bool:
    """Whether ``exc`` says that another worker created (or was creating) the same tables."""
    if not isinstance(exc, sqlalchemy.exc.DBAPIError):
        return False
    if isinstance(exc, sqlalchemy.exc.IntegrityError):
        return True
    return any(marker in str(exc.orig).lower() for marker in _RACE_MARKERS)


def _reason(exc: BaseException) -> str:
    """The database's own message on one line (SQLAlchemy's statement dump left out)."""
    source = exc.orig if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.orig is not None else exc
    return " ".join(line.strip() for line in str(source).splitlines() if line.strip()) or type(source).__name__
