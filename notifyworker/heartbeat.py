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
from notifyworker.models import WorkerId

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
        rate = own_rate if beat.rate is None else beat.rate
        if rate != limiter.rate:
            log.info("rate changed: %g → %g jobs/s", limiter.rate, rate)
            limiter.rate = rate
