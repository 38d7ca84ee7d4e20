"""Claim latency on a big table: many finished rows, many waiting ones."""

from __future__ import annotations

import time

import anyio
import psycopg

from notifyworker.db import DirectStatement

FILL_DONE = (
    "INSERT INTO notifyworker.jobs (task, status, worker_id, started_at, finished_at)"
    " SELECT 'bench', 'done', 'old', now(), now() FROM generate_series(1, %s)"
)
FILL_WAITING = (
    "INSERT INTO notifyworker.jobs (task, payload)"
    " SELECT 'bench', jsonb_build_object('seq', n) FROM generate_series(1, %s) AS n"
)


def claim_latencies(dsn: str, done: int, waiting: int, claims: int) -> list[float]:
    """Milliseconds per claim of 100, as the worker issues it (event loop, prepared)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE notifyworker.jobs")
        conn.execute(FILL_DONE, (done,))
        conn.execute(FILL_WAITING, (waiting,))
        conn.execute("VACUUM ANALYZE notifyworker.jobs")
        # The claim takes jobs only for a registered worker.
        conn.execute(
            "INSERT INTO notifyworker.workers (id, host, pid) VALUES ('bench', 'bench', 0)"
            " ON CONFLICT (id) DO NOTHING"
        )

    async def measure() -> list[float]:
        claim = DirectStatement(dsn, "claim", setup=("session_async_commit",))
        common = {"worker_id": "bench", "serve": None, "max_payload_bytes": 1_048_576}
        await claim.run(limit=1, pace_ahead=0.1, **common)  # connect and prepare
        timings = []
        for _ in range(claims):
            began = time.perf_counter()
            rows = await claim.run(limit=100, pace_ahead=0.1, **common)
            timings.append((time.perf_counter() - began) * 1000)
            assert len(rows) == 100
        claim.close()
        return timings

    return anyio.run(measure, backend="trio")
