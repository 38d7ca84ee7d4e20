"""Demand: when the claimer should look at the table again, told without locks.

All of it lives on the event loop's thread: plain attributes, no checkpoint between a
read and its write, so there is nothing to race.
"""

from __future__ import annotations

import heapq
import math

import anyio

from notifyworker.inflight import InFlight


class Demand:
    """Free consumer slots, and whether the table may hold work for them.

    The claimer claims no more than `free` jobs, so a claimed job always has a
    consumer soon: nothing sits `queued` on a busy worker while another
    replica idles. A consumer that frees a slot wakes the claimer only when a
    backlog may exist, so an idle queue costs no queries.
    """

    def __init__(self, inflight: InFlight) -> None:
        # The attempts held: their count is what bounds the next claim.
        self._inflight = inflight
        # True until a claim proves the table empty; start-up claims at once.
        self.more_waiting = True
        self._generation = 0
        self._wake = anyio.Event()
        # When the retries this worker scheduled fall due (the event loop's clock), soonest first.
        self._due: list[float] = []
        # The last claim said a limit held jobs back (a queue's concurrency, a key's).
        self._held_back = False

    def work_arrived(self, *, wake: bool = True) -> None:
        """A notification, a reconnect or a poll: the table may hold new jobs."""
        self._generation += 1
        self.more_waiting = True
        if wake:
            self._wake.set()

    def due_in(self, seconds: float) -> None:
        """A retry falls due in `seconds`: make sure a claim happens then."""
        # A few milliseconds late, so the claim's now() has surely passed run_at.
        at = anyio.current_time() + max(seconds, 0.0) + 0.005
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
        return self._inflight.free

    def released(self) -> None:
        """A consumer gave up a slot: claim again if a backlog may exist."""
        if self.more_waiting:
            self._wake.set()

    def held_back(self, seconds: float) -> None:
        """The claim's limits held jobs back: claim in `seconds`, or once outcomes are written."""
        self._held_back = True
        self.due_in(seconds)

    def outcomes_recorded(self) -> None:
        """Outcomes reached the table: a place a limit held back may be free now.

        Not at the consumer's release: the limit counts the table, which
        still holds the job until its outcome is written.
        """
        if self._held_back:
            self._held_back = False
            self.work_arrived()

    def claimed(self, asked: int, got: int, generation: int) -> None:
        """Book a claim; a short claim means empty, unless work arrived meanwhile."""
        if got < asked and generation == self._generation:
            self.more_waiting = False

    @property
    def generation(self) -> int:
        return self._generation

    async def wait(self) -> None:
        """Until something worth a claim happens; the caller bounds it (poll)."""
        await self._wake.wait()
        self._wake = anyio.Event()
