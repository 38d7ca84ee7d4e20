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

import trio

from notifyworker import store
from notifyworker.backoff import Backoff
from notifyworker.coordination import Demand, RunningJobs
from notifyworker.db import Database
from notifyworker.errors import ConnectionLost, DatabaseError
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


def now() -> datetime:
    return datetime.now(UTC)


class Recorder:
    def __init__(
        self,
        db: Database,
        worker_id: WorkerId,
        running: RunningJobs,
        retry: RetryPolicy,
        demand: Demand,
    ) -> None:
        self._db = db
        # Told when a retry this worker scheduled falls due, so it claims it then.
        self._demand = demand
        self._worker_id = worker_id
        self._retry = retry
        self._running = running
        self._starts: dict[JobId, StartMark] = {}
        self._finishes: list[FinishMark] = []
        self._pending = trio.Event()
        self._flushed = trio.Event()
        # One flush at a time, so a job's start mark never lands after its outcome.
        self._writing = trio.Lock()

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

    @property
    def backlog(self) -> int:
        return len(self._starts) + len(self._finishes)

    async def below_limit(self) -> None:
        """Wait until the backlog is small enough to take more work."""
        while self.backlog >= BACKLOG_LIMIT:
            await self._flushed.wait()

    async def release_lost_claims(self, held: set[JobId]) -> int:
        """Requeue this worker's `queued` jobs that it does not know about.

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
            await self.flush()

    async def flush(self) -> None:
        """Write every pending mark (retrying through an outage), in batches."""
        async with self._writing:
            await self._flush_pending()

    async def _flush_pending(self) -> None:
        while self.backlog:
            self._pending = trio.Event()
            starts = list(self._starts.values())[:MAX_BATCH]
            for mark in starts:
                del self._starts[mark.job_id]
            finishes = self._finishes[:MAX_BATCH]
            del self._finishes[:MAX_BATCH]
            flushed = await self._write(starts, finishes)
            self._flushed.set()
            self._flushed = trio.Event()
            for seconds in flushed.retries_in:
                self._demand.due_in(seconds)
            for job_id in flushed.refused:
                # Cancelled, or rescued by a sweeper while this worker ran it (its
                # heartbeat had lapsed): the verdict in the table stands, so stop
                # the handler.
                self._running.cancel(
                    job_id, "no longer this worker's: cancelled or rescued meanwhile"
                )

    async def _write(self, starts: list[StartMark], finishes: list[FinishMark]) -> Flushed:
        backoff = Backoff()
        while True:
            try:
                return await self._db.run(
                    store.record_marks, self._worker_id, self._retry, starts, finishes
                )
            except ConnectionLost as exc:
                delay = backoff.next_delay()
                log.warning("recording outcomes failed (%s); retrying in %.2fs", exc, delay)
                await trio.sleep(delay)
            except DatabaseError as exc:
                if len(finishes) + len(starts) == 1 and finishes:
                    # The one outcome PostgreSQL refused (say, a result it cannot
                    # store): record the refusal instead, so the job still ends.
                    mark = finishes[0]
                    refused = Outcome("failed", error=f"could not record the outcome: {exc}")
                    finishes = [
                        FinishMark(mark.job_id, mark.claimed_at, refused, mark.started_at, mark.at)
                    ]
                    continue
                if len(starts) + len(finishes) == 1:
                    log.error("dropping a start mark PostgreSQL refused: %s", exc)
                    return Flushed()
                # Find the bad mark by writing them one by one.
                flushed = Flushed()
                for single in starts:
                    flushed |= await self._write([single], [])
                for one in finishes:
                    flushed |= await self._write([], [one])
                return flushed
