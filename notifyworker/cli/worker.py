"""Commands that run the service: migrate, check, run, up."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import anyio
import typer
from pydantic import SecretStr
from rich.console import Console

from notifyworker import admin, config, console, db, runtime, schema
from notifyworker.cli.options import (
    Backend,
    Concurrency,
    DatabaseUrl,
    DatabaseUrlFile,
    LogLevel,
    PollInterval,
    Queues,
    Rate,
    ShutdownGrace,
    Tasks,
    settings_from,
)
from notifyworker.config import Settings
from notifyworker.errors import ConfigError, SchemaOutdated
from notifyworker.tasks import import_tasks, registry

log = logging.getLogger("notifyworker")


def migrate(
    database_url: DatabaseUrl = None,
    database_url_file: DatabaseUrlFile = None,
    log_level: LogLevel = None,
) -> None:
    """Create or update the notifyworker schema (safe to run twice, or concurrently)."""
    settings = settings_from(
        database_url=database_url, database_url_file=database_url_file, log_level=log_level
    )
    applied = db.run_once(settings.url(), schema.migrate)
    print(f"applied {', '.join(applied)}" if applied else "schema is up to date")


def check(database_url: DatabaseUrl = None, database_url_file: DatabaseUrlFile = None) -> None:
    """Exit 0 when the database answers and its schema is current: an exec probe."""
    settings = settings_from(
        database_url=database_url, database_url_file=database_url_file, log_level="WARNING"
    )
    pending = db.run_once(settings.url(), schema.pending_migrations)
    if pending:
        raise SchemaOutdated(
            f"the schema is not up to date ({len(pending)} migration(s) pending): "
            "run `notifyworker migrate`"
        )
    print("ok: the database answers and the schema is current")


def run(
    database_url: DatabaseUrl = None,
    database_url_file: DatabaseUrlFile = None,
    concurrency: Concurrency = None,
    rate: Rate = None,
    poll_interval: PollInterval = None,
    shutdown_grace: ShutdownGrace = None,
    tasks: Tasks = None,
    queues: Queues = None,
    log_level: LogLevel = None,
    backend: Backend = None,
) -> None:
    """Run a worker until SIGTERM or Ctrl-C."""
    settings = settings_from(
        database_url=database_url,
        database_url_file=database_url_file,
        concurrency=concurrency,
        rate=rate,
        poll_interval=poll_interval,
        shutdown_grace=shutdown_grace,
        tasks=tuple(tasks) if tasks else None,
        queues=queues,
        log_level=log_level,
        backend=backend,
    )
    import_tasks(settings.tasks)
    # No schema check here: the worker waits for the database and the schema
    # (a migration Job may still be running), up to NOTIFYWORKER_STARTUP_TIMEOUT.
    runtime.run(_run_worker, settings, backend=settings.backend)


async def _run_worker(settings: Settings) -> None:
    from notifyworker.service import Worker, stop_on_signals  # noqa: PLC0415

    worker = Worker(settings, registry)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(stop_on_signals, worker)
        await worker.run()
        tasks.cancel_scope.cancel()


def up(
    duration: Annotated[
        float | None,
        typer.Option(help="Stop by itself after this many seconds and print a summary."),
    ] = None,
    demo_rate: Annotated[float, typer.Option(help="Demo jobs inserted per second.")] = 2.0,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Data folder of the embedded PostgreSQL (default: .notifyworker/pg)."),
    ] = None,
    database_url: DatabaseUrl = None,
    database_url_file: DatabaseUrlFile = None,
    concurrency: Concurrency = None,
    rate: Rate = None,
    shutdown_grace: ShutdownGrace = None,
    queues: Queues = None,
    log_level: LogLevel = None,
    backend: Backend = None,
    dashboard: Annotated[
        bool, typer.Option(help="Serve the web dashboard too (NOTIFYWORKER_DASHBOARD_*).")
    ] = True,
) -> None:
    """Everything at once: database, migrations, worker, demo producer, live table, dashboard."""
    if demo_rate <= 0:
        raise ConfigError("--demo-rate must be positive")
    board = config.load_dashboard() if dashboard else None
    live = sys.stdout.isatty()
    out = Console()
    settings = settings_from(
        database_url=database_url,
        database_url_file=database_url_file,
        concurrency=concurrency,
        rate=rate,
        shutdown_grace=shutdown_grace,
        queues=queues,
        data_dir=data_dir,
        log_level=log_level,
        backend=backend,
        _console=out if live else None,
    )
    # A laptop's demo: the endpoints for this machine only, not the whole network, and
    # on any free port (the log says which), so a busy 8080 never stops the demo.
    laptop = {"health_host": "127.0.0.1", "health_port": 0}
    settings = settings.model_copy(
        update={k: v for k, v in laptop.items() if k not in settings.model_fields_set}
    )
    with _database(settings) as url:
        settings = settings.model_copy(update={"database_url": SecretStr(url)})
        applied = db.run_once(url, schema.migrate)
        if applied:
            log.info("applied migrations %s", ", ".join(applied))
        from notifyworker.up.run import run_up  # noqa: PLC0415

        first_id, seconds = runtime.run(
            run_up,
            settings,
            registry,
            demo_rate,
            duration,
            out,
            live,
            board,
            backend=settings.backend,
        )
        if duration is not None:
            summary = db.run_once(url, admin.summary_since, first_id)
            print(console.summary_text(summary, seconds))


@contextlib.contextmanager
def _database(settings: Settings) -> Iterator[str]:
    if settings.database_url is not None:
        yield settings.url()
        return
    from notifyworker.up.embedded import embedded_postgres  # noqa: PLC0415

    log.info("DATABASE_URL is not set: starting an embedded PostgreSQL")
    with embedded_postgres(settings.data_dir) as url:
        yield url
