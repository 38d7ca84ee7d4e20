"""Commands on jobs and the fleet's rate, for operators: enqueue, cancel, rate, jobs."""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer
from rich.console import Console

from notifyworker import admin, console, db
from notifyworker.cli.options import DatabaseUrl, DatabaseUrlFile, payload_object, settings_from
from notifyworker.errors import ConfigError
from notifyworker.models import MAX_RATE, MIN_RATE, JobId, JobRow, rate_problem

log = logging.getLogger("notifyworker")


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
    settings = settings_from(
        database_url=database_url, database_url_file=database_url_file, log_level="WARNING"
    )
    data = payload_object(payload)
    job_id = db.run_once(
        settings.url(), admin.enqueue, task, data, object_id, timeout, max_attempts
    )
    print(job_id)


def cancel(
    job_id: Annotated[int, typer.Argument(help="The job's id.", show_default=False)],
    database_url: DatabaseUrl = None,
    database_url_file: DatabaseUrlFile = None,
) -> None:
    """Cancel a job, as `SELECT notifyworker.cancel(id)` does: its status afterwards."""
    settings = settings_from(
        database_url=database_url, database_url_file=database_url_file, log_level="WARNING"
    )
    status = db.run_once(settings.url(), admin.cancel, JobId(job_id))
    if status is None:
        raise ConfigError(f"there is no job {job_id}")
    print(status)


# A negative value is an argument for the rule to refuse in one line, not an unknown option.
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
    settings = settings_from(
        database_url=database_url, database_url_file=database_url_file, log_level="WARNING"
    )
    url = settings.url()
    if reset:
        db.run_once(url, admin.set_rate, None)
    elif value is not None:
        db.run_once(url, admin.set_rate, value)
    current = db.run_once(url, admin.get_rate)
    print("each worker's own rate" if current is None else f"{current:g} jobs/s per worker")


def jobs(
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="How many of the latest.")] = 20,
    database_url: DatabaseUrl = None,
    database_url_file: DatabaseUrlFile = None,
) -> None:
    """The latest jobs with their whole story and pickup latency."""
    settings = settings_from(
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
