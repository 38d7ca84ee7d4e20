"""Tasks for the multi-process tests: each run writes one row to a ledger table.

Imported by worker processes through `notifyworker run --tasks tests.ledger_tasks`.
"""

from __future__ import annotations

import os
import threading

import anyio
import anyio.to_thread
import psycopg
from pydantic import BaseModel

from notifyworker.tasks import task

_local = threading.local()


class Entry(BaseModel):
    n: int
    seconds: float = 0.0


def _write(n: int) -> None:
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = _local.conn = psycopg.connect(os.environ["DATABASE_URL"], autocommit=True)
    try:
        conn.execute("INSERT INTO ledger (n, pid) VALUES (%s, %s)", (n, os.getpid()))
    except psycopg.OperationalError:
        # The server went away (a chaos test): the job fails and is retried,
        # and the next run here connects afresh.
        conn.close()
        raise


@task("ledger")
async def ledger(payload: Entry) -> None:
    await anyio.to_thread.run_sync(_write, payload.n)
    if payload.seconds:
        await anyio.sleep(payload.seconds)
