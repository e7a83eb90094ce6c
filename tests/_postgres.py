"""A throw-away PostgreSQL server on loopback for the tests.

``PostgresServer.start()`` runs ``initdb`` into a new temporary folder, starts the server on a free
port of 127.0.0.1 (trust authentication, durability off: a test server), and ``stop()`` stops it
and deletes the folder. Each test gets its own database (:meth:`PostgresServer.create_database`).

The server binaries come from, in order: the folder in ``$DIFFFEAT_PG_BINDIR``; the folder of
``initdb`` on ``PATH``; ``pg_config --bindir``; the newest ``/usr/lib/postgresql/<version>/bin``
(Debian's ``postgresql`` package, which ``.ci/run`` installs). PostgreSQL refuses to run as root:
as root (CI runs so) the server runs as the system user ``postgres`` that Debian's package creates.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

#: Environment variable naming the folder of initdb, pg_ctl and postgres.
PG_BINDIR_ENV = "DIFFFEAT_PG_BINDIR"
#: The unprivileged system user the server runs as when the tests run as root.
PG_SYSTEM_USER = "postgres"
#: The database superuser initdb creates.
PG_SUPERUSER = "postgres"
#: Seconds pg_ctl waits for the server to start or stop.
PG_START_TIMEOUT = 60
#: Attempts at starting on a free port (another program may take the port in between).
PG_START_ATTEMPTS = 3
#: Server settings of a test server: loopback only, durability traded for speed.
PG_SETTINGS = ("-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
               "-c max_connections=100 -c shared_buffers=32MB")
#: SQLAlchemy's driver for the URLs the tests use (installed by the package's ``pg`` extra).
PG_DRIVER = "psycopg"


class PostgresUnavailable(Exception):
    """No PostgreSQL server can be started here; the message says what is missing."""


def find_bindir() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres, or ``None``."""
    candidates: list[Path] = []
    if os.environ.get(PG_BINDIR_ENV):
        candidates.append(Path(os.environ[PG_BINDIR_ENV]))
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    pg_config = shutil.which("pg_config")
    if pg_config:
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        if found:
            candidates.append(Path(found))
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: _version(p.parent.name), reverse=True)
    candidates.extend(debian)
    for folder in candidates:
        if all((folder / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PostgresServer:
    """A running test server: its folder, port and binaries."""

    folder: Path
    port: int
    bindir: Path
    run_as: tuple[int, int] | None  # (uid, gid) when the tests run as root

    @classmethod
    def start(cls) -> PostgresServer:
        """initdb into a new temporary folder and start the server on a free loopback port.

        Raises:
            PostgresUnavailable: the binaries, the driver or (as root) the system user are missing,
                or the server did not start (the message holds its log).
        """
        bindir = find_bindir()
        if bindir is None:
            raise PostgresUnavailable(
                "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: install Debian's postgresql "
                f"package (apt-get install postgresql; .ci/run does) or set {PG_BINDIR_ENV}")
        try:
            import psycopg  # noqa: F401 - the driver of the tests' URLs
        except ImportError:
            raise PostgresUnavailable("the driver psycopg is not installed: pip install -e '.[pg]'") from None
        run_as = None
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam(PG_SYSTEM_USER)
            except KeyError:
                raise PostgresUnavailable(f"running as root, PostgreSQL needs the system user {PG_SYSTEM_USER!r}, "
                                          "which Debian's postgresql package creates") from None
            run_as = (entry.pw_uid, entry.pw_gid)
        folder = Path(tempfile.mkdtemp(prefix="difffeat-pg-"))
        if run_as:
            os.chown(folder, *run_as)
        server = cls(folder, 0, bindir, run_as)
        try:
            server._run("initdb", "-D", str(folder / "data"), "-U", PG_SUPERUSER, "--auth=trust", "--no-sync",
                        "--encoding=UTF8")
            for attempt in range(1, PG_START_ATTEMPTS + 1):
                server.port = free_port()
                try:
                    server._run("pg_ctl", "-D", str(folder / "data"), "-l", str(folder / "server.log"), "-w",
                                "-t", str(PG_START_TIMEOUT), "-o",
                                f"-c listen_addresses=127.0.0.1 -p {server.port} -k {folder} {PG_SETTINGS}", "start")
                    break
                except PostgresUnavailable:
                    if attempt == PG_START_ATTEMPTS:
                        raise
        except BaseException:
            server._delete()
            raise
        return server

    def _run(self, tool: str, *args: str) -> None:
        ids = {"user": self.run_as[0], "group": self.run_as[1], "extra_groups": []} if self.run_as else {}
        done = subprocess.run([str(self.bindir / tool), *args], capture_output=True, text=True, cwd=self.folder,
                              check=False, **ids)  # type: ignore[arg-type]
        if done.returncode != 0:
            log = self.folder / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
            raise PostgresUnavailable(f"{tool} failed ({done.returncode}): {done.stderr.strip()} {tail}".strip())

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL of ``database`` on this server."""
        return f"postgresql+{PG_DRIVER}://{PG_SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}".lower()
        with psycopg.connect(f"postgresql://{PG_SUPERUSER}@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its folder."""
        try:
            self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", "fast", "-w", "-t", str(PG_START_TIMEOUT), "stop")
        finally:
            self._delete()

    def _delete(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
