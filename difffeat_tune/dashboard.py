"""optuna-dashboard on a study storage, bound to loopback unless told otherwise."""

from __future__ import annotations

import logging

from difffeat_tune._defaults import DEFAULT_HOST, DEFAULT_PORT

from difffeat_tune.search.runner import open_storage

logger = logging.getLogger(__name__)



def dashboard_app(storage_url: str):  # type: ignore[no-untyped-def]
    """The dashboard's WSGI application for ``storage_url`` (for tests or a WSGI server)."""
    from optuna_dashboard import wsgi

    return wsgi(open_storage(storage_url, heartbeat=False))


def serve_dashboard(storage_url: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    """Serve the dashboard until interrupted."""
    from optuna_dashboard import run_server

    logger.info("optuna-dashboard on http://%s:%d for %s", host, port, storage_url)
    run_server(open_storage(storage_url, heartbeat=False), host=host, port=port)
