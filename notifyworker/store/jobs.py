"""The worker's units of work on its jobs: registry, marks, ownership, the sweep, counts.

What a running worker and its sweeper send (sql/queries/service.sql and
sweeper.sql). Each function is sync and takes a `Session`; the service runs it
through `Database.run`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from notifyworker.db import Row, Session, json_param
from notifyworker.errors import DatabaseError
from notifyworker.models import (
    FinishMark,
    Flushed,
    JobId,
    JobStatus,
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


def register_worker(
    s: Session,
    worker_id: WorkerId,
    host: str,
    pid: int,
    queues: tuple[str, ...] | None = None,
    free_slots: int | None = None,
) -> None:
    s.execute(
        "register_worker",
        worker_id=worker_id,
        host=host,
        pid=pid,
        serve=None if queues is None else list(queues),
        free_slots=free_slots,
    )


@dataclass(frozen=True)
class Beat:
    alive: bool  # False: a sweeper declared this worker dead
    # The other live workers a new job may wake: free, serving every queue.
    wakeable: tuple[WorkerId, ...] = ()


def heartbeat(
    s: Session,
    worker_id: WorkerId,
    free_slots: int,
    queues: tuple[str, ...] | None,
    dead_after_seconds: float,
) -> Beat:
    """One beat: alive or not, publishing the free slots and queues, reading the fleet."""
    row = s.one(
        "heartbeat",
        worker_id=worker_id,
        free_slots=free_slots,
        serve=None if queues is None else list(queues),
        dead_after=f"{dead_after_seconds} seconds",
    )
    if row is None:
        return Beat(alive=False)
    return Beat(alive=True, wakeable=tuple(WorkerId(w) for w in row["wakeable"]))


def wake_fleet(s: Session) -> None:
    """Wake every worker: a new job's token designated this one, which has no room."""
    s.rows("notify_jobs", reason="wake")


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
