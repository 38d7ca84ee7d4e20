"""The sweeper: the authority on dead jobs, for every replica at once.

Deadlines are judged on PostgreSQL's clock, by one sweeper at a time (an
advisory lock), so replicas with skewed clocks never disagree about which
job is overdue; the owning worker learns of a cancellation through NOTIFY.
"""

from __future__ import annotations

import logging
from typing import NoReturn

import trio

from notifyworker import store
from notifyworker.coordination import Demand
from notifyworker.db import Database
from notifyworker.errors import ConnectionLost
from notifyworker.metrics import Metrics
from notifyworker.models import RetryPolicy

log = logging.getLogger(__name__)


async def sweep_forever(
    db: Database,
    interval: float,
    dead_worker_after: float,
    retry: RetryPolicy,
    metrics: Metrics,
    demand: Demand,
) -> NoReturn:
    """Sweep every `interval` on absolute deadlines; an outage only skips rounds.

    Retries it schedules wake this worker's claimer when they fall due (the
    others find them on their next poll).
    """
    next_round = trio.current_time()
    while True:
        try:
            report = await db.run(store.sweep, dead_worker_after, retry)
        except ConnectionLost as exc:
            log.warning("sweep skipped: %s", exc)
        else:
            metrics.swept(report)
            for seconds in report.retries_in:
                demand.due_in(seconds)
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
        next_round = max(next_round + interval, trio.current_time())
        await trio.sleep_until(next_round)
