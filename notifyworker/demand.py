"""Demand: when the claimer should look at the table again, told without locks.

All of it lives on the event loop's thread: plain attributes, no checkpoint between a
read and its write, so there is nothing to race.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable

import anyio

from notifyworker import rendezvous
from notifyworker.inflight import InFlight


class Demand:
    """Free consumer slots, and whether the table may hold work for them.

    The claimer claims no more than `free` jobs, so a claimed job always has a
    consumer soon: nothing sits `queued` on a busy worker while another
    replica idles. A consumer that frees a slot wakes the claimer only when a
    backlog may exist, so an idle queue costs no queries.
    """

    def __init__(
        self,
        inflight: InFlight,
        worker_id: str = "",
        *,
        queues: tuple[str, ...] | None = None,
        fleet_ttl: float = math.inf,
    ) -> None:
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
        self.worker_id = worker_id
        # What this worker serves (None: every queue), as its heartbeat publishes it.
        self.queues = queues
        # The other workers a new job may wake (free, serving every queue) as of
        # this worker's last beat, and when that was; None: not known (yet).
        self._fleet: tuple[str, ...] | None = None
        self._fleet_at = -math.inf
        self._fleet_ttl = fleet_ttl
        # The free slots this worker's last beat published: what the others see.
        self._published = 0
        self._claiming = True
        self._pass_on = anyio.Event()
        self.claims = 0
        self.empty_claims = 0
        self.passed_on = 0

    def work_arrived(self, *, wake: bool = True) -> None:
        """A notification, a reconnect or a poll: the table may hold new jobs."""
        self._generation += 1
        self.more_waiting = True
        if wake:
            self._wake.set()

    def job_inserted(self, token: str) -> None:
        """An insert's notification: claim only if the token designates this worker.

        Another worker designated: only note that work may wait (a slot that
        frees claims it), and leave the claim to that one. Designated without
        a free slot: wake the whole fleet instead (`wakes_to_pass`), so a busy
        worker never sits on a job while others idle. A worker serving only
        some queues, or one that does not know the fleet, wakes as before.
        """
        chosen = self._designated(token)
        if chosen is not None and chosen != self.worker_id:
            self.more_waiting = True
            return
        self.work_arrived()
        if chosen is not None and not (self.free > 0 and self._claiming):
            self.passed_on += 1
            self._pass_on.set()

    def _designated(self, token: str) -> str | None:
        if self.queues is not None or self._fleet is None:
            return None
        if anyio.current_time() - self._fleet_at > self._fleet_ttl:
            return None  # the beats have failed for a while: this view is stale
        candidates: Iterable[str] = self._fleet
        if self._published > 0 or (self.free > 0 and self._claiming):
            candidates = (*self._fleet, self.worker_id)
        return rendezvous.designated(token, candidates)

    def fleet_seen(self, others: Iterable[str], published: int) -> None:
        """A beat: the other workers a new job may wake, and the free slots it published."""
        self._fleet = tuple(worker for worker in others if worker != self.worker_id)
        self._fleet_at = anyio.current_time()
        self._published = published

    def fleet_lost(self) -> None:
        """The view of the fleet is gone (declared dead): wake as before until a beat."""
        self._fleet = None

    @property
    def published_free(self) -> int:
        """The free slots to publish: none once this worker stopped claiming."""
        return self.free if self._claiming else 0

    def stop_claiming(self) -> None:
        """Shutdown: tokens that designate this worker are passed on from now on."""
        self._claiming = False

    async def wakes_to_pass(self) -> None:
        """Until a token designated this worker while it had no room (one wait, many tokens)."""
        await self._pass_on.wait()
        self._pass_on = anyio.Event()

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
        self.claims += 1
        if got == 0:
            self.empty_claims += 1
        if got < asked and generation == self._generation:
            self.more_waiting = False

    @property
    def generation(self) -> int:
        return self._generation

    async def wait(self) -> None:
        """Until something worth a claim happens; the caller bounds it (poll)."""
        await self._wake.wait()
        self._wake = anyio.Event()
