"""The options several commands share, and settings from flags over the environment."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from notifyworker import config, dburl
from notifyworker.config import Settings
from notifyworker.errors import ConfigError
from notifyworker.models import MAX_RATE, MIN_RATE

log = logging.getLogger("notifyworker")

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help=(
            "PostgreSQL URL (env: DATABASE_URL). On the command line it is visible to every "
            "local user in `ps`: prefer DATABASE_URL or --database-url-file."
        ),
        show_default=False,
    ),
]
DatabaseUrlFile = Annotated[
    Path | None,
    typer.Option(
        "--database-url-file",
        help=(
            "File holding the PostgreSQL URL, e.g. a mounted Secret; one trailing newline "
            "is ignored (env: NOTIFYWORKER_DATABASE_URL_FILE)."
        ),
        show_default=False,
    ),
]
Concurrency = Annotated[int | None, typer.Option(help="Jobs run at once (default: 10).")]
Rate = Annotated[
    float | None,
    typer.Option(
        help=f"Job starts per second in this process: {MIN_RATE:g} to {MAX_RATE:g}, "
        "or 0 = unlimited (default: 50)."
    ),
]
PollInterval = Annotated[
    float | None,
    typer.Option(help="Seconds between claims when no notification comes (default: 1)."),
]
ShutdownGrace = Annotated[
    float | None, typer.Option(help="Seconds running jobs get on SIGTERM (default: 10).")
]
Tasks = Annotated[
    list[str] | None,
    typer.Option("--tasks", help="Module to import for task handlers (repeatable)."),
]
Queues = Annotated[
    str | None,
    typer.Option(
        "--queues",
        help="Queues this worker serves, comma-separated, e.g. email,sms "
        "(env: NOTIFYWORKER_QUEUES; default: every queue).",
        show_default=False,
    ),
]
LogLevel = Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")]
Backend = Annotated[
    str | None,
    typer.Option(
        help="Event loop: trio (default), or asyncio for handlers that await asyncio libraries."
    ),
]


def settings_from(**flags: Any) -> Settings:
    logging_console = flags.pop("_console", None)
    settings = config.load(**flags)
    from notifyworker import logs  # noqa: PLC0415 - rich logging only for commands that log

    logs.configure(settings.log_level, logging_console, settings.log_format)
    if flags.get("database_url") and dburl.has_password(flags["database_url"]):
        log.warning(
            "the database password was given with --database-url, where every local user "
            "can read it (ps): use DATABASE_URL or --database-url-file instead"
        )
    return settings


def url_from(database_url: str | None, database_url_file: Path | None) -> str:
    """The database URL of a command that needs nothing else from the settings."""
    settings = settings_from(
        database_url=database_url, database_url_file=database_url_file, log_level="WARNING"
    )
    return settings.url()


def payload_object(text: str) -> dict[str, Any]:
    """A --payload option's JSON object, or one line saying what is wrong with it."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--payload is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError("--payload must be a JSON object, like '{\"seconds\": 1}'")
    return data
