"""How long `notifyworker.cancel(id)` takes to stop a running handler: measured, not asserted."""

from __future__ import annotations

import functools
import operator
import time
from typing import Any

import anyio
import psycopg
import pytest

from notifyworker.tasks import Registry
from tests.helpers import Numbered, eventually, fast_settings, running_worker, scalar

JOBS = 50


async def test_cancel_reaches_running_handlers(
    database_url: str, conn: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    started: dict[int, anyio.Event] = {}
    stopped_at: dict[int, float] = {}
    registry = Registry()

    async def hang(payload: Numbered) -> None:
        started.setdefault(payload.n, anyio.Event()).set()
        try:
            await anyio.sleep_forever()
        finally:
            stopped_at[payload.n] = time.perf_counter()

    registry.add("hang", hang)
    delays: list[float] = []
    async with running_worker(fast_settings(database_url, concurrency=JOBS), registry):
        jobs = {
            n: scalar(
                conn,
                "INSERT INTO notifyworker.jobs (task, payload, timeout)"
                " VALUES ('hang', jsonb_build_object('n', %s::int), '1 hour') RETURNING id",
                n,
            )
            for n in range(JOBS)
        }
        for n in jobs:
            with anyio.fail_after(10):
                await started.setdefault(n, anyio.Event()).wait()
        for n, job in jobs.items():
            asked = time.perf_counter()
            assert scalar(conn, "SELECT notifyworker.cancel(%s)", job) == "cancelled"
            await eventually(functools.partial(operator.contains, stopped_at, n), within=5)
            delays.append(stopped_at[n] - asked)
    assert len(stopped_at) == JOBS
    delays.sort()
    with capsys.disabled():
        print(
            f"\ncancel latency over {JOBS} running jobs: p50 {delays[JOBS // 2] * 1000:.1f} ms,"
            f" max {delays[-1] * 1000:.1f} ms (from cancel()'s commit to the handler stopping)"
        )
