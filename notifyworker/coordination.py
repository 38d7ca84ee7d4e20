"""What publishers and consumers of one worker tell each other, without locks.

All of it lives on the trio thread: plain attributes, no checkpoint between a
read and its write, so there is nothing to race.
"""

from __future__ import annotations

import heapq
import math

import trio

from notifyworker.models import JobId


class Demand:
    """Free consumer slots, and whether the table may hold work for them.

    The claimer claims no more than `free` jobs, so a claimed job always has a
    consumer soon: nothing sits `queued` on a busy worker while another
    replica idles. A consumer that frees a slot wakes the claimer only when a
    backlog may exist, so an idle queue costs no queries.
    """

    def __init__(self, slots: int) -> None:
        self._slots = slots
        # Every job claimed and not yet given up by its consumer: after a claim
        # whose answer was lost, the table's other `queued` rows are orphans.
        self.held: set[JobId] = set()
        # True until a claim proves the table empty; start-up claims at once.
        self.more_waiting = True
        self._generation = 0
        self._wake = trio.Event()
        # When the retries this worker scheduled fall due (trio's clock), soonest first.
        self._due: list[float] = []

    def work_arrived(self, *, wake: bool = True) -> None:
        """A notification, a reconnect or a poll: the table may hold new jobs."""
        self._generation += 1
        self.more_waiting = True
        if wake:
            self._wake.set()

    def due_in(self, seconds: float) -> None:
        """A retry falls due in `seconds`: make sure a claim happens then."""
        # A few milliseconds late, so the claim's now() has surely passed run_at.
        at = trio.current_time() + max(seconds, 0.0) + 0.005
        if at < self.due:
            self._wake.set()  # the claimer re-reads `due` for its next wait
        heapq.heappush(self._due, at)

    @property
    def due(self) -> float:
        """When the soonest scheduled retry falls due; inf when none is."""
        return self._due[0] if self._due else math.inf

    def retries_due(self, now: float) -> bool:
        """Whether a retry has fallen due by `now`; forgets those that have."""
        fell_due = False
        while self._due and self._due[0] <= now:
            heapq.heappop(self._due)
            fell_due = True
        return fell_due

    @property
    def free(self) -> int:
        return self._slots - len(self.held)

    def released(self, job_id: JobId) -> None:
        self.held.discard(job_id)
        if self.more_waiting:
            self._wake.set()

    def claimed(self, asked: int, jobs: list[JobId], generation: int) -> None:
        """Book a claim; a short claim means empty, unless work arrived meanwhile."""
        self.held.update(jobs)
        if len(jobs) < asked and generation == self._generation:
            self.more_waiting = False

    @property
    def generation(self) -> int:
        return self._generation

    async def wait(self) -> None:
        """Until something worth a claim happens; the caller bounds it (poll)."""
        await self._wake.wait()
        self._wake = trio.Event()


class RunningJobs:
    """The cancel scope (and local deadline) of each job running here, so it can be cancelled."""

    def __init__(self) -> None:
        self._scopes: dict[JobId, trio.CancelScope] = {}
        self._deadlines: dict[JobId, float] = {}
        self._reasons: dict[JobId, str] = {}

    def add(self, job_id: JobId, scope: trio.CancelScope, deadline: float = math.inf) -> None:
        self._scopes[job_id] = scope
        self._deadlines[job_id] = deadline

    def remove(self, job_id: JobId) -> str | None:
        """Forget the job; the reason it was cancelled, if it was."""
        self._scopes.pop(job_id, None)
        self._deadlines.pop(job_id, None)
        return self._reasons.pop(job_id, None)

    def overdue(self, now: float) -> list[JobId]:
        return [job_id for job_id, deadline in self._deadlines.items() if deadline <= now]

    def cancel(self, job_id: JobId, reason: str) -> bool:
        scope = self._scopes.get(job_id)
        if scope is None:
            return False
        self._reasons.setdefault(job_id, reason)
        scope.cancel()
        return True

    def cancel_all(self, reason: str) -> int:
        for job_id in list(self._scopes):
            self.cancel(job_id, reason)
        return len(self._scopes)


class EarlyCancels:
    """Jobs cancelled in the table before any handler here started them.

    A cancellation is broadcast to every worker; the one holding the job in
    its channel or limiter queue must not start it. Bounded: the ids of jobs
    other workers hold pass through and are forgotten, oldest first.
    """

    LIMIT = 10_000

    def __init__(self) -> None:
        self._ids: dict[JobId, None] = {}

    def add(self, job_id: JobId) -> None:
        self._ids[job_id] = None
        if len(self._ids) > self.LIMIT:
            del self._ids[next(iter(self._ids))]

    def take(self, job_id: JobId) -> bool:
        """Whether the job was cancelled; forgets it either way."""
        if job_id in self._ids:
            del self._ids[job_id]
            return True
        return False
