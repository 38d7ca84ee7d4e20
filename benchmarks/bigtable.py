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


# -- claim_v1 (issue 11): 10 queues, 100 keys, every key in every queue -------

FILL_DONE_QUEUES = (
    "INSERT INTO notifyworker.jobs"
    " (task, status, worker_id, started_at, finished_at, queue, limit_key)"
    " SELECT 'bench', 'done', 'old', now(), now(), 'q' || (n %% 10), 'k' || (n / 10 %% 100)"
    " FROM generate_series(1, %s) AS n"
)
FILL_WAITING_QUEUES = (
    "INSERT INTO notifyworker.jobs (task, payload, queue, limit_key)"
    " SELECT 'bench', jsonb_build_object('seq', n), 'q' || (n %% 10), 'k' || (n / 10 %% 100)"
    " FROM generate_series(1, %s) AS n"
)
# Every limit set, none binding: the claim takes the row lock and counts what is held.
LIMITS = (
    "INSERT INTO notifyworker.queues (name, rate, concurrency, key_rate, key_concurrency)"
    " SELECT 'q' || n, 100000, 100000, 100000, 100000 FROM generate_series(0, 9) AS n"
)
CLAIM_V1 = "SELECT * FROM notifyworker.claim_v1('bench', NULL, %s, 1048576, 0.1)"
PUT_BACK = (
    "UPDATE notifyworker.jobs SET status = 'new', queued_at = NULL, worker_id = NULL"
    " WHERE status = 'queued'"
)
NO_LIMITS = "no queue settings"


def claim_v1_latencies(dsn: str, done: int, waiting: int, claims: int) -> dict[str, list[float]]:
    """Milliseconds per claim_v1 (round trip, rows fetched) from one session, as a
    worker's: of 10 and of 100 jobs, with no queue settings and with every limit set
    but none binding. The variants take turns in blocks; each block's jobs go back
    after it, so every block sees `waiting` jobs."""
    variants = [
        (f"claim_v1 of {wanted}, {way}", wanted, way)
        for wanted in (10, 100)
        for way in (NO_LIMITS, "every fleet limit set, none binding")
    ]
    timings: dict[str, list[float]] = {label: [] for label, _, _ in variants}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE notifyworker.jobs, notifyworker.queues, notifyworker.queue_keys")
        conn.execute(FILL_DONE_QUEUES, (done,))
        conn.execute(FILL_WAITING_QUEUES, (waiting,))
        conn.execute("VACUUM ANALYZE notifyworker.jobs")
        conn.execute(
            "INSERT INTO notifyworker.workers (id, host, pid) VALUES ('bench', 'bench', 0)"
            " ON CONFLICT (id) DO NOTHING"
        )
        conn.execute("SET synchronous_commit = off")  # as the worker's claim session
        blocks = 4
        for block in range(blocks):
            shift = block % len(variants)
            for label, wanted, way in variants[shift:] + variants[:shift]:
                conn.execute("DELETE FROM notifyworker.queues")
                if way != NO_LIMITS:
                    conn.execute(LIMITS)
                conn.execute(CLAIM_V1, (1,), prepare=True).fetchall()  # prepared, warm
                for _ in range(max(1, claims // blocks)):
                    began = time.perf_counter()
                    rows = conn.execute(CLAIM_V1, (wanted,), prepare=True).fetchall()
                    timings[label].append((time.perf_counter() - began) * 1000)
                    got = sum(1 for row in rows if row[0] is not None)
                    if got != wanted:
                        raise RuntimeError(f"{label}: {got} jobs claimed of {wanted}")
                conn.execute(PUT_BACK)
    return timings
