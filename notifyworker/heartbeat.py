"""The worker's heartbeat: what tells the sweeper this worker is alive."""

from __future__ import annotations

import logging
import os
import socket
from typing import NoReturn

import anyio

from notifyworker import store
from notifyworker.backoff import Retrying
from notifyworker.db import Database
from notifyworker.demand import Demand
from notifyworker.limiter import FixedIntervalLimiter
from notifyworker.models import WorkerId, rate_problem
from notifyworker.ownership import Ownership

log = logging.getLogger(__name__)

# How long a worker back from the dead waits for its stale handlers to stop
# before it registers again (they were cancelled; a handler that ignores
# cancellation must not keep the worker out of the fleet for ever).
STALE_WAIT = 5.0


async def register(db: Database, worker_id: WorkerId) -> None:
    await db.run(store.register_worker, worker_id, socket.gethostname(), os.getpid())


async def beat_forever(
    db: Database,
    worker_id: WorkerId,
    interval: float,
    limiter: FixedIntervalLimiter,
    own_rate: float,
    ownership: Ownership,
    demand: Demand,
) -> NoReturn:
    """Beat every `interval`; follow the cluster-wide rate; re-register if declared dead.

    Each beat also has every held attempt checked against the table, so a
    cancel notification that was lost costs at most one beat. Being declared
    dead (a long freeze or outage) already cost this worker its jobs, which
    were rescued: their stale handlers are stopped first, and only then does
    the worker register again and claim (the claim refuses an unregistered
    worker), so a job's new attempt never runs beside its stale one here.
    """
    retrying = Retrying("heartbeat")
    refused: str | None = None  # the bad rate setting last warned about
    while True:
        await anyio.sleep(interval)
        try:
            beat = await db.run(store.heartbeat, worker_id)
            if not beat.alive:
                log.error("worker %s was declared dead by a sweeper; registering again", worker_id)
                stale = await ownership.stop_stale(STALE_WAIT)
                if stale:
                    log.warning("stopped %d stale job(s) another worker may now run", stale)
                await register(db, worker_id)
                demand.work_arrived()
                continue
            ownership.ask_all()
            refused = follow_rate(limiter, own_rate if beat.rate is None else beat.rate, refused)
        except Exception as exc:  # noqa: BLE001 - the heartbeat outlives every failure
            await retrying.failed(exc)
            continue
        retrying.succeeded()


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
