"""The `notifyworker` command: up, run, migrate, check, enqueue, jobs, rate.

Typer gives typed options, help and shell completion for free; settings still
come from one pydantic-settings model (flags override NOTIFYWORKER_* env vars).
A user's mistake ends here as one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import trio
import typer
from pydantic import SecretStr
from rich.console import Console

from notifyworker import admin, config, console, db, dburl, schema
from notifyworker.config import Settings
from notifyworker.errors import ConfigError, NotifyWorkerError, SchemaOutdated
from notifyworker.models import MAX_RATE, MIN_RATE, JobId, JobRow, rate_problem
from notifyworker.safetext import visible
from notifyworker.tasks import import_tasks, registry

log = logging.getLogger("notifyworker")

app = typer.Typer(
    help="A background-jobs service that lives inside PostgreSQL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

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
LogLevel = Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")]


def main() -> None:
    """Entry point: the CLI, with notifyworker's errors as one line each."""
    try:
        try:
            app()
        except BaseExceptionGroup as group:
            # An error inside the worker's nurseries arrives wrapped; alone, it is one line too.
            raise _alone(group) from None
    except ConfigError as exc:
        _fail(exc, code=2)
    except NotifyWorkerError as exc:
        _fail(exc, code=1)
    except KeyboardInterrupt:
        # Ctrl-C before the worker installed its own handler (say, while the
        # embedded PostgreSQL starts): nothing was claimed, so just leave.
        print("notifyworker: interrupted", file=sys.stderr)
        raise SystemExit(130) from None


def _alone(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The group's only notifyworker error, or the group itself."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        else:
            leaves.append(exc)
    if len(leaves) == 1 and isinstance(leaves[0], NotifyWorkerError):
        return leaves[0]
    return group


def _fail(exc: Exception, code: int) -> NoReturn:
    # A message may quote a row or a setting: one line, no control character obeyed.
    print(f"notifyworker: error: {visible(str(exc))}", file=sys.stderr)
    raise SystemExit(code)


def _settings(**flags: Any) -> Settings:
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


@app.command()
def migrate(
    database_url: DatabaseUrl = None,
    database_url_file: DatabaseUrlFile = None,
    log_level: LogLevel = None,
) -> None:
    """Create or update the notifyworker schema (safe to run twice, or concurrently)."""
    settings = _settings(
        database_url=database_url, database_url_file=database_url_file, log_level=log_level
    )
    applied = db.run_once(settings.url(), schema.migrate)
    print(f"applied {', '.join(applied)}" if applied else "schema is up to date")


@app.command()
def check(database_url: DatabaseUrl = None, database_url_file: DatabaseUrlFile = None) -> None:
    """Exit 0 when the database answers and its schema is current: an exec probe."""
    settings = _settings(
        database_url=database_url, database_url_file=database_url_file, log_level="WARNING"
    )
    pending = db.run_once(settings.url(), schema.pending_migrations)
    if pending:
        raise SchemaOutdated(
            f"the schema is not up to date ({len(pending)} migration(s) pending): "
            "run `notifyworker migrate`"
        )
    print("ok: the database answers and the schema is current")


@app.command()
def run(
    database_url: DatabaseUrl = None,
    database_url_file: DatabaseUrlFile = None,
    concurrency: Concurrency = None,
    rate: Rate = None,
    poll_interval: PollInterval = None,
    shutdown_grace: ShutdownGrace = None,
    tasks: Tasks = None,
    log_level: LogLevel = None,
) -> None:
    """Run a worker until SIGTERM or Ctrl-C."""
    settings = _settings(
        database_url=database_url,
        database_url_file=database_url_file,
        concurrency=concurrency,
        rate=rate,
        poll_interval=poll_interval,
        shutdown_grace=shutdown_grace,
        tasks=tuple(tasks) if tasks else None,
        log_level=log_level,
    )
    import_tasks(settings.tasks)
    # No schema check here: the worker waits for the database and the schema
    # (a migration Job may still be running), up to NOTIFYWORKER_STARTUP_TIMEOUT.
    trio.run(_run_worker, settings)


async def _run_worker(settings: Settings) -> None:
    from notifyworker.service import Worker, stop_on_signals  # noqa: PLC0415

    worker = Worker(settings, registry)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_on_signals, worker)
        await worker.run()
        nursery.cancel_scope.cancel()


