"""The fixed-interval limiter: starts spaced at least 1/rate apart.

Not a token bucket: a bucket saves up capacity while idle and spends it in a
burst, which is exactly what a database that hosts the queue cannot absorb.
Slots are absolute deadlines on trio's clock, so waiting never drifts, and a
slot in the past is never handed out, so idling never builds up credit.
"""

from __future__ import annotations

import math

import trio


class FixedIntervalLimiter:
    """Shared by every consumer of a process; the rate may change while running."""

    def __init__(self, rate: float) -> None:
        self._next_slot = -math.inf
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

    def reserve(self) -> float:
        """Reserve the next start slot (trio clock time); the caller sleeps until it.

        Reserving takes no checkpoint, so concurrent callers get distinct slots in
        arrival order. A caller cancelled before its slot leaves a gap, never a burst.
        """
        if not self._interval:
            return -math.inf
        slot = max(self._next_slot, trio.current_time())
        self._next_slot = slot + self._interval
        return slot

    async def wait(self) -> None:
        """Return at this caller's start slot (at once when unlimited)."""
        await trio.sleep_until(self.reserve())
