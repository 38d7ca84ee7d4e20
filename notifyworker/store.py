"""The worker's units of work on the job table, each one thread hop.

What a running worker, its sweeper and its scheduler do (sql/queries/service.sql,
sweeper.sql and scheduler.sql); the operator's are in `admin`, migrations in
`schema`. Each function here is sync and takes a `Session`; the service runs it
through `Database.run`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime

from notifyworker.cron import Schedule, ScheduleRow, schedule_rows, tick_reference
from notifyworker.db import Row, Session, json_param
from notifyworker.errors import DatabaseError
from notifyworker.models import (
    FinishMark,
    Flushed,
    JobId,
    JobStatus,
    PruneReport,
    Retention,
    RetryPolicy,
    StartMark,
    SweepReport,
    Verdict,
    WorkerId,
)

log = logging.getLogger(__name__)

# Most jobs one sweep touches per kind of dead job, so a backlog of dead
# jobs is worked off over several sweeps instead of one long transaction.
SWEEP_BATCH = 500
# Times a job may be taken back from workers that died before it started
# before it is cancelled as one that may be killing them.
LOST_CLAIMS_LIMIT = 5


def register_worker(s: Session, worker_id: WorkerId, host: str, pid: int) -> None:
    s.execute("register_worker", worker_id=worker_id, host=host, pid=pid)


@dataclass(frozen=True)
class Beat:
    alive: bool  # False: a sweeper declared this worker dead
    rate: float | None  # the cluster-wide rate setting, if any


def heartbeat(s: Session, worker_id: WorkerId) -> Beat:
    row = s.one("heartbeat", worker_id=worker_id)
    return Beat(alive=row is not None, rate=None if row is None else row["rate"])


def unregister_worker(s: Session, worker_id: WorkerId) -> bool:
    """Remove this worker's row; True (and the row kept, marked dead) if it left jobs."""
    row = s.one("unregister_worker", worker_id=worker_id)
    return bool(row and row["left_jobs"])


def record_marks(
    s: Session,
    worker_id: WorkerId,
    retry: RetryPolicy,
    starts: list[StartMark],
    finishes: list[FinishMark],
) -> Flushed:
    """Flush buffered marks in one transaction: the ids no longer this worker's, the next retry.

    Start marks alone commit asynchronously: lost in a server crash, the job
    is still `queued` on this worker and its outcome, or a rescue, follows.
    Outcomes always wait for the WAL flush.
    """
    refused: set[tuple[JobId, datetime]] = set()
    retries_in: list[float] = []
    with s.transaction():
        if not finishes:
            s.execute("async_commit")
        if starts:
            ids = [mark.job_id for mark in starts]
            marked = s.rows(
                "mark_started",
                worker_id=worker_id,
                ids=ids,
                queued_at=[mark.claimed_at for mark in starts],
                started_at=[mark.at for mark in starts],
            )
            refused.update(_refused(starts, marked))
        if finishes:
            ids = [mark.job_id for mark in finishes]
            marked = s.rows(
                "mark_finished",
                worker_id=worker_id,
                retry_backoff=retry.base,
                retry_backoff_max=retry.cap,
                ids=ids,
                queued_at=[mark.claimed_at for mark in finishes],
                statuses=[mark.outcome.status for mark in finishes],
                retryable=[mark.outcome.retryable for mark in finishes],
                started_at=[mark.started_at for mark in finishes],
                finished_at=[mark.at for mark in finishes],
                results=[
                    None if mark.outcome.result is None else json_param(mark.outcome.result)
                    for mark in finishes
                ],
                errors=[mark.outcome.error for mark in finishes],
            )
            refused.update(_refused(finishes, marked))
            retries_in.extend(row["retry_in"] for row in marked if row["retry_in"] is not None)
    return Flushed(frozenset(refused), tuple(retries_in))


