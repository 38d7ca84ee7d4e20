"""The worker's heartbeat: what tells the sweeper this worker is alive."""

from __future__ import annotations

import logging
import os
import socket
from typing import NoReturn

import trio

from notifyworker import store
from notifyworker.db import Database
from notifyworker.errors import ConnectionLost
from notifyworker.limiter import FixedIntervalLimiter
from notifyworker.models import WorkerId, rate_problem

log = logging.getLogger(__name__)


async def register(db: Database, worker_id: WorkerId) -> None:
    await db.run(store.register_worker, worker_id, socket.gethostname(), os.getpid())


async def beat_forever(
    db: Database,
    worker_id: WorkerId,
    interval: float,
    limiter: FixedIntervalLimiter,
    own_rate: float,
) -> NoReturn:
    """Beat every `interval`; follow the cluster-wide rate; re-register if declared dead.

    Being declared dead (after a long outage, say) already cost this worker its
    jobs, which were rescued; re-registering lets it go on with new ones, and
    the mark guards keep it from touching the rescued ones.
    """
    refused: str | None = None  # the bad rate setting last warned about
    while True:
        await trio.sleep(interval)
        try:
            beat = await db.run(store.heartbeat, worker_id)
            if not beat.alive:
                log.error("worker %s was declared dead by a sweeper; registering again", worker_id)
                await register(db, worker_id)
                continue
        except ConnectionLost as exc:
            log.warning("heartbeat failed: %s", exc)
            continue
        refused = follow_rate(limiter, own_rate if beat.rate is None else beat.rate, refused)


def follow_rate(limiter: FixedIntervalLimiter, rate: float, refused: str | None) -> str | None:
    """Apply a rate read from the database, unless it breaks the rule; the one refused.

    The table is not ours alone (an old schema's CHECK, a superuser's UPDATE),
    and a worker must never die of what it reads there: a bad value is warned
    about once, and the worker keeps the rate it has.
    """
    if problem := rate_problem(rate):
        if repr(rate) != refused:  # repr: NaN equals no NaN, but 'nan' equals 'nan'
            log.warning(
                "ignoring the rate set in notifyworker.settings (%s); keeping %g jobs/s",
                problem,
                limiter.rate,
            )
        return repr(rate)
    if rate != limiter.rate:
        log.info("rate changed: %g → %g jobs/s", limiter.rate, rate)
        limiter.rate = rate
    return None
