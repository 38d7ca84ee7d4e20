"""The dashboard's units of work: what its pages read and its queue actions write.

Each function is sync and takes a `Session`, run through `Database.run`, as
`admin`'s are (cancel and retry are `admin`'s own). Every read is bounded and
served by an index (sql/queries/dashboard.sql says how), so a page costs the
same on a table of millions as on an empty one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, get_args

from notifyworker.admin import INDEXED_STATUSES, SEARCH_WINDOW
from notifyworker.db import Row, Session
from notifyworker.models import FINAL_STATUSES, JobId, JobStatus

# Waiting jobs counted per queue, past which the page says "N+".
WAITING_CAP = 100_000
# Done jobs whose pickup latency the overview's p50/p99 are taken from.
PICKUP_SAMPLE = 1000
# Jobs one page of the list shows.
PAGE_SIZE = 50
# Every status, in the order a job reaches them.
STATUSES: tuple[JobStatus, ...] = get_args(JobStatus)
# Larger than any job id: the first page's `before`.
NEWEST = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Overview:
    queues: list[Row]
    counts: dict[str, float]
    # True: the finished counts are PostgreSQL's estimates (more than WAITING_CAP of them).
    estimated: bool
    throughput: list[Row]
    pickup: Row


@dataclass(frozen=True, slots=True)
class JobFilters:
    status: str | None = None
    task: str | None = None
    queue: str | None = None
    object_id: str | None = None

    def params(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "task": self.task,
            "queue": self.queue,
            "object_id": self.object_id,
        }


@dataclass(frozen=True, slots=True)
class JobsPage:
    rows: list[Row]
    # The `before` of the next page; None: this is the last one.
    next_before: int | None
    # Jobs this page looked at when no index served its filters; None: all of them.
    window: int | None


def overview(s: Session) -> Overview:
    """Counts exact where they are cheap: finished jobs up to WAITING_CAP, else estimated."""
    counts = {row["status"]: row["jobs"] for row in s.rows("job_counts", cap=WAITING_CAP)}
    finished = {row["status"]: row["jobs"] for row in s.rows("dashboard_finished", cap=WAITING_CAP)}
    estimated = sum(finished.values()) >= WAITING_CAP
    if not estimated:
        counts = {k: v for k, v in counts.items() if k not in FINAL_STATUSES} | finished
    pickup = s.one("dashboard_pickup", sample=PICKUP_SAMPLE)
    assert pickup is not None
    return Overview(
        queues=s.rows("dashboard_queues", cap=WAITING_CAP),
        counts=counts,
        estimated=estimated,
        throughput=s.rows("dashboard_throughput"),
        pickup=pickup,
    )


def jobs_page(s: Session, filters: JobFilters, before: int = NEWEST) -> JobsPage:
    """One page of jobs below `before`, newest first, matching every filter given.

    A filter no index serves (task, queue, status `done`) walks no more than
    SEARCH_WINDOW jobs per page, as `notifyworker jobs` does; the next page then
    starts below that window, so paging on always reaches the oldest job
    without reading the table at once.
    """
    floor, window = 0, None
    indexed = filters.object_id is not None or filters.status in INDEXED_STATUSES
    narrows = filters.task is not None or filters.queue is not None or filters.status is not None
    if narrows and not indexed:
        row = s.one("dashboard_window", before=before, window=SEARCH_WINDOW)
        assert row is not None
        if row["jobs"] >= SEARCH_WINDOW:
            floor, window = row["id"], SEARCH_WINDOW
    rows = s.rows(
        "dashboard_jobs", before=before, floor=floor, limit=PAGE_SIZE + 1, **filters.params()
    )
    if len(rows) > PAGE_SIZE:
        return JobsPage(rows[:PAGE_SIZE], rows[PAGE_SIZE - 1]["id"], window)
    # Fewer than a page: the window is spent (go on below it), or the table is.
    return JobsPage(rows, floor if window is not None else None, window)


def job(s: Session, job_id: JobId) -> Row | None:
    return s.one("dashboard_job", id=job_id)


def workers(s: Session) -> list[Row]:
    return s.rows("dashboard_workers")


def pause_queue(s: Session, name: str, paused: bool) -> None:
    s.execute("dashboard_pause_queue", name=name, paused=paused)


def set_queue_rate(s: Session, name: str, rate: float | None) -> None:
    s.execute("dashboard_set_queue_rate", name=name, rate=rate)
