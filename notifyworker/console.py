"""The classic job table, for a terminal (rich) or for plain output.

Every value that came from a row is the application's text, not ours: it goes
through `safetext.visible` (control characters shown as escapes) and reaches
rich as `Text`, never as a string that rich would read as markup or emoji.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from rich.table import Table
from rich.text import Text

from notifyworker.models import JobRow, Summary, pickup_seconds
from notifyworker.safetext import visible

COLUMNS = (
    "id",
    "object_id",
    "task",
    "sleep",
    "status",
    "created_at",
    "queued_at",
    "started_at",
    "finished_at",
    "cancelled_at",
    "pickup",
    "error",
)

STATUS_STYLE = {
    "done": "green",
    "failed": "red",
    "cancelled": "yellow",
    "running": "cyan",
    "queued": "blue",
    "new": "white",
}


def _time(value: datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone().strftime("%H:%M:%S.%f")[:-3]


def _sleep(job: JobRow) -> str:
    if job.task != "sleep":
        return ""
    seconds: Any = job.payload.get("seconds")
    if seconds is None:
        return "(stuck)"
    if isinstance(seconds, int | float) and not isinstance(seconds, bool):
        return f"{seconds:g}s"
    # Not a number (the task will refuse it): shown as the JSON it is.
    return json.dumps(seconds, ensure_ascii=False)[:60]


def pickup_ms(job: JobRow) -> float | None:
    """Pickup latency: from the insert to the handler's start."""
    if job.started_at is None:
        return None
    return pickup_seconds(job.created_at, job.started_at) * 1000


def cells(job: JobRow) -> list[str]:
    """The row's columns as inert text: control characters are escaped."""
    pickup = pickup_ms(job)
    raw = [
        str(job.id),
        job.object_id or "",
        job.task,
        _sleep(job),
        job.status,
        _time(job.created_at),
        _time(job.queued_at),
        _time(job.started_at),
        _time(job.finished_at),
        _time(job.cancelled_at),
        "" if pickup is None else f"{pickup:.1f} ms",
        (job.error or "")[:60],
    ]
    return [visible(cell) for cell in raw]


def job_table(jobs: list[JobRow], title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left")
    for column in COLUMNS:
        table.add_column(column, no_wrap=column != "error")
    status = COLUMNS.index("status")
    for job in jobs:
        row = [Text(cell) for cell in cells(job)]
        row[status].stylize(STATUS_STYLE.get(job.status, "white"))
        table.add_row(*row)
    return table


def plain_line(job: JobRow) -> str:
    return " ".join(
        f"{name}={value}" for name, value in zip(COLUMNS, cells(job), strict=True) if value
    )


def summary_text(summary: Summary, seconds: float) -> str:
    def ms(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1f} ms"

    return (
        f"in {seconds:g}s: {summary.done} done, {summary.cancelled} cancelled, "
        f"{summary.failed} failed, {summary.unfinished} unfinished; "
        f"pickup latency p50 {ms(summary.pickup_p50_ms)}, p99 {ms(summary.pickup_p99_ms)}"
    )
