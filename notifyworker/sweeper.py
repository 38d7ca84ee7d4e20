"""The sweeper: the authority on dead jobs, for every replica at once.

Deadlines are judged on PostgreSQL's clock, by one sweeper at a time (a row
lock only the worker role may take), so replicas with skewed clocks never
disagree about which job is overdue; the owning worker learns of a
cancellation through NOTIFY and checks it against the table. Every worker
also learns how long ago the fleet last swept, so a sweeper that cannot run
(its leader frozen, the table locked) shows in every worker's readiness.
"""

from __future__ import annotations

import logging
from typing import NoReturn

import anyio

from notifyworker import store
from notifyworker.backoff import Retrying
from notifyworker.db import Database
from notifyworker.demand import Demand
from notifyworker.metrics import Metrics
from notifyworker.models import RetryPolicy, SweepReport, WorkerId

log = logging.getLogger(__name__)

# Not ready when the fleet's sweeper (whichever replica leads) has not
# finished a round in this many sweep intervals (and never sooner than the
# database's own readiness bound): overdue and dead workers' jobs would wait unseen.
STALLED_AFTER_ROUNDS = 10


class Sweeper:
    def __init__(
        self,
        db: Database,
        worker_id: WorkerId,
        interval: float,
        dead_worker_after: float,
        retry: RetryPolicy,
        metrics: Metrics,
        demand: Demand,
    ) -> None:
        self._db = db
        self._worker_id = worker_id
        self.interval = interval
        self._dead_worker_after = dead_worker_after
        self._retry = retry
        self._metrics = metrics
        self._demand = demand
        self.retrying = Retrying("sweep", cap=interval)
        # Seconds since the fleet last swept, as of `seen_at` (the event loop's clock).
        self._age = 0.0
        self._seen_at = anyio.current_time()

    def last_sweep_age(self, now: float) -> float:
        """Seconds since any sweeper of the fleet finished a round, as far as we know."""
        return self._age + (now - self._seen_at)

    def stalled(self, now: float, within: float) -> str | None:
        """Why nobody may be sweeping: this sweeper fails, or the fleet has no round (readiness)."""
        failing = self.retrying.failing_for(now)
        if failing > within:
            return f"the sweeper has failed for {failing:.1f}s ({self.retrying.last_error})"
        age = self.last_sweep_age(now)
        if age > max(STALLED_AFTER_ROUNDS * self.interval, within):
            return f"no sweeper in the fleet has finished a round for {age:.1f}s"
        return None

    async def sweep_forever(self) -> NoReturn:
        """Sweep every `interval` on absolute deadlines; a failure only skips rounds.

        Retries it schedules wake this worker's claimer when they fall due (the
        others find them on their next poll).
        """
        next_round = anyio.current_time()
        while True:
            try:
                report = await self._db.run(
                    store.sweep, self._worker_id, self._dead_worker_after, self._retry
                )
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                await self.retrying.failed(exc)
            else:
                self.retrying.succeeded()
                self._seen(report)
            next_round = max(next_round + self.interval, anyio.current_time())
            await anyio.sleep_until(next_round)

    def _seen(self, report: SweepReport) -> None:
        self._age, self._seen_at = report.last_sweep_age, anyio.current_time()
        self._metrics.swept(report)
        for seconds in report.retries_in:
            self._demand.due_in(seconds)
        if report.acted:
            log.info(
                "sweeper: overdue jobs: %d retried, %d cancelled; %d dead worker(s): "
                "%d unstarted job(s) requeued, %d running retried, %d cancelled",
                report.overdue_retried,
                report.overdue_cancelled,
                report.dead_workers,
                report.rescued_requeued,
                report.rescued_retried,
                report.rescued_cancelled,
            )
