"""The worker's heartbeat: what tells the sweeper this worker is alive, and the fleet who is free.

Each beat publishes this worker's free slots and queues and reads the other
free workers back (one statement), which is what a new job's wake-up token
is decided over (`Demand.job_inserted`).
"""

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
from notifyworker.models import WorkerId
from notifyworker.ownership import Ownership

log = logging.getLogger(__name__)

# How long a worker back from the dead waits for its stale handlers to stop
# before it registers again (they were cancelled; a handler that ignores
# cancellation must not keep the worker out of the fleet for ever).
STALE_WAIT = 5.0


async def register(
    db: Database, worker_id: WorkerId, queues: tuple[str, ...] | None = None
) -> None:
    await db.run(store.register_worker, worker_id, socket.gethostname(), os.getpid(), queues)


async def beat_forever(
    db: Database,
    worker_id: WorkerId,
    interval: float,
    dead_after: float,
    ownership: Ownership,
    demand: Demand,
) -> NoReturn:
    """Beat every `interval`, publishing the free slots and reading the fleet; re-register if dead.

    Each beat also has every held attempt checked against the table, so a
    cancel notification that was lost costs at most one beat. Being declared
    dead (a long freeze or outage) already cost this worker its jobs, which
    were rescued: their stale handlers are stopped first, and only then does
    the worker register again and claim (the claim refuses an unregistered
    worker), so a job's new attempt never runs beside its stale one here.
    """
    retrying = Retrying("heartbeat")
    while True:
        await anyio.sleep(interval)
        try:
            free = demand.published_free
            beat = await db.run(store.heartbeat, worker_id, free, demand.queues, dead_after)
            if not beat.alive:
                log.error("worker %s was declared dead by a sweeper; registering again", worker_id)
                demand.fleet_lost()
                stale = await ownership.stop_stale(STALE_WAIT)
                if stale:
                    log.warning("stopped %d stale job(s) another worker may now run", stale)
                await register(db, worker_id, demand.queues)
                demand.work_arrived()
                continue
            demand.fleet_seen(beat.wakeable, free)
            ownership.ask_all()
        except Exception as exc:  # noqa: BLE001 - the heartbeat outlives every failure
            await retrying.failed(exc)
            continue
        retrying.succeeded()


async def pass_wakes_on(db: Database, demand: Demand) -> NoReturn:
    """Wake the whole fleet whenever a new job's token designated this worker while it was full.

    Tokens that come while one wake is sent fold into the next one. A wake
    that fails to send is not retried: the others' poll finds the job.
    """
    while True:
        await demand.wakes_to_pass()
        try:
            await db.run(store.wake_fleet)
        except Exception as exc:  # noqa: BLE001 - the next poll covers a lost wake
            log.warning("could not pass a wake-up on to the fleet: %s", exc)
