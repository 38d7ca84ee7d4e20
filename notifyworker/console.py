"""The classic job table, for a terminal (rich) or for plain output."""

from __future__ import annotations

from datetime import datetime

from rich.table import Table

from notifyworker.models import JobRow, Summary

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
    seconds = job.payload.get("seconds")
    return "(stuck)" if seconds is None else f"{seconds:g}s"


def pickup_ms(job: JobRow) -> float | None:
    """Pickup latency: from the insert to the handler's start."""
    if job.started_at is None:
        return None
    return (job.started_at - job.created_at).total_seconds() * 1000


def cells(job: JobRow) -> list[str]:
    pickup = pickup_ms(job)
    return [
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


def job_table(jobs: list[JobRow], title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left")
    for column in COLUMNS:
        table.add_column(column, no_wrap=column != "error")
    for job in jobs:
        row = cells(job)
        row[4] = f"[{STATUS_STYLE.get(job.status, 'white')}]{job.status}[/]"
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