def _refused(
    marks: list[StartMark] | list[FinishMark], marked: list[Row]
) -> set[tuple[JobId, datetime]]:
    """The attempts among `marks` whose rows the statement did not update."""
    landed = {JobId(row["id"]) for row in marked}
    return {(mark.job_id, mark.claimed_at) for mark in marks if mark.job_id not in landed}


def release_lost_claims(s: Session, worker_id: WorkerId, held: list[JobId]) -> int:
    """Requeue this worker's `queued` jobs that no consumer holds; wake the others."""
    with s.transaction():
        count = len(
            s.rows(
                "release_lost_claims",
                worker_id=worker_id,
                held=held,
                lost_claims_limit=LOST_CLAIMS_LIMIT,
            )
        )
        if count:
            s.rows("notify_jobs", reason="released")
    return count


def attempts_not_ours(
    s: Session, worker_id: WorkerId, attempts: list[tuple[JobId, datetime]]
) -> list[Verdict]:
    """Which of these attempts the table says are no longer this worker's, and why."""
    rows = s.rows(
        "attempts_not_ours",
        worker_id=worker_id,
        ids=[job_id for job_id, _ in attempts],
        queued_at=[claimed_at for _, claimed_at in attempts],
    )
    return [Verdict(JobId(row["id"]), row["queued_at"], _why(row)) for row in rows]


def _why(row: Row) -> str:
    if not row["found"]:
        return "the job is gone from the table"
    if row["same_attempt"]:
        if row["status"] == "cancelled":
            return f"cancelled in the table: {row['error']}"
        return f"the table already says {row['status']}"
    return (
        f"no longer this worker's: the job is {row['status']} now (retried, rescued or re-claimed)"
    )


def requeue_unstarted(s: Session, worker_id: WorkerId) -> int:
    """Give this worker's claimed-but-unstarted jobs back; wake the others."""
    with s.transaction():
        count = len(s.rows("requeue_unstarted", worker_id=worker_id))
        if count:
            s.rows("notify_jobs", reason="requeued")
    return count


def sweep(
    s: Session, worker_id: WorkerId, dead_after_seconds: float, retry: RetryPolicy
) -> SweepReport:
    """One round of the sweeper, if no other replica's sweeper holds the lease."""
    backoff = {"retry_backoff": retry.base, "retry_backoff_max": retry.cap}
    with s.transaction():
        lease = s.one("sweep_lease")
        if lease is None:
            raise DatabaseError("notifyworker.sweeper has no row: run `notifyworker migrate`")
        if not lease["acquired"]:
            return SweepReport(skipped=True, last_sweep_age=lease["age"])
        overdue = s.rows("sweep_overdue", limit=SWEEP_BATCH, **backoff)
        retries_in = [row["retry_in"] for row in overdue if row["retry_in"] is not None]
        statuses = [row["status"] for row in overdue]
        dead = s.rows("dead_workers", dead_after=f"{dead_after_seconds} seconds", limit=SWEEP_BATCH)
        requeued = retried = cancelled = 0
        for worker in dead:
            rescued = s.one(
                "rescue_dead_worker",
                worker_id=worker["id"],
                lost_claims_limit=LOST_CLAIMS_LIMIT,
                **backoff,
            )
            assert rescued is not None
            requeued += rescued["requeued"]
            retried += rescued["retried"]
            cancelled += rescued["cancelled"]
            retries_in.extend(rescued["retries_in"] or ())
        if requeued:
            s.rows("notify_jobs", reason="rescued")
        s.execute("sweep_done", worker_id=worker_id)
    return SweepReport(
        overdue_retried=statuses.count("new"),
        overdue_cancelled=statuses.count("cancelled"),
        dead_workers=len(dead),
        rescued_requeued=requeued,
        rescued_retried=retried,
        rescued_cancelled=cancelled,
        retries_in=tuple(retries_in),
    )


# After a full batch (more jobs are due), the fleet's next batch waits at least
# this long, and at least as long as the batch took: deleting takes at most
# half of one connection's time, however large the backlog.
PRUNE_MIN_PAUSE = 0.05


