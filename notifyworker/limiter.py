"""The fixed-interval limiter: starts spaced at least 1/rate apart.

Not a token bucket: a bucket saves up capacity while idle and spends it in a
burst, which is exactly what a database that hosts the queue cannot absorb.
Starts are granted in ticket order (the claim order, so the oldest job starts
first), at slots 1/rate apart:

- slots are absolute deadlines on trio's clock, so the rate never drifts;
- a grant up to CATCH_UP late keeps the schedule (the event loop's timer
  ticks in whole milliseconds, which at 2,000/s is two slots); later than
  that, the schedule re-anchors at now: after idling there is no credit;
- and whatever the lateness, no WINDOW holds more than rate x WINDOW + 1
  starts, counted from when each waiter really resumed (plus the grants not
  yet started), so a late batch cannot crowd a window.
"""

from __future__ import annotations

import math
import sys
from collections import deque

import trio

from notifyworker.models import rate_problem

# The ticket of a job that needs no pacing (the rate was 0 when it was claimed).
NO_TICKET = 0
# Lateness absorbed without moving the schedule (epoll's timer ticks in whole
# milliseconds, and a busy loop adds more); the window cap bounds the catch-up.
CATCH_UP = 0.010
# The sliding window in which starts may never exceed rate x WINDOW + 1.
WINDOW = 0.1
# One tick of the event loop's timer: how soon a blocked head of line looks again.
TICK = 0.001


class FixedIntervalLimiter:
    """Shared by every consumer of a process; the rate may change while running."""

    def __init__(self, rate: float) -> None:
        self._next_slot = -math.inf
        self._issued = 0
        self._serving = 1
        self._turns: dict[int, trio.Event] = {}
        self._abandoned: set[int] = set()
        self._recent: deque[float] = deque()
        self._granted: set[int] = set()
        self.rate = rate

    @property
    def rate(self) -> float:
        return self._rate

    @rate.setter
    def rate(self, rate: float) -> None:
        if problem := rate_problem(rate):
            raise ValueError(problem)
        self._rate = rate
        self._interval = 1.0 / rate if rate else 0.0
        # Unlimited means no window either (tickets drawn before the change drain at once).
        self._window_cap = math.floor(rate * WINDOW) + 1 if rate else sys.maxsize

    def ticket(self) -> int:
        """A place in the start order; every ticket must be waited for or abandoned."""
        if not self._interval:
            return NO_TICKET
        self._issued += 1
        return self._issued

    async def wait(self, ticket: int | None = None) -> None:
        """Return at this ticket's start slot (a fresh ticket when none is given).

        The waiter at the head of the line sleeps until the next slot, then grants
        every ticket whose slot has come in one go, so a high rate costs one
        wake-up per timer tick rather than one per start. Cancelled while waiting,
        the ticket is given up: a gap, never a burst.
        """
        if ticket is None:
            ticket = self.ticket()
        if ticket == NO_TICKET:
            await trio.lowlevel.checkpoint()
            return
        try:
            while ticket not in self._granted:
                next_slot = self._grant_due()
                if ticket in self._granted:
                    break
                if ticket == self._serving:
                    await trio.sleep_until(next_slot)
                else:
                    await self._turns.setdefault(ticket, trio.Event()).wait()
            await trio.lowlevel.checkpoint()
        except BaseException:
            self.abandon(ticket)
            raise
        # Started: counted in the window from when it really starts, not from its grant.
        self._granted.discard(ticket)
        self._recent.append(trio.current_time())
        while len(self._recent) > self._window_cap:
            self._recent.popleft()

    def _grant_due(self) -> float:
        """Grant, in order, the tickets whose slot has come; the next slot after them."""
        now = trio.current_time()
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
            self._next_slot = scheduled + self._interval
            self._granted.add(self._serving)
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
            self._granted.discard(ticket)  # its slot is spent: a gap, not a burst
        elif ticket >= self._serving:
            self._abandoned.add(ticket)
            if ticket == self._serving:
                self._grant_due()
