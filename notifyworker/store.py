"""The job table's operations, each one unit of work (one thread hop).

Each function here is sync and takes a `Session`; callers run it through
`Database.run` (the service) or `db.run_once` (the CLI).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from notifyworker.db import Row, Session, json_param
from notifyworker.models import (
    ClaimedJob,
    FinishMark,
    Flushed,
    JobId,
    JobRow,
    JobStatus,
    RetryPolicy,
    StartMark,
    Summary,
    SweepReport,
    WorkerId,
)
from notifyworker.sqlfiles import migrations

log = logging.getLogger(__name__)

# Most jobs one sweep touches per kind of dead job, so a backlog of dead
# jobs is worked off over several sweeps instead of one long transaction.
SWEEP_BATCH = 500
# Times a job may be taken back from workers that died before it started
# before it is cancelled as one that may be killing them.
LOST_CLAIMS_LIMIT = 5


def migrate(s: Session) -> list[str]:
    """Apply the migrations not yet applied, in one transaction; names applied.

    Safe to run from several processes at once: the advisory lock makes the
    second wait for the first, then find nothing left to do.
    """
    applied_now = []
    with s.transaction():
        s.rows("migrate_lock")
        s.execute("migrate_bookkeeping")
        done = {row["version"] for row in s.rows("applied_migrations")}
        for migration in migrations():
            if migration.version in done:
                continue
            s.script(migration.sql)
            s.execute("record_migration", version=migration.version, name=migration.name)
            applied_now.append(f"{migration.version:04d}_{migration.name}")
    return applied_now


def pending_migrations(s: Session) -> list[int]:
    done = {row["version"] for row in s.rows("applied_migrations")}
    return [m.version for m in migrations() if m.version not in done]


def register_worker(s: Session, worker_id: WorkerId, host: str, pid: int) -> None:
    s.execute("register_worker", worker_id=worker_id, host=host, pid=pid)


@dataclass(frozen=True)
class Beat:
    alive: bool  # False: a sweeper declared this worker dead
    rate: float | None  # the cluster-wide rate setting, if any


def heartbeat(s: Session, worker_id: WorkerId) -> Beat:
    row = s.one("heartbeat", worker_id=worker_id)
    return Beat(alive=row is not None, rate=None if row is None else row["rate"])


def set_rate(s: Session, rate: float | None) -> None:
    """Set the rate every worker uses, or (None) go back to each worker's own."""
    if rate is None:
        s.execute("reset_rate")
    else:
        s.execute("set_rate", rate=rate)


def get_rate(s: Session) -> float | None:
    row = s.one("get_rate")
    return None if row is None else float(row["value"])


def unregister_worker(s: Session, worker_id: WorkerId) -> None:
    s.execute("unregister_worker", worker_id=worker_id)


def claimed_jobs(rows: list[Row]) -> list[ClaimedJob]:
    """Rows the `claim` statement returned, oldest first."""
    jobs = [
        ClaimedJob(
            id=JobId(row["id"]),
            task=row["task"],
            payload=row["payload"],
            timeout=row["timeout"],
            claimed_at=row["queued_at"],
            attempt=row["attempts"] + 1,
            max_attempts=row["max_attempts"],
            created_at=row["created_at"],
        )
        for row in rows
    ]
    jobs.sort(key=lambda job: job.id)  # UPDATE … RETURNING does not keep the CTE's order
    return jobs


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
    refused: set[JobId] = set()
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
            refused.update(set(ids) - {JobId(row["id"]) for row in marked})
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
            refused.update(set(ids) - {JobId(row["id"]) for row in marked})
            retries_in.extend(row["retry_in"] for row in marked if row["retry_in"] is not None)
    return Flushed(frozenset(refused), tuple(retries_in))


def release_lost_claims(s: Session, worker_id: WorkerId, held: list[JobId]) -> int:
    """Requeue this worker's `queued` jobs that no consumer holds; wake the others."""
    with s.transaction():
        count = len(s.rows("release_lost_claims", worker_id=worker_id, held=held))
        if count:
            s.rows("notify_jobs", reason="released")
    return count


def requeue_unstarted(s: Session, worker_id: WorkerId) -> int:
    """Give this worker's claimed-but-unstarted jobs back; wake the others."""
    with s.transaction():
        count = len(s.rows("requeue_unstarted", worker_id=worker_id))
        if count:
            s.rows("notify_jobs", reason="requeued")
    return count


def sweep(s: Session, dead_after_seconds: float, retry: RetryPolicy) -> SweepReport:
    """One round of the sweeper, if no other replica's sweeper holds the lock."""
    backoff = {"retry_backoff": retry.base, "retry_backoff_max": retry.cap}
    with s.transaction():
        lock = s.one("sweep_lock")
        if lock is None or not lock["acquired"]:
            return SweepReport(skipped=True)
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
    return SweepReport(
        overdue_retried=statuses.count("new"),
        overdue_cancelled=statuses.count("cancelled"),
        dead_workers=len(dead),
        rescued_requeued=requeued,
        rescued_retried=retried,
        rescued_cancelled=cancelled,
        retries_in=tuple(retries_in),
    )


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
