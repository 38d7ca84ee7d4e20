"""Schedules across worker processes: one job per tick, however many replicas fire it."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg

if TYPE_CHECKING:
    from benchmarks.run import Bench, Config

SCHEDULE = (
    "INSERT INTO notifyworker.schedules (name, cron, task, payload)"
    " VALUES ('bench_tick', '* * * * * *', 'bench', '{\"seq\": 0}')"
)
PER_TICK = (
    "SELECT object_id, count(*) FROM notifyworker.jobs"
    " WHERE object_id LIKE 'schedule:bench_tick@%' GROUP BY 1"
)


def one_job_per_tick(
    bench: Bench, config: Config, seconds: float, processes: int
) -> dict[str, Any]:
    """`processes` workers and a schedule every second for `seconds`: jobs, ticks, doubles."""
    bench.reset(config.system)
    workers: list[Any] = []
    try:
        # Started inside the try: a worker that fails to start leaves none running.
        workers.extend(bench.start_worker(config, tag=str(n))[0] for n in range(processes))
        with psycopg.connect(bench.dsn[config.system], autocommit=True) as conn:
            conn.execute(SCHEDULE)
            time.sleep(seconds)
            conn.execute("UPDATE notifyworker.schedules SET paused = true")
            time.sleep(1.5)  # a tick being fired as the pause lands still commits
            rows = conn.execute(PER_TICK).fetchall()
    finally:
        for n, worker in enumerate(workers):
            bench.stop_worker(config, worker, tag=str(n))
    ticks = sorted(datetime.fromisoformat(str(ref).rpartition("@")[2]) for ref, _ in rows)
    span = int((ticks[-1] - ticks[0]) / timedelta(seconds=1)) + 1 if ticks else 0
    return {
        "processes": processes,
        "seconds": seconds,
        "jobs": sum(int(count) for _, count in rows),
        "ticks": len(ticks),
        "doubles": sum(int(count) - 1 for _, count in rows if int(count) > 1),
        "missed": span - len(ticks),
    }
