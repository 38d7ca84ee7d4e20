"""InFlight: every job attempt this worker holds, from its claim to its outcome.

One entry per claimed attempt, and one address for everything the worker
knows about it: its stage (claimed, pacing for a start slot, running), the
cancel scope that stops it there, its local deadline, and why it was
cancelled. A cancel, a refused mark and a lost-claim check are each one call.

Entries are per attempt, not per job: a worker that was declared dead while
frozen may come back and claim a job's next attempt while its stale one still
runs, and the two must never be confused (the claim stamp tells them apart).
All of it lives on the event loop thread, with no checkpoint between a read
and its write, so nothing races.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import datetime
from enum import Enum

import anyio

from notifyworker.models import ClaimedJob, JobId


class Stage(Enum):
    CLAIMED = "claimed"  # in the channel, or with a consumer that has not paced it yet
    PACING = "pacing"  # waiting for its start slot from the limiter
    RUNNING = "running"  # its handler runs


class Held:
    """One claimed attempt of a job; its consumer moves it along the stages."""

    __slots__ = ("deadline", "job", "reason", "scope", "stage", "start_at", "ticket")

    def __init__(self, job: ClaimedJob, ticket: int, start_at: float | None = None) -> None:
        self.job = job
        self.ticket = ticket
        # Its fleet start slot on the event loop's clock (None: the limiter's ticket paces it).
        self.start_at = start_at
        self.stage = Stage.CLAIMED
        self.scope: anyio.CancelScope | None = None
        self.deadline = math.inf
        # Why it was cancelled here, once it was; the first reason wins.
        self.reason: str | None = None

    def cancel(self, reason: str) -> None:
        """Stop the attempt wherever it is: a claimed one is dropped before it starts."""
        if self.reason is None:
            self.reason = reason
        if self.scope is not None:
            self.scope.cancel()


class InFlight:
    """The attempts this worker holds, bounded by its consumer slots."""

    def __init__(self, slots: int) -> None:
        self._slots = slots
        self._count = 0
        # Nearly always one attempt per job; a list for the rare stale one.
        self._by_job: dict[JobId, list[Held]] = {}
        # Set at the next release, for someone waiting for attempts to end.
        self._released: anyio.Event | None = None

    @property
    def free(self) -> int:
        return self._slots - self._count

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Held]:
        for attempts in list(self._by_job.values()):
            yield from list(attempts)

    def claimed(self, job: ClaimedJob, ticket: int, start_at: float | None = None) -> Held:
        held = Held(job, ticket, start_at)
        attempts = self._by_job.get(job.id)
        if attempts is None:
            self._by_job[job.id] = [held]
        else:
            attempts.append(held)
        self._count += 1
        return held

    def release(self, held: Held) -> str | None:
        """Forget the attempt (its consumer is done with it); why it was cancelled, if it was."""
        attempts = self._by_job.get(held.job.id)
        if attempts is not None and held in attempts:
            if len(attempts) == 1:
                del self._by_job[held.job.id]
            else:
                attempts.remove(held)
            self._count -= 1
            if self._released is not None:
                self._released.set()
                self._released = None
        held.scope = None
        return held.reason

    async def wait_released(self, attempts: list[Held]) -> None:
        """Until none of these attempts is held any more."""
        while any(self.find(h.job.id, h.job.claimed_at) is h for h in attempts):
            if self._released is None:
                self._released = anyio.Event()
            await self._released.wait()

    def attempts(self, job_id: JobId) -> list[Held]:
        return list(self._by_job.get(job_id, ()))

    def find(self, job_id: JobId, claimed_at: datetime) -> Held | None:
        for held in self._by_job.get(job_id, ()):
            if held.job.claimed_at == claimed_at:
                return held
        return None

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._by_job

    def job_ids(self) -> set[JobId]:
        return set(self._by_job)

    def overdue(self, now: float) -> list[Held]:
        return [held for held in self if held.stage is Stage.RUNNING and held.deadline <= now]

    def cancel_all(self, reason: str, *stages: Stage) -> int:
        """Cancel every attempt in one of `stages`; how many."""
        cancelled = 0
        for held in self:
            if held.stage in stages:
                held.cancel(reason)
                cancelled += 1
        return cancelled
