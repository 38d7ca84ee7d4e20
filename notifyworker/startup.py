"""Joining the fleet and leaving it: the start-up wait and the sign-off.

A worker may start before its database or before the migration Job has
brought the schema up to date (a rolling deploy, a compose file): it waits
for both, saying on /readyz what it waits for, instead of crashing in a
loop. It leaves with nothing lost: unstarted jobs go back to `new`, and a
worker that could not record every outcome leaves its row for the sweeper.
"""

from __future__ import annotations

import logging
import math

import anyio

from notifyworker import schema, store
from notifyworker.backoff import Backoff
from notifyworker.db import Database
from notifyworker.errors import (
    AccessDenied,
    ConnectionLost,
    DatabaseError,
    SchemaMissing,
    SchemaOutdated,
)
from notifyworker.health import Readiness
from notifyworker.heartbeat import register
from notifyworker.models import WorkerId

log = logging.getLogger(__name__)

# The first wait is half a second: a database that is starting usually is
# up by then, and a worker that waits quietly is easy to read in the logs.
FIRST_WAIT = 0.5


async def join(
    db: Database,
    worker_id: WorkerId,
    patience: float,
    stop_requested: anyio.Event,
    readiness: Readiness,
) -> bool:
    """Open the pool, wait for the schema, register; False if stopped meanwhile.

    A database that is down or still starting, or a schema not migrated yet,
    is waited for (a log line per attempt) up to `patience` seconds (0: for
    ever). A server that refuses this URL is a mistake, reported at once.
    """
    backoff = Backoff(first=FIRST_WAIT)
    waiting_for = "the database"
    with anyio.move_on_after(patience if patience > 0 else math.inf):
        while True:
            try:
                await db.open()
                pending = await db.run(schema.pending_migrations)
                if not pending:
                    await register(db, worker_id)
                    readiness.phase = "starting"
                    return True
                waiting_for = (
                    f"the schema is not up to date ({len(pending)} migration(s) pending): "
                    "waiting for `notifyworker migrate`"
                )
            except AccessDenied:
                raise
            except SchemaMissing:
                waiting_for = "no notifyworker schema: waiting for `notifyworker migrate`"
            except ConnectionLost as exc:
                waiting_for = f"database not reachable: {exc}"
            readiness.phase = f"starting: {waiting_for}"
            delay = backoff.next_delay()
            log.warning("%s (attempt %d); retrying in %.1fs", waiting_for, backoff.attempt, delay)
            with anyio.move_on_after(delay):
                await stop_requested.wait()
            if stop_requested.is_set():
                return False
    if "migrate" in waiting_for:
        raise SchemaOutdated(
            f"{waiting_for.split(':')[0]} after {patience:g}s: run `notifyworker migrate`"
        )
    raise ConnectionLost(
        f"gave up after {patience:g}s (NOTIFYWORKER_STARTUP_TIMEOUT): {waiting_for}"
    )


async def sign_off(db: Database, worker_id: WorkerId) -> None:
    """Hand back unstarted jobs and leave the registry (or leave the rest to the sweeper)."""
    try:
        requeued = await db.run(store.requeue_unstarted, worker_id)
        left_jobs = await db.run(store.unregister_worker, worker_id)
    except DatabaseError as exc:
        # Nothing is lost: this worker's row stops heart-beating, and the
        # sweeper of another replica (or of the next start) rescues its jobs.
        log.warning("could not sign off (%s); the sweeper will rescue this worker's jobs", exc)
        return
    if left_jobs:
        # Stopped without recording every outcome (it crashed out, or the
        # database would not take them): the row stays, marked dead, so the
        # next sweep of any replica rescues those jobs at once.
        log.warning("worker %s stopped with jobs unfinished; left for the sweeper", worker_id)
    else:
        log.info("worker %s stopped; %d unstarted job(s) handed back", worker_id, requeued)
