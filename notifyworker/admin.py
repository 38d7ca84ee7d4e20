"""The operator's units of work: enqueue, cancel, retry, queues and rates, reports, schedules.

What the CLI (and `up`'s demo and view) send, as sql/queries/admin.sql says
(enqueue: the producer API's, sql/queries/producer.sql);
the worker's own are in `store`. Each function is sync and takes a `Session`,
run through `db.run_once` (the CLI) or `Database.run` (`up`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from notifyworker import db
from notifyworker.cron import ScheduleRow, schedule_rows
from notifyworker.db import Session
from notifyworker.models import FoundJobs, JobId, JobRow, JobStory, QueueRow, Summary

# How many of the latest jobs `find_jobs` looks at when no index bounds its filters.
SEARCH_WINDOW = 100_000
# The statuses an index lists (jobs_waiting, jobs_on_worker, jobs_failed_or_cancelled):
# a filter on one of them reads those rows only, however large the table.
INDEXED_STATUSES = frozenset({"new", "queued", "running", "failed", "cancelled"})


def cancel(s: Session, job_id: JobId) -> str | None:
    """What `notifyworker cancel` runs; the job's status afterwards (None: no such job)."""
    row = s.one("cancel_job", id=job_id)
    return None if row is None else row["status"]


def retry(s: Session, job_id: JobId) -> tuple[str, bool] | None:
    """What `notifyworker retry` runs: the status the job had, and whether it went back
    to `new` (only a failed or cancelled job does); None: no such job."""
    row = s.one("retry_job", id=job_id)
    return None if row is None else (row["was"], row["status"] is not None)


def enqueue(
    s: Session,
    task: str,
    payload: dict[str, Any],
    object_id: str | None = None,
    timeout: float | None = None,
    max_attempts: int = 1,
    unique_key: str | None = None,
    queue: str | None = None,
    priority: int | None = None,
    limit_key: str | None = None,
) -> JobId:
    """What `notifyworker enqueue` and the demo producer run: the producer API's enqueue."""
    return db.enqueue(
        s.connection,
        task,
        payload,
        object_id=object_id,
        timeout=timeout,
        max_attempts=max_attempts,
        unique_key=unique_key,
        queue=queue,
        priority=priority,
        limit_key=limit_key,
    )


def latest_jobs(s: Session, limit: int) -> list[JobRow]:
    return [JobRow(**row) for row in s.rows("latest_jobs", limit=limit)]


def find_jobs(
    s: Session,
    limit: int,
    *,
    status: str | None = None,
    task: str | None = None,
    object_id: str | None = None,
    queue: str | None = None,
) -> FoundJobs:
    """The newest jobs that match every filter given (None: any), newest first.

    A filter an index serves (object_id, any status but `done`) finds matches of any
    age. Without one, a task, queue or `done` filter walks back from the newest job over
    the latest SEARCH_WINDOW jobs at most, and says so, rather than read the table.
    """
    from_id, window = 0, None
    narrows = task is not None or status is not None or queue is not None
    if narrows and object_id is None and status not in INDEXED_STATUSES:
        row = s.one("window_start", window=SEARCH_WINDOW)
        assert row is not None
        if row["jobs"] >= SEARCH_WINDOW:  # else the window is the whole table
            from_id, window = row["id"], SEARCH_WINDOW
    params = {"status": status, "task": task, "object_id": object_id, "queue": queue}
    rows = s.rows("find_jobs", from_id=from_id, limit=limit, **params)
    return FoundJobs([JobRow(**row) for row in rows], window)


def job_story(s: Session, job_id: JobId) -> JobStory | None:
    """Every column of one job; None: no such job."""
    row = s.one("job_story", id=job_id)
    return None if row is None else JobStory(**row)


def last_job_id(s: Session) -> JobId:
    row = s.one("last_job_id")
    assert row is not None
    return JobId(row["id"])


def summary_since(s: Session, after_id: JobId) -> Summary:
    row = s.one("summary_since", after_id=after_id)
    assert row is not None
    return Summary(**row)


# === Queues (`queue`, `queues`, `rate`) ===

# `queues` counts a queue's waiting jobs up to this many ("10,000+" beyond).
WAITING_CAP = 10_000


def set_queue(s: Session, name: str, changes: dict[str, float | int | bool | None]) -> None:
    """Create or change a queue's row: the settings in `changes` (None clears a limit)."""
    s.execute("set_queue", name=name, changes=db.json_param(changes))


def list_queues(s: Session, name: str | None = None) -> list[QueueRow]:
    """Every queue with a row, waiting jobs or held jobs (or only `name`, row or not)."""
    return [QueueRow(**row) for row in s.rows("list_queues", name=name, cap=WAITING_CAP)]


def set_rate(s: Session, rate: float | None) -> None:
    """Set the default queue's fleet rate, or (None) go back to each worker's own."""
    if rate is None:
        s.execute("reset_rate")
    else:
        s.execute("set_rate", rate=rate)


def get_rate(s: Session) -> float | None:
    """The default queue's fleet rate; None: each worker's own."""
    row = s.one("get_rate")
    return None if row is None or row["value"] is None else float(row["value"])


# === Schedules (`schedules`) ===


def list_schedules(s: Session) -> tuple[list[ScheduleRow], datetime | None]:
    """Every schedule, and PostgreSQL's clock (None when there is no schedule)."""
    return schedule_rows(s.rows("list_schedules"))


def remove_schedule(s: Session, name: str) -> bool:
    """Delete a schedule; False if there is none by that name."""
    return s.one("remove_schedule", name=name) is not None


def pause_schedule(s: Session, name: str, paused: bool) -> bool:
    """Pause or resume a schedule; False if there is none by that name."""
    return s.one("pause_schedule", name=name, paused=paused) is not None
