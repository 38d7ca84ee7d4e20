"""The fixed-interval limiter: starts spaced at least 1/rate apart.

Not a token bucket: a bucket saves up capacity while idle and spends it in a
burst, which is exactly what a database that hosts the queue cannot absorb.
Starts are granted in ticket order (the claim order, so the oldest job starts
first), at slots 1/rate apart:

- slots are absolute deadlines on the event loop's clock, so the rate never drifts;
- a grant up to CATCH_UP late keeps the schedule (the event loop's timer
  ticks in whole milliseconds, which at 2,000/s is two slots); later than
  that, the schedule re-anchors at now: after idling there is no credit;
- whatever the lateness, no WINDOW holds more than rate x WINDOW + 1
  starts, counted from when each waiter really resumed (plus the grants not
  yet started), so a late batch cannot crowd a window;
- a rate change re-plans at once: the next slot becomes the last grant's slot
  plus the new interval (now, if that is past), and the head of the line wakes
  to follow it, so jobs claimed at 0.001/s do not wait 1,000 s after a reset.
"""

from __future__ import annotations

import math
import sys
from collections import deque

import anyio
import anyio.lowlevel

from notifyworker.models import MAX_RATE, rate_problem

# The ticket of a job that needs no pacing (the rate was 0 when it was claimed).
NO_TICKET = 0
# Lateness absorbed without moving the schedule (epoll's timer ticks in whole
# milliseconds, and a busy loop adds more); the window cap bounds the catch-up.
CATCH_UP = 0.010
# The sliding window in which starts may never exceed rate x WINDOW + 1.
WINDOW = 0.1
# One tick of the event loop's timer: how soon a blocked head of line looks again.
TICK = 0.001
# Starts remembered for the window: no rate the rule allows has a larger cap.
MAX_WINDOW_CAP = math.floor(MAX_RATE * WINDOW) + 1


class FixedIntervalLimiter:
    """Shared by every consumer of a process; the rate may change while running."""

    def __init__(self, rate: float) -> None:
        self._next_slot = -math.inf
        self._last_slot = -math.inf  # the slot of the last grant: where a re-plan starts
        self._replanned = anyio.Event()  # set (and replaced) when the rate changes
        self._rate = math.nan  # no rate yet: the first one is a change like any other
        self._issued = 0
        self._serving = 1
        self._turns: dict[int, anyio.Event] = {}
        self._abandoned: set[int] = set()
        self._recent: deque[float] = deque()
        self._granted: dict[int, float] = {}  # granted, not yet started: their slots
        self.rate = rate

    @property
    def rate(self) -> float:
        return self._rate

    @rate.setter
    def rate(self, rate: float) -> None:
        if problem := rate_problem(rate):
            raise ValueError(problem)
        if rate == self._rate:
            return  # the same rate keeps its schedule: absolute slots never drift
        self._rate = rate
        self._interval = 1.0 / rate if rate else 0.0
        # Unlimited means no window either (tickets drawn before the change drain at once).
        self._window_cap = math.floor(rate * WINDOW) + 1 if rate else sys.maxsize
        # Re-plan: a slot already past is re-anchored at now by the next look.
        self._next_slot = self._last_slot + self._interval
        self._replanned.set()  # the head of the line, asleep until the old slot, looks again
        self._replanned = anyio.Event()

    def ticket(self) -> int:
        """A place in the start order; every ticket must be waited for or abandoned."""
        if not self._interval:
            return NO_TICKET
        self._issued += 1
        return self._issued

    async def wait(self, ticket: int | None = None) -> float:
        """Return at this ticket's start slot (a fresh ticket when none is given).

        Returns the slot granted on the schedule (now, for an unpaced start).

        The waiter at the head of the line sleeps until the next slot, or until
        the rate changes, then grants every ticket whose slot has come in one go,
        so a high rate costs one wake-up per timer tick rather than one per
        start. Cancelled while waiting, the ticket is given up: a gap, never a burst.
        """
        if ticket is None:
            ticket = self.ticket()
        if ticket == NO_TICKET:
            await anyio.lowlevel.checkpoint()
            now = anyio.current_time()
            self._started(now)  # unpaced, but in the window a later rate will see
            return now
        try:
            while ticket not in self._granted:
                next_slot = self._grant_due()
                if ticket in self._granted:
                    break
                if ticket == self._serving:
                    replanned = self._replanned
                    with anyio.CancelScope(deadline=next_slot):
                        await replanned.wait()
                else:
                    await self._turns.setdefault(ticket, anyio.Event()).wait()
            await anyio.lowlevel.checkpoint()
        except BaseException:
            self.abandon(ticket)
            raise
        # Started: counted in the window from when it really starts, not from its grant.
        slot = self._granted.pop(ticket)
        self._started(anyio.current_time())
        return slot

    def _started(self, now: float) -> None:
        """Remember a start for the window, forgetting those no window can see.

        Kept by age (and never more than the largest cap), not by the current
        cap: unpaced starts count too, made under no cap, and a rate set
        after them must still see every start of the last WINDOW.
        """
        recent = self._recent
        recent.append(now)
        horizon = now - WINDOW
        while recent[0] <= horizon or len(recent) > MAX_WINDOW_CAP:
            recent.popleft()

    def _grant_due(self) -> float:
        """Grant, in order, the tickets whose slot has come; the next slot after them."""
        now = anyio.current_time()
        while self._serving <= self._issued:
            if self._serving in self._abandoned:
                self._abandoned.discard(self._serving)
                self._serving += 1
                continue
            if self._next_slot < now - CATCH_UP:
                self._next_slot = now  # idle or badly late: re-anchor, no credit
            scheduled = slot = self._next_slot
            # Room in the window: starts already made plus grants not yet started.
            room = self._window_cap - len(self._granted)
            if room <= 0:
                slot = max(slot, now + TICK)  # look again once some grants have started
            elif len(self._recent) >= room:
                slot = max(slot, self._recent[-room] + WINDOW)
            if slot > now:
                head = self._turns.pop(self._serving, None)
                if head is not None:
                    head.set()  # the new head of the line takes over the sleeping
                return slot
            # The window cap delays a grant but not the schedule behind it.
            self._last_slot = scheduled
            self._next_slot = scheduled + self._interval
            self._granted[self._serving] = scheduled
            turn = self._turns.pop(self._serving, None)
            if turn is not None:
                turn.set()
            self._serving += 1
        return math.inf

    def abandon(self, ticket: int) -> None:
        """Give up a ticket whose job will not start."""
        if ticket == NO_TICKET:
            return
        self._turns.pop(ticket, None)
        if ticket in self._granted:
            del self._granted[ticket]  # its slot is spent: a gap, not a burst
        elif ticket >= self._serving:
            self._abandoned.add(ticket)
            if ticket == self._serving:
                self._grant_due()
