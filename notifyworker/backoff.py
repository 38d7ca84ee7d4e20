"""Exponential backoff for the loops that must outlive any failure.

A background task (listener, claimer, recorder, sweeper, heartbeat, …) never
dies of a failed unit of work: a lost connection, a statement PostgreSQL
cancelled, or a row it cannot make sense of is logged as one line, the loop
pauses and tries again, and `Retrying` remembers since when it has been
failing, so readiness can say so instead of the worker quietly doing nothing.
"""

from __future__ import annotations

import logging

import anyio

from notifyworker.errors import DatabaseError

log = logging.getLogger(__name__)

# First retry comes fast (a killed backend reconnects at once); later ones
# back off so an outage is not met with a connection storm.
FIRST_DELAY = 0.05
MAX_DELAY = 5.0


class Backoff:
    def __init__(self, first: float = FIRST_DELAY, cap: float = MAX_DELAY) -> None:
        self._first = first
        self._cap = cap
        self.attempt = 0

    def next_delay(self) -> float:
        delay = min(self._cap, self._first * 2.0**self.attempt)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0


class Retrying:
    """One background loop's failures: a line each, growing pauses, and since when."""

    def __init__(self, what: str, first: float = FIRST_DELAY, cap: float = MAX_DELAY) -> None:
        self.what = what
        self._backoff = Backoff(first, cap)
        # When the current run of failures began (the event loop's clock); None while all is well.
        self.failing_since: float | None = None
        self.last_error = ""

    @property
    def attempt(self) -> int:
        return self._backoff.attempt

    async def failed(self, exc: Exception) -> None:
        """Log the failure and pause before the next try.

        A database error is expected weather (one line); anything else is a
        bug or a value nobody planned for, logged with its traceback, and
        still never allowed to stop the loop.
        """
        if self.failing_since is None:
            self.failing_since = anyio.current_time()
        self.last_error = str(exc) or type(exc).__name__
        delay = self._backoff.next_delay()
        if isinstance(exc, DatabaseError):
            log.warning("%s failed (%s); retrying in %.2fs", self.what, self.last_error, delay)
        else:
            log.error("%s failed unexpectedly; retrying in %.2fs", self.what, delay, exc_info=exc)
        await anyio.sleep(delay)

    def succeeded(self) -> None:
        self._backoff.reset()
        self.failing_since = None

    def failing_for(self, now: float) -> float:
        """Seconds this loop has been failing without a success (0 while it works)."""
        return 0.0 if self.failing_since is None else now - self.failing_since
