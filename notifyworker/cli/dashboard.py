"""`notifyworker dashboard`: the web dashboard, for one person's browser or a cluster's."""

from __future__ import annotations

from typing import Annotated

import typer

from notifyworker import config, runtime
from notifyworker.cli.options import Backend, DatabaseUrl, DatabaseUrlFile, LogLevel, settings_from
from notifyworker.config import DashboardSettings

Host = Annotated[
    str | None,
    typer.Option(help="Address to serve on (default: 127.0.0.1; env NOTIFYWORKER_DASHBOARD_HOST)."),
]
Port = Annotated[
    int | None,
    typer.Option(help="Port; 0 picks a free one (default: 8000; env NOTIFYWORKER_DASHBOARD_PORT)."),
]


def dashboard(
    host: Host = None,
    port: Port = None,
    database_url: DatabaseUrl = None,
    database_url_file: DatabaseUrlFile = None,
    log_level: LogLevel = None,
    backend: Backend = None,
) -> None:
    """Serve the web dashboard until Ctrl-C: queues, workers and jobs, live.

    Actions (cancel, retry, pause, rate) are on only with NOTIFYWORKER_DASHBOARD_TOKEN set;
    NOTIFYWORKER_DASHBOARD_TOKEN_FOR_READS=true makes reading need it too.
    """
    settings = settings_from(
        database_url=database_url,
        database_url_file=database_url_file,
        log_level=log_level,
        backend=backend,
    )
    board = config.load_dashboard(host=host, port=port)
    runtime.run(_serve, settings.url(), board, backend=settings.backend)


async def _serve(url: str, board: DashboardSettings) -> None:
    from notifyworker.dashboard import serve_dashboard  # noqa: PLC0415 - web stack on demand

    await serve_dashboard(url, board)