@app.command()
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
    log_level: LogLevel = None,
) -> None:
    """Everything at once: database, migrations, worker, demo producer, live table."""
    if demo_rate <= 0:
        raise ConfigError("--demo-rate must be positive")
    live = sys.stdout.isatty()
    out = Console()
    settings = _settings(
        database_url=database_url,
        database_url_file=database_url_file,
        concurrency=concurrency,
        rate=rate,
        shutdown_grace=shutdown_grace,
        data_dir=data_dir,
        log_level=log_level,
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

        first_id, seconds = trio.run(run_up, settings, registry, demo_rate, duration, out, live)
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


@app.command()
def enqueue(
    task: Annotated[str, typer.Argument(help="Task name, e.g. sleep.")],
    payload: Annotated[str, typer.Option(help="JSON object passed to the task.")] = "{}",
    object_id: Annotated[str | None, typer.Option(help="Your own reference.")] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Seconds the job may run (default: the table's, 10).")
    ] = None,
    max_attempts: Annotated[
        int, typer.Option(min=1, max=100, help="Starts the job may have (retries + 1).")
    ] = 1,
    database_url: DatabaseUrl = None,
    database_url_file: DatabaseUrlFile = None,
) -> None:
    """Insert one job, exactly as an application's INSERT would."""
    settings = _settings(
        database_url=database_url, database_url_file=database_url_file, log_level="WARNING"
    )
    try:
        data = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--payload is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError("--payload must be a JSON object, like '{\"seconds\": 1}'")
    job_id = db.run_once(
        settings.url(), admin.enqueue, task, data, object_id, timeout, max_attempts
    )
    print(job_id)


@app.command()
def cancel(
    job_id: Annotated[int, typer.Argument(help="The job's id.", show_default=False)],
    database_url: DatabaseUrl = None,
    database_url_file: DatabaseUrlFile = None,
) -> None:
    """Cancel a job, as `SELECT notifyworker.cancel(id)` does: its status afterwards."""
    settings = _settings(
        database_url=database_url, database_url_file=database_url_file, log_level="WARNING"
    )
    status = db.run_once(settings.url(), admin.cancel, JobId(job_id))
    if status is None:
        raise ConfigError(f"there is no job {job_id}")
    print(status)


# A negative value is an argument for the rule to refuse in one line, not an unknown option.
@app.command(context_settings={"ignore_unknown_options": True})
def rate(
    value: Annotated[
        float | None,
        typer.Argument(
            help=f"Job starts per second per worker process: {MIN_RATE:g} to {MAX_RATE:g}, "
            "or 0 = unlimited.",
            show_default=False,
        ),
    ] = None,
    reset: Annotated[
        bool, typer.Option("--reset", help="Go back to each worker's own configured rate.")
    ] = False,
    database_url: DatabaseUrl = None,
    database_url_file: DatabaseUrlFile = None,
) -> None:
    """Show or change the rate of every running worker (applied within a heartbeat)."""
    if value is not None and (problem := rate_problem(value)):
        raise ConfigError(problem)
    settings = _settings(
        database_url=database_url, database_url_file=database_url_file, log_level="WARNING"
    )
    url = settings.url()
    if reset:
        db.run_once(url, admin.set_rate, None)
    elif value is not None:
        db.run_once(url, admin.set_rate, value)
    current = db.run_once(url, admin.get_rate)
    print("each worker's own rate" if current is None else f"{current:g} jobs/s per worker")


@app.command()
def jobs(
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="How many of the latest.")] = 20,
    database_url: DatabaseUrl = None,
    database_url_file: DatabaseUrlFile = None,
) -> None:
    """The latest jobs with their whole story and pickup latency."""
    settings = _settings(
        database_url=database_url, database_url_file=database_url_file, log_level="WARNING"
    )
    rows: list[JobRow] = db.run_once(settings.url(), admin.latest_jobs, limit)
    _print_jobs(rows)


def _print_jobs(rows: list[JobRow]) -> None:
    if sys.stdout.isatty():
        Console().print(console.job_table(rows))
    else:
        for row in rows:
            print(console.plain_line(row))
