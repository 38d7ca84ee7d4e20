"""The fixed-interval limiter: starts spaced at least 1/rate apart.

Not a token bucket: a bucket saves up capacity while idle and spends it in a
burst, which is exactly what a database that hosts the queue cannot absorb.
Starts are released one at a time, in ticket order (the claim order, so the
oldest job starts first), each at `max(previous start + 1/rate, now)`:

- deadlines are absolute on trio's clock, so waiting never drifts;
- the next slot counts from when the previous start really happened, so a
  late wake-up (a busy event loop) delays later starts instead of letting
  them catch up in a burst;
- a slot in the past is never handed out, so idling builds up no credit.
"""

from __future__ import annotations

import math

import trio

# The ticket of a job that needs no pacing (the rate was 0 when it was claimed).
NO_TICKET = 0


class FixedIntervalLimiter:
    """Shared by every consumer of a process; the rate may change while running."""

    def __init__(self, rate: float) -> None:
        self._next_slot = -math.inf
        self._issued = 0
        self._serving = 1
        self._turns: dict[int, trio.Event] = {}
        self._abandoned: set[int] = set()
        self.rate = rate

    @property
    def rate(self) -> float:
        return self._rate

    @rate.setter
    def rate(self, rate: float) -> None:
        if rate < 0 or math.isnan(rate):
            raise ValueError(f"rate must be 0 (unlimited) or positive, not {rate}")
        self._rate = rate
        self._interval = 1.0 / rate if rate else 0.0

    def ticket(self) -> int:
        """A place in the start order; every ticket must be waited for or abandoned."""
        if not self._interval:
            return NO_TICKET
        self._issued += 1
        return self._issued

    async def wait(self, ticket: int | None = None) -> None:
        """Return at this ticket's start slot (a fresh ticket when none is given).

        Cancelled while waiting, the ticket is given up: a gap, never a burst.
        """
        if ticket is None:
            ticket = self.ticket()
        if ticket == NO_TICKET:
            await trio.lowlevel.checkpoint()
            return
        try:
            while self._serving < ticket:
                await self._turns.setdefault(ticket, trio.Event()).wait()
            slot = max(self._next_slot, trio.current_time())
            await trio.sleep_until(slot)
            self._next_slot = max(slot, trio.current_time()) + self._interval
        finally:
            self.abandon(ticket)

    def abandon(self, ticket: int) -> None:
        """Give up a ticket (its job will not start); also how a served ticket is retired."""
        if ticket == NO_TICKET:
            return
        self._turns.pop(ticket, None)
        if ticket != self._serving:
            self._abandoned.add(ticket)
            return
        self._serving += 1
        while self._serving in self._abandoned:
            self._abandoned.discard(self._serving)
            self._serving += 1
        turn = self._turns.pop(self._serving, None)
        if turn is not None:
            turn.set()
