"""Exponential backoff for reconnect loops: quick first retry, capped wait."""

from __future__ import annotations

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
