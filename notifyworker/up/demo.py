"""The demo producer inside `up`: plain INSERTs at a steady pace.

Object ids cycle; every third job has no `seconds`, so it sleeps until the
sweeper cancels it at its timeout: the stuck job a newcomer watches die.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, NoReturn

import anyio

from notifyworker import admin
from notifyworker.db import Database
from notifyworker.errors import ConnectionLost

log = logging.getLogger(__name__)

# Object ids cycle through this many values, as an application's would repeat.
OBJECT_IDS = 10
# The sleeps of the jobs that do finish, in turn.
SLEEPS = (1.0, 0.5, 2.0)


def demo_payload(n: int) -> dict[str, Any]:
    """Job n's payload: every third one is stuck (no seconds)."""
    if n % 3 == 2:
        return {}
    return {"seconds": SLEEPS[n % len(SLEEPS)]}


async def produce_forever(db: Database, per_second: float) -> NoReturn:
    next_insert = anyio.current_time()
    for n in itertools.count():
        try:
            await db.run(admin.enqueue, "sleep", demo_payload(n), str(n % OBJECT_IDS + 1))
        except ConnectionLost as exc:
            log.warning("demo producer: insert failed: %s", exc)
        next_insert = max(next_insert + 1 / per_second, anyio.current_time())
        await anyio.sleep_until(next_insert)
    raise AssertionError("unreachable")
