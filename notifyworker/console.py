"""The classic job table and one job's story, for a terminal (rich) or for plain output.

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

from notifyworker.models import JobRow, JobStory, Summary, pickup_seconds
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


def _when(value: datetime) -> str:
    """A full local time, date and offset included: a story may span days."""
    return value.astimezone().isoformat(sep=" ", timespec="milliseconds")


def _json(value: Any, *, multiline: bool) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2 if multiline else None)


def story(job: JobStory, *, multiline: bool = False) -> list[tuple[str, str]]:
    """One job's story as (label, inert text) lines, from its insert to its end.

    A line that never happened (no start, no retry, no result) is left out.
    `multiline` keeps newlines in the error and indents the JSON, for a
    terminal's table, where a value cannot leave its cell; otherwise every
    value is one line and no line can pass for another.
    """

    def text(value: str) -> str:
        return visible(value, keep_newlines=multiline)

    attempts = f"{job.attempts} of {job.max_attempts}"
    lines: list[tuple[str, str]] = [
        ("job", str(job.id)),
        ("task", text(job.task)),
        ("object_id", text(job.object_id or "")),
        ("queue", text(job.queue)),
        ("priority", str(job.priority)),
        ("limit key", text(job.limit_key or "")),
        ("status", job.status),
        ("attempts", attempts),
        ("lost claims", str(job.lost_claims)),
        ("worker", text(job.worker_id or "")),
        ("timeout", f"{job.timeout:g} s"),
        ("created", _when(job.created_at)),
        ("run at", _when(job.run_at)),
    ]
    if job.retried_at is not None:
        times = "once" if job.retries == 1 else f"{job.retries} times, the last"
        after = f"after {job.attempts_before_retry} attempts"
        lines.append(("retried", f"{_when(job.retried_at)} ({times} {after})"))
        if job.error_before_retry is not None:
            lines.append(("error before retry", text(job.error_before_retry)))
    if job.queued_at is not None:
        lines.append(("queued", _when(job.queued_at)))
    if job.started_at is not None:
        pickup = pickup_seconds(job.created_at, job.started_at) * 1000
        lines.append(("started", f"{_when(job.started_at)} (pickup {pickup:.1f} ms)"))
    if job.finished_at is not None:
        ran = ""
        if job.started_at is not None:
            seconds = max((job.finished_at - job.started_at).total_seconds(), 0.0)
            ran = f" (ran {seconds:.3f} s)"
        lines.append(("finished", _when(job.finished_at) + ran))
    if job.cancelled_at is not None:
        lines.append(("cancelled", _when(job.cancelled_at)))
    lines.append(("payload", text(_json(job.payload, multiline=multiline))))
    if job.result is not None:
        lines.append(("result", text(_json(job.result, multiline=multiline))))
    if job.error is not None:
        lines.append(("error", text(job.error)))
    return [(label, value) for label, value in lines if value]


def story_table(job: JobStory) -> Table:
    """The story for a terminal: labels, then values as `Text` (never markup)."""
    table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value")
    for label, value in story(job, multiline=True):
        cell = Text(value)
        if label == "status":
            cell.stylize(STATUS_STYLE.get(job.status, "white"))
        table.add_row(label, cell)
    return table


def story_plain(job: JobStory) -> str:
    """The story off a terminal: one `label: value` line each."""
    return "\n".join(f"{label}: {value}" for label, value in story(job))


def summary_text(summary: Summary, seconds: float) -> str:
    def ms(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1f} ms"

    return (
        f"in {seconds:g}s: {summary.done} done, {summary.cancelled} cancelled, "
        f"{summary.failed} failed, {summary.unfinished} unfinished; "
        f"pickup latency p50 {ms(summary.pickup_p50_ms)}, p99 {ms(summary.pickup_p99_ms)}"
    )
