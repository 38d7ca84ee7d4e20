"""Enqueue from Python: the producer API against a plain INSERT on the same connection.

One autocommit connection, so one job per transaction is one statement either
way; both get their ids back (the INSERT with RETURNING). Each way runs on an
emptied table, after a warm-up (psycopg prepares a statement on its fifth use),
in an order that rotates between repetitions.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg
from psycopg.types.json import Jsonb
from pydantic import BaseModel

from notifyworker.producer import Job, enqueue, enqueue_many
from notifyworker.tasks import Registry

PLAIN_ONE = "INSERT INTO notifyworker.jobs (task, payload) VALUES ('bench', %s) RETURNING id"
PLAIN_MANY = (
    "INSERT INTO notifyworker.jobs (task, payload)"
    " SELECT 'bench', p FROM unnest(%s::jsonb[]) AS p RETURNING id"
)
BATCH = 1000
WARM_UP = 10


class Seq(BaseModel):
    seq: int


registry = Registry()


@registry.task("bench")
async def bench(payload: Seq) -> None:
    pass


# Each way to enqueue jobs seq..seq+n-1 on a connection: one per call, or n per call.
Way = Callable[[psycopg.Connection[tuple[object, ...]], range], None]


def plain_one(conn: psycopg.Connection[tuple[object, ...]], seqs: range) -> None:
    for seq in seqs:
        conn.execute(PLAIN_ONE, (Jsonb({"seq": seq}),)).fetchone()


def api_one(conn: psycopg.Connection[tuple[object, ...]], seqs: range) -> None:
    for seq in seqs:
        enqueue(conn, "bench", {"seq": seq})


def defer_one(conn: psycopg.Connection[tuple[object, ...]], seqs: range) -> None:
    for seq in seqs:
        bench.defer(conn, seq=seq)


def plain_many(conn: psycopg.Connection[tuple[object, ...]], seqs: range) -> None:
    conn.execute(PLAIN_MANY, ([Jsonb({"seq": s}) for s in seqs],)).fetchall()


def api_many(conn: psycopg.Connection[tuple[object, ...]], seqs: range) -> None:
    enqueue_many(conn, [Job("bench", {"seq": s}) for s in seqs])


def defer_many(conn: psycopg.Connection[tuple[object, ...]], seqs: range) -> None:
    enqueue_many(conn, [bench.job(seq=s) for s in seqs])


SINGLE: dict[str, Way] = {
    "plain INSERT": plain_one,
    "enqueue()": api_one,
    "Task.defer()": defer_one,
}
BULK: dict[str, Way] = {
    "plain INSERT": plain_many,
    "enqueue_many()": api_many,
    "Task.job() + enqueue_many()": defer_many,
}


def measure(dsn: str, single: int, bulk: int, reps: int) -> dict[str, dict[str, list[float]]]:
    """Jobs/s of each way, per shape ("single": one per call, "bulk": 1,000 per call)."""
    results: dict[str, dict[str, list[float]]] = {"single": {}, "bulk": {}}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for rep in range(reps):
            for shape, ways, count, step in (
                ("single", SINGLE, single, 1),
                ("bulk", BULK, bulk, BATCH),
            ):
                names = list(ways)
                shift = rep % len(names)
                for name in names[shift:] + names[:shift]:
                    rate = _timed(conn, ways[name], count, step)
                    results[shape].setdefault(name, []).append(rate)
    return results


def _timed(conn: psycopg.Connection[tuple[object, ...]], way: Way, count: int, step: int) -> float:
    conn.execute("TRUNCATE notifyworker.jobs")
    for _ in range(WARM_UP):
        way(conn, range(min(step, 10)))
    conn.execute("TRUNCATE notifyworker.jobs")
    began = time.perf_counter()
    for start in range(0, count, step):
        way(conn, range(start, min(count, start + step)))
    return count / (time.perf_counter() - began)
