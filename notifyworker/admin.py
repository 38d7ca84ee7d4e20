"""The operator's units of work: enqueue, cancel, the fleet's rate, reports, schedules.

What the CLI (and `up`'s demo and view) send, as sql/queries/admin.sql says;
the worker's own are in `store`. Each function is sync and takes a `Session`,
run through `db.run_once` (the CLI) or `Database.run` (`up`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from notifyworker.cron import ScheduleRow, schedule_rows
from notifyworker.db import Session, json_param
from notifyworker.models import JobId, JobRow, Summary


def cancel(s: Session, job_id: JobId) -> str | None:
    """What `notifyworker cancel` runs; the job's status afterwards (None: no such job)."""
    row = s.one("cancel_job", id=job_id)
    return None if row is None else row["status"]


def enqueue(
    s: Session,
    task: str,
    payload: dict[str, Any],
    object_id: str | None = None,
    timeout: float | None = None,
    max_attempts: int = 1,
) -> JobId:
    params: dict[str, Any] = {
        "task": task,
        "payload": json_param(payload),
        "object_id": object_id,
        "max_attempts": max_attempts,
    }
    if timeout is None:
        row = s.one("enqueue", **params)
    else:
        row = s.one("enqueue_with_timeout", timeout=timeout, **params)
    assert row is not None
    return JobId(row["id"])


def latest_jobs(s: Session, limit: int) -> list[JobRow]:
    return [JobRow(**row) for row in s.rows("latest_jobs", limit=limit)]


def last_job_id(s: Session) -> JobId:
    row = s.one("last_job_id")
    assert row is not None
    return JobId(row["id"])


def summary_since(s: Session, after_id: JobId) -> Summary:
    row = s.one("summary_since", after_id=after_id)
    assert row is not None
    return Summary(**row)


def set_rate(s: Session, rate: float | None) -> None:
    """Set the rate every worker uses, or (None) go back to each worker's own."""
    if rate is None:
        s.execute("reset_rate")
    else:
        s.execute("set_rate", rate=rate)


def get_rate(s: Session) -> float | None:
    row = s.one("get_rate")
    return None if row is None else float(row["value"])


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
