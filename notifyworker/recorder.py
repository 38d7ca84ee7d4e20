"""The recorder: start and finish marks, buffered and flushed together.

A consumer never waits on the database to start or end a job: it leaves a
mark here and goes on. One flusher writes every pending mark in one
transaction, and starts the next flush as soon as the last one returns, so
an idle worker's single mark is written at once while a busy worker's marks
group themselves into batches as large as the load (group commit, no timer).

The marks are the job's story: a start mark reaches the table within one
flush, so the sweeper's deadline (`started_at + timeout`) sees a long job
promptly. A worker that crashes between a job's end and its flush leaves
the job `queued` or `running`; the sweeper rescues it as a dead worker's, so
the job runs again or ends cancelled: at-least-once, never lost.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import NoReturn

import anyio

from notifyworker import store
from notifyworker.backoff import Retrying
from notifyworker.db import Database
from notifyworker.demand import Demand
from notifyworker.errors import DatabaseError, Transient
from notifyworker.inflight import InFlight
from notifyworker.models import (
    ClaimedJob,
    FinishMark,
    Flushed,
    JobId,
    Outcome,
    RetryPolicy,
    StartMark,
    WorkerId,
)

log = logging.getLogger(__name__)

# Most marks one flush writes; the rest wait for the next flush.
MAX_BATCH = 1000
# Pending marks beyond which the claimer stops claiming, so a slow database
# slows the worker down instead of growing the buffer.
BACKLOG_LIMIT = 2000


# The error of an outcome PostgreSQL refused to store, recorded in its place.
REFUSED = "could not record the outcome: "


def now() -> datetime:
    return datetime.now(UTC)


class Recorder:
    def __init__(
        self,
        db: Database,
        worker_id: WorkerId,
        inflight: InFlight,
        retry: RetryPolicy,
        demand: Demand,
    ) -> None:
        self._db = db
        # Told when a retry this worker scheduled falls due, so it claims it then.
        self._demand = demand
        self._worker_id = worker_id
        self._retry = retry
        self._inflight = inflight
        # Since when outcomes have failed to reach the table (readiness reads it).
        self.retrying = Retrying("recording outcomes")
        # When the write in progress began (the event loop's clock): a write stuck on a
        # lock is as bad for readiness as one that fails.
        self.writing_since: float | None = None
        self._starts: dict[JobId, StartMark] = {}
        self._finishes: list[FinishMark] = []
        self._pending = anyio.Event()
        self._flushed = anyio.Event()
        # One flush at a time, so a job's start mark never lands after its outcome.
        self._writing = anyio.Lock()

    def started(self, job: ClaimedJob) -> datetime:
        at = now()
        self._starts[job.id] = StartMark(job.id, job.claimed_at, at)
        self._pending.set()
        return at

    def finished(self, job: ClaimedJob, outcome: Outcome, started_at: datetime | None) -> None:
        # A start not yet flushed travels with the outcome: one statement, not two.
        self._starts.pop(job.id, None)
        self._finishes.append(FinishMark(job.id, job.claimed_at, outcome, started_at, now()))
        self._pending.set()

    def stalled_for(self, now: float) -> float:
        """Seconds the marks being written have waited for the table (0 when none wait)."""
        return 0.0 if self.writing_since is None else now - self.writing_since

    def stalled(self, now: float, within: float) -> str | None:
        """Why outcomes are not reaching the table, once that lasts over `within` (readiness)."""
        stalled = max(self.stalled_for(now), self.retrying.failing_for(now))
        if stalled <= within:
            return None
        why = self.retrying.last_error or "waiting on the database"
        return f"outcomes have not reached the table for {stalled:.1f}s ({why})"

    @property
    def backlog(self) -> int:
        return len(self._starts) + len(self._finishes)

    async def below_limit(self) -> None:
        """Wait until the backlog is small enough to take more work."""
        while self.backlog >= BACKLOG_LIMIT:
            await self._flushed.wait()

    async def release_lost_claims(self, held: set[JobId]) -> int:
        """Requeue this worker's `queued` jobs that it does not know about.

        Each counts a lost claim: a job that keeps making claims fail is
        cancelled after a few, rather than claimed and released forever.

        A job is known while a consumer holds it (`held`) and until its marks
        are written; the lock keeps a flush from landing in between, so a job
        whose outcome is on its way is never mistaken for a lost claim.
        """
        async with self._writing:
            known = held | self._starts.keys() | {mark.job_id for mark in self._finishes}
            count: int = await self._db.run(
                store.release_lost_claims, self._worker_id, sorted(known)
            )
            return count

    async def flush_forever(self) -> NoReturn:
        while True:
            await self._pending.wait()
            try:
                await self.flush()
            except Exception as exc:  # noqa: BLE001 - the marks were put back; try again
                await self.retrying.failed(exc)

    async def flush(self) -> None:
        """Write every pending mark (retrying through an outage), in batches."""
        async with self._writing:
            await self._flush_pending()

    async def _flush_pending(self) -> None:
        while self.backlog:
            self._pending = anyio.Event()
            starts = list(self._starts.values())[:MAX_BATCH]
            for mark in starts:
                del self._starts[mark.job_id]
            finishes = self._finishes[:MAX_BATCH]
            del self._finishes[:MAX_BATCH]
            self.writing_since = anyio.current_time()
            try:
                flushed = await self._write(starts, finishes)
            except Exception:
                # Not a database's answer (a bug, or a value nobody planned for):
                # the marks go back, in order, for the next flush.
                self._starts = {mark.job_id: mark for mark in starts} | self._starts
                self._finishes[:0] = finishes
                self._pending.set()
                raise
            finally:
                self.writing_since = None
            self._flushed.set()
            self._flushed = anyio.Event()
            if finishes:
                self._demand.outcomes_recorded()
            for seconds in flushed.retries_in:
                self._demand.due_in(seconds)
            for job_id, claimed_at in flushed.refused:
                # Cancelled, or rescued by a sweeper while this worker ran it (its
                # heartbeat had lapsed): the verdict in the table stands, so stop
                # the handler of that very attempt.
                held = self._inflight.find(job_id, claimed_at)
                if held is not None:
                    held.cancel("no longer this worker's: cancelled or rescued meanwhile")

    async def _write(self, starts: list[StartMark], finishes: list[FinishMark]) -> Flushed:
        while True:
            try:
                flushed: Flushed = await self._db.run(
                    store.record_marks, self._worker_id, self._retry, starts, finishes
                )
            except Transient as exc:
                # A lost connection or a statement PostgreSQL cancelled: the same
                # marks again, never a verdict on them. Readiness sees how long.
                await self.retrying.failed(exc)
                continue
            except DatabaseError as exc:
                if len(starts) + len(finishes) > 1:
                    # Find the bad mark by writing them one by one.
                    flushed = Flushed()
                    for single in starts:
                        flushed |= await self._write([single], [])
                    for one in finishes:
                        flushed |= await self._write([], [one])
                    return flushed
                if starts:
                    log.error("dropping a start mark PostgreSQL refused: %s", exc)
                    return Flushed()
                mark = finishes[0]
                if (mark.outcome.error or "").startswith(REFUSED):
                    # Even the plain refusal was refused (a privilege, a trigger…):
                    # keep it, never lose an outcome, and let readiness say so.
                    await self.retrying.failed(exc)
                    continue
                # The one outcome PostgreSQL refused (say, a result it cannot
                # store): record the refusal instead, so the job still ends.
                refused = Outcome("failed", error=f"{REFUSED}{exc}")
                finishes = [
                    FinishMark(mark.job_id, mark.claimed_at, refused, mark.started_at, mark.at)
                ]
                continue
            self.retrying.succeeded()
            return flushed
