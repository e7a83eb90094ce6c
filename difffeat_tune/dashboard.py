"""optuna-dashboard on a study storage, bound to loopback unless told otherwise."""

from __future__ import annotations

import logging
import socket

import optuna

from difffeat_tune._defaults import DEFAULT_HOST, DEFAULT_PORT
from difffeat_tune._errors import ConfigError
from difffeat_tune.search.runner import open_storage

logger = logging.getLogger(__name__)

#: The largest TCP port number.
MAX_PORT = 65535


def dashboard_app(storage_url: str):  # type: ignore[no-untyped-def]
    """The dashboard's WSGI application for ``storage_url`` (for tests or a WSGI server)."""
    from optuna_dashboard import wsgi

    return wsgi(open_storage(storage_url, heartbeat=False, create=False))


def check_address(host: str, port: int) -> None:
    """Check that the dashboard can listen on ``host``:``port`` before anything is started or printed.

    Raises:
        ConfigError: the port is out of range, the host does not resolve to a local address, or
            the address is taken (or may not be bound by this user).
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= MAX_PORT:
        raise ConfigError(f"--port {port}: a port is a whole number from 1 to {MAX_PORT}",
                          f"e.g. --port {DEFAULT_PORT}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"--host {host!r} is not an address of this machine ({exc})",
                          f"use {DEFAULT_HOST} (this machine only) or 0.0.0.0 (every interface)") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no conflict
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                              "choose another --port (one above 1023 needs no privileges) or stop what uses it") from None


def serve_dashboard(storage: str | optuna.storages.BaseStorage, host: str = DEFAULT_HOST,
                    port: int = DEFAULT_PORT) -> None:
    """Serve the dashboard on an existing study storage (URL or storage) until interrupted.

    Raises:
        ConfigError: the address cannot be listened on (:func:`check_address`).
        StorageError: the storage does not exist or cannot be opened.
    """
    from optuna_dashboard import run_server

    check_address(host, port)
    if isinstance(storage, str):
        storage = open_storage(storage, heartbeat=False, create=False)
    logger.info("optuna-dashboard on http://%s:%d", host, port)
    run_server(storage, host=host, port=port)
