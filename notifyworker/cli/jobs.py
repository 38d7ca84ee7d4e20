"""Commands on jobs, for operators: enqueue, cancel, jobs (filtered)."""

from __future__ import annotations

import logging
import sys
from typing import Annotated, get_args

import typer
from rich.console import Console

from notifyworker import admin, console, db
from notifyworker.cli.options import DatabaseUrl, DatabaseUrlFile, payload_object, settings_from
from notifyworker.errors import ConfigError
from notifyworker.models import (
    FoundJobs,
    JobId,
    JobStatus,
    limit_key_problem,
    priority_problem,
    queue_problem,
)

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
    unique_key: Annotated[
        str | None,
        typer.Option(help="While a job with this key waits or runs, print its id instead."),
    ] = None,
    queue: Annotated[
        str | None, typer.Option(help="The job's queue (default: default).", show_default=False)
    ] = None,
    priority: Annotated[
        int | None,
        typer.Option(help="Higher starts first within its queue (default: 0).", show_default=False),
    ] = None,
    limit_key: Annotated[
        str | None,
        typer.Option(help="What the queue's key limits count it by: a tenant, an account."),
    ] = None,
    database_url: DatabaseUrl = None,
    database_url_file: DatabaseUrlFile = None,
) -> None:
    """Enqueue one job, as the producer API (and notifyworker.enqueue() in SQL) does."""
    for given, rule in ((queue, queue_problem), (priority, priority_problem)):
        if given is not None and (problem := rule(given)):
            raise ConfigError(problem)
    if limit_key is not None and (problem := limit_key_problem(limit_key)):
        raise ConfigError(problem)
    settings = settings_from(
        database_url=database_url, database_url_file=database_url_file, log_level="WARNING"
    )
    data = payload_object(payload)
    job_id = db.run_once(
        settings.url(),
        admin.enqueue,
        task,
        data,
        object_id,
        timeout,
        max_attempts,
        unique_key,
        queue,
        priority,
        limit_key,
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


STATUSES: tuple[str, ...] = get_args(JobStatus)


def jobs(
    status: Annotated[
        str | None,
        typer.Option(help=f"Only jobs in this status: {', '.join(STATUSES)}.", show_default=False),
    ] = None,
    task: Annotated[
        str | None, typer.Option(help="Only jobs of this task.", show_default=False)
    ] = None,
    queue: Annotated[
        str | None,
        typer.Option(
            help="Only this queue's jobs.",
            show_default=False,
        ),
    ] = None,
    object_id: Annotated[
        str | None, typer.Option(help="Only jobs with this object_id.", show_default=False)
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="How many of the latest.")] = 20,
    database_url: DatabaseUrl = None,
    database_url_file: DatabaseUrlFile = None,
) -> None:
    """The latest jobs, filtered, with their story in brief and pickup latency."""
    if status is not None and status not in STATUSES:
        raise ConfigError(f"--status must be one of {', '.join(STATUSES)}, not {status!r}")
    settings = settings_from(
        database_url=database_url, database_url_file=database_url_file, log_level="WARNING"
    )
    found: FoundJobs = db.run_once(
        settings.url(),
        admin.find_jobs,
        limit,
        status=status,
        task=task,
        object_id=object_id,
        queue=queue,
    )
    if sys.stdout.isatty():
        Console().print(console.job_table(found.rows))
    else:
        for row in found.rows:
            print(console.plain_line(row))
    if found.window is not None and len(found.rows) < limit:
        print(
            f"notifyworker: looked at the latest {found.window:,} jobs only: no index serves "
            "--task alone or --status done (--object-id and the other statuses search them all)",
            file=sys.stderr,
        )
