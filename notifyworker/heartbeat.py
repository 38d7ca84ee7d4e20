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
from notifyworker.models import WorkerId

log = logging.getLogger(__name__)


async def register(db: Database, worker_id: WorkerId) -> None:
    await db.run(store.register_worker, worker_id, socket.gethostname(), os.getpid())


async def beat_forever(db: Database, worker_id: WorkerId, interval: float) -> NoReturn:
    """Beat every `interval`; re-register if a sweeper declared this worker dead.

    Being declared dead (after a long outage, say) already cost this worker its
    jobs, which were rescued; re-registering lets it go on with new ones, and
    the start/finish guards keep it from touching the rescued ones.
    """
    while True:
        await trio.sleep(interval)
        try:
            if not await db.run(store.heartbeat, worker_id):
                log.error("worker %s was declared dead by a sweeper; registering again", worker_id)
                await register(db, worker_id)
        except ConnectionLost as exc:
            log.warning("heartbeat failed: %s", exc)