def prune(s: Session, retention: Retention, limit: int) -> PruneReport:
    """Delete one batch of at most `limit` finished jobs past their retention period.

    No lease: `notifyworker prune` sends it as it is; the worker's pruner
    through `prune_round`. Either may run beside the other: a row one holds
    the other skips.
    """
    rules = retention.rules()
    if not rules:
        return PruneReport({}, full=False)
    rows = s.rows(
        "prune_finished",
        statuses=[status for status, _ in rules],
        older_than=[seconds for _, seconds in rules],
        limit=limit,
    )
    deleted = {row["status"]: row["jobs"] for row in rows}
    return PruneReport(deleted, full=sum(deleted.values()) >= limit)


@dataclass(frozen=True)
class PruneRound:
    report: PruneReport | None  # None: not this replica's turn (leased elsewhere, or not due)
    next_in: float  # seconds until this replica should look again


def prune_round(
    s: Session, worker_id: WorkerId, retention: Retention, limit: int, interval: float
) -> PruneRound:
    """One batch of the fleet's pruner, if its lease is free and the batch is due.

    A full batch makes the next one due after a short pause (as long as this
    one took, at least PRUNE_MIN_PAUSE); a partial one, after `interval`.
    """
    with s.transaction():
        lease = s.one("prune_lease")
        if lease is None:
            raise DatabaseError("notifyworker.pruner has no row: run `notifyworker migrate`")
        if not lease["acquired"]:
            return PruneRound(None, min(max(lease["due_in"], PRUNE_MIN_PAUSE), interval))
        began = time.monotonic()
        report = prune(s, retention, limit)
        pause = max(time.monotonic() - began, PRUNE_MIN_PAUSE) if report.full else interval
        s.execute("prune_done", worker_id=worker_id, pause=pause)
    return PruneRound(report, pause)


# Waiting jobs the status gauge counts one by one; a larger backlog shows as this many.
COUNT_CAP = 100_000


def job_counts(s: Session) -> dict[JobStatus, float]:
    """Jobs by status for the gauge: active ones counted, finished ones estimated.

    A finished status is missing until an ANALYZE has sampled the table:
    unknown, which is not the same as none.
    """
    counts: dict[JobStatus, float] = {"new": 0.0, "queued": 0.0, "running": 0.0}
    for row in s.rows("job_counts", cap=COUNT_CAP):
        counts[row["status"]] = row["jobs"]
    return counts


# === The scheduler (sql/queries/scheduler.sql) ===


def declare_schedule(s: Session, schedule: Schedule) -> bool | None:
    """Create or update a declared schedule: True created, False updated, None as it was."""
    row = s.one(
        "declare_schedule",
        name=schedule.name,
        cron=schedule.cron,
        tz=schedule.tz,
        task=schedule.task,
        payload=json_param(schedule.payload),
        catch_up=schedule.catch_up,
    )
    return None if row is None else bool(row["created"])


def load_schedules(s: Session) -> tuple[list[ScheduleRow], datetime | None]:
    """Every schedule, and PostgreSQL's clock when they were read (None: no schedule)."""
    return schedule_rows(s.rows("load_schedules"))


def fire_tick(s: Session, schedule: ScheduleRow, tick: datetime) -> JobId | None:
    """Fire one tick: its job's id, or None when another replica fired it (or it moved on)."""
    with s.transaction():
        claimed = s.one(
            "fire_tick", name=schedule.name, cron=schedule.cron, tz=schedule.tz, tick=tick
        )
        if claimed is None:
            return None
        job = s.one(
            "enqueue_tick", name=schedule.name, object_id=tick_reference(schedule.name, tick)
        )
        assert job is not None
        return JobId(job["id"])


def skip_ticks(s: Session, schedule: ScheduleRow, tick: datetime) -> bool:
    """Move last_tick past missed ticks with no job (catch-up 'none'); False if already past."""
    row = s.one("skip_ticks", name=schedule.name, cron=schedule.cron, tz=schedule.tz, tick=tick)
    return row is not None
