"""A watch on the event loop itself: says so when a handler blocks it.

Handlers share one thread. A handler that calls a blocking function
(`time.sleep`, `requests.get`, a sync database driver) or computes for
seconds stops every other part with it: the listener, the claimer, the
heartbeat, the probes. Python cannot pre-empt it, so the worker cannot stop
it either; what it can do is say so, at once and plainly, instead of going
quiet. A thread compares the time of the loop's last turn with the clock and
logs one line per stall, naming the jobs that were running, and one more when
the loop turns again.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import NoReturn

import anyio

from notifyworker.inflight import InFlight, Stage

log = logging.getLogger(__name__)

# How often the loop proves it turns; a stall is noticed within this much of
# BLOCKED_AFTER. Ten wake-ups a second cost nothing measurable.
TURN_INTERVAL = 0.1
# A loop that has not turned for this long is blocked: every part of the
# worker answers within milliseconds while the loop runs.
BLOCKED_AFTER = 1.0


class LoopWatch:
    """The loop's last turn, and a thread that notices when it stops turning."""

    def __init__(self, inflight: InFlight, blocked_after: float = BLOCKED_AFTER) -> None:
        self._inflight = inflight
        self._blocked_after = blocked_after
        self._last_turn = time.monotonic()
        # Stalls seen so far (for tests and metrics).
        self.stalls = 0

    async def run(self) -> NoReturn:
        """Turn with the loop until cancelled; the watching thread ends with it."""
        done = threading.Event()
        watcher = threading.Thread(
            target=self._watch, args=(done,), name="notifyworker-loopwatch", daemon=True
        )
        watcher.start()
        try:
            while True:
                self._last_turn = time.monotonic()
                await anyio.sleep(TURN_INTERVAL)
        finally:
            done.set()

    def _watch(self, done: threading.Event) -> None:
        stalled_since: float | None = None
        while not done.wait(TURN_INTERVAL):
            last_turn = self._last_turn
            silent = time.monotonic() - last_turn
            if silent > self._blocked_after and stalled_since != last_turn:
                stalled_since = last_turn
                self.stalls += 1
                log.warning(
                    "the event loop has been blocked for %.1fs: a handler is calling blocking "
                    "code without awaiting (%s); run it with `await anyio.to_thread.run_sync(…)`",
                    silent,
                    self._running(),
                )
            elif stalled_since is not None and stalled_since != last_turn:
                log.info("the event loop runs again")
                stalled_since = None

    def _running(self) -> str:
        """The running jobs, read from the blocked loop's thread (nothing changes them now)."""
        try:
            running = [h.job for h in self._inflight if h.stage is Stage.RUNNING]
        except RuntimeError:  # the loop turned again while we looked
            return "running: unknown"
        if not running:
            return "no job is running"
        shown = ", ".join(f"job {job.id} ({job.task})" for job in running[:5])
        more = f" and {len(running) - 5} more" if len(running) > 5 else ""
        return f"running: {shown}{more}"
