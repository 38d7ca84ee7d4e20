"""Commands on one job, for operators: retry it, read its whole story."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console

from notifyworker import admin, console, db
from notifyworker.cli.options import DatabaseUrl, DatabaseUrlFile, settings_from
from notifyworker.errors import JobRefused, NoSuchJob
from notifyworker.models import JobId, JobStory

JobIdArgument = Annotated[int, typer.Argument(help="The job's id.", show_default=False)]


def retry(
    job_id: JobIdArgument,
    database_url: DatabaseUrl = None,
    database_url_file: DatabaseUrlFile = None,
) -> None:
    """Run a failed or cancelled job again, with a fresh attempt budget: `new` afterwards.

    As `SELECT notifyworker.retry(id)` does: the job keeps its id, its attempts so far and
    its last error; its max_attempts grows by the starts it was inserted with.
    """
    settings = settings_from(
        database_url=database_url, database_url_file=database_url_file, log_level="WARNING"
    )
    found = db.run_once(settings.url(), admin.retry, JobId(job_id))
    if found is None:
        raise NoSuchJob(f"there is no job {job_id}")
    was, retried = found
    if not retried:
        raise JobRefused(f"job {job_id} is {was}: only a failed or cancelled job can be retried")
    print("new")


def job(
    job_id: JobIdArgument,
    database_url: DatabaseUrl = None,
    database_url_file: DatabaseUrlFile = None,
) -> None:
    """One job's whole story: its times, attempts, worker, payload, result and error."""
    settings = settings_from(
        database_url=database_url, database_url_file=database_url_file, log_level="WARNING"
    )
    story: JobStory | None = db.run_once(settings.url(), admin.job_story, JobId(job_id))
    if story is None:
        raise NoSuchJob(f"there is no job {job_id}")
    if sys.stdout.isatty():
        Console().print(console.story_table(story))
    else:
        print(console.story_plain(story))
