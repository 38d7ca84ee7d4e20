"""The claimer: takes due jobs for the consumers, never more than their free slots.

The claim runs on the event loop (no thread hop) on its own connection,
through libpq's non-blocking API (`db.DirectStatement`). A claim that failed
may still have committed with its answer lost; and every `reconcile_interval`
anyway, the claimer puts back to `new` the jobs the table says this worker
holds but it does not know about, so no job sits `queued` on a live worker.
"""

from __future__ import annotations

import logging
from typing import NoReturn

import anyio
import anyio.lowlevel

from notifyworker.backoff import Retrying
from notifyworker.db import DirectStatement, Row
from notifyworker.demand import Demand
from notifyworker.handover import Sender
from notifyworker.inflight import Held, InFlight
from notifyworker.limiter import NO_TICKET, FixedIntervalLimiter
from notifyworker.models import ClaimedJob, JobId, WorkerId
from notifyworker.recorder import Recorder

log = logging.getLogger(__name__)


# How far ahead a claim may take start slots of a queue's fleet rate: far
# enough that one claim serves a tenth of a second of starts, near enough that
# a worker that dies holding them leaves only that gap in the fleet's pace.
PACE_AHEAD = 0.1
# A claim that left room it knows more jobs could fill says so with this
# (claim_again_in): the claimer claims again at once, not on a timer.
CLAIM_AGAIN_NOW = 0.001


def claimed_jobs(rows: list[Row]) -> tuple[list[ClaimedJob], float | None]:
    """Rows the `claim` statement returned, oldest first; and when to claim again.

    A row without a job says, after a limit held jobs back, in how many
    seconds a claim may find more (None: when work arrives, as ever).
    """
    jobs: list[ClaimedJob] = []
    again: float | None = None
    for row in rows:
        if row["id"] is None:
            again = row["claim_again_in"]
            continue
        jobs.append(
            ClaimedJob(
                id=JobId(row["id"]),
                task=row["task"],
                payload=row["payload"],
                timeout=row["timeout"],
                claimed_at=row["queued_at"],
                attempt=row["attempts"] + 1,
                max_attempts=row["max_attempts"],
                created_at=row["created_at"],
                stored_bytes=row["stored_bytes"],
                queue=row["queue"],
                start_in=row["start_in"],
            )
        )
    # Fleet slots in start order; the rest oldest first (ids grow with time).
    jobs.sort(key=lambda job: (job.start_in is None, job.start_in or 0.0, job.id))
    return jobs, again


class Claimer:
    """Claims whenever there is both room and maybe work; hands attempts to consumers."""

    def __init__(
        self,
        url: str,
        worker_id: WorkerId,
        demand: Demand,
        inflight: InFlight,
        recorder: Recorder,
        limiter: FixedIntervalLimiter,
        *,
        poll_interval: float,
        reconcile_interval: float,
        max_payload_bytes: int,
        serve: tuple[str, ...] | None = None,
    ) -> None:
        # A claim lost in a server crash only puts the job back to `new`, so
        # the claim connection commits asynchronously (see session_async_commit).
        self._claim = DirectStatement(url, "claim", setup=("session_async_commit",))
        self._worker_id = worker_id
        self._demand = demand
        self._inflight = inflight
        self._recorder = recorder
        self._limiter = limiter
        self._poll_interval = poll_interval
        self._reconcile_interval = reconcile_interval
        self._max_payload_bytes = max_payload_bytes
        self._serve = None if serve is None else list(serve)
        self._retrying = Retrying("claim")

    async def run(self, send: Sender[Held]) -> NoReturn:
        """Owns `send`: when this task is cancelled the channel closes, which is
        how the consumers learn that no more jobs will come."""
        demand = self._demand
        uncertain = False
        reconcile_at = anyio.current_time() + self._reconcile_interval
        async with send:
            try:
                while True:
                    if uncertain or anyio.current_time() >= reconcile_at:
                        uncertain = not await self._release_lost_claims(after_failure=uncertain)
                        reconcile_at = anyio.current_time() + self._reconcile_interval
                        continue
                    wake_at = min(
                        anyio.current_time() + self._poll_interval, demand.due, reconcile_at
                    )
                    with anyio.CancelScope(deadline=wake_at) as poll:
                        await demand.wait()
                    if demand.retries_due(anyio.current_time()):
                        demand.work_arrived(wake=False)  # a retry fell due: claim it now
                    elif poll.cancelled_caught:
                        demand.work_arrived(wake=False)  # the claim follows right here
                    while demand.free > 0 and demand.more_waiting:
                        await self._recorder.below_limit()
                        try:
                            self._claim_once(send, await self._run_claim())
                        except Exception as exc:  # noqa: BLE001 - the claimer outlives every failure
                            # Maybe committed with its answer lost, or claimed rows
                            # we could not take in: reconcile before claiming again.
                            uncertain = True
                            await self._retrying.failed(exc)
                            break
                        self._retrying.succeeded()
                        await anyio.lowlevel.checkpoint()
            finally:
                self._claim.close()

    async def _run_claim(self) -> tuple[int, int, float, list[Row]]:
        asked, generation = self._demand.free, self._demand.generation
        sent_at = anyio.current_time()  # where the claim's start_in count from
        rows = await self._claim.run(
            worker_id=self._worker_id,
            serve=self._serve,
            limit=asked,
            max_payload_bytes=self._max_payload_bytes,
            pace_ahead=PACE_AHEAD,
        )
        return asked, generation, sent_at, rows

    def _claim_once(self, send: Sender[Held], claim: tuple[int, int, float, list[Row]]) -> None:
        asked, generation, sent_at, rows = claim
        jobs, again = claimed_jobs(rows)
        self._demand.claimed(asked, len(jobs), generation)
        if again is not None and again <= CLAIM_AGAIN_NOW:
            self._demand.work_arrived(wake=False)  # room left that a second claim fills
        elif again is not None:
            self._demand.held_back(again)  # a limit held jobs back: look again then
        for job in jobs:
            # A fleet slot is the database's; the worker's own limiter paces
            # the rest, its tickets drawn here, in claim order, so the oldest
            # job starts first whichever consumer the loop runs first. The
            # channel is never full: claims fit the free slots.
            if job.start_in is None:
                held = self._inflight.claimed(job, self._limiter.ticket())
            else:
                held = self._inflight.claimed(job, NO_TICKET, sent_at + job.start_in)
            send.send_nowait(held)

    async def _release_lost_claims(self, *, after_failure: bool) -> bool:
        """Requeue this worker's `queued` jobs it does not know; False while that fails."""
        try:
            released = await self._recorder.release_lost_claims(self._inflight.job_ids())
        except Exception as exc:  # noqa: BLE001 - retried: the claimer outlives every failure
            await self._retrying.failed(exc)
            return False
        if released:
            log.warning(
                "%d job(s) claimed here but unknown to this worker went back to the queue", released
            )
        if released or after_failure:
            self._demand.work_arrived()  # claim again at once: jobs went back, or a claim failed
        return True
