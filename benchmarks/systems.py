"""One process of one system under test: a worker, a producer, or a bulk filler.

    python -m benchmarks.systems SYSTEM ROLE DSN OUT OPTIONS_JSON

SYSTEM is nw (notifyworker), pgq (PgQueuer 1.x, asyncpg) or procrastinate.
Every handler is a no-op that records `time.time()` first thing, keyed by the
job's sequence number; the records go to OUT (JSON) when the process ends.
A worker prints READY once it runs and stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import signal
import sys
import time
from datetime import timedelta
from typing import Any

import psycopg
from pydantic import BaseModel

STARTS: list[tuple[int, float]] = []


class Seq(BaseModel):
    seq: int


class Nap(BaseModel):
    seq: int
    ms: float = 50.0


def _record(seq: int) -> None:
    STARTS.append((seq, time.time()))


def _ready() -> None:
    print("READY", time.time(), flush=True)


def _dump(out: str, extra: dict[str, Any] | None = None) -> None:
    data = {"starts": STARTS, "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
    data.update(extra or {})
    with open(out, "w") as f:
        json.dump(data, f)


# -- notifyworker -----------------------------------------------------------


def nw_worker(dsn: str, out: str, opts: dict[str, Any]) -> None:
    import anyio

    from notifyworker.config import Settings
    from notifyworker.logs import configure
    from notifyworker.service import Worker, stop_on_signals
    from notifyworker.tasks import Registry

    registry = Registry()

    async def bench(payload: Seq) -> None:
        _record(payload.seq)

    async def bench_sleep(payload: Nap) -> None:
        _record(payload.seq)
        await anyio.sleep(payload.ms / 1000)

    registry.add("bench", bench)
    registry.add("bench_sleep", bench_sleep)  # a job that holds its place (the fleet section)
    configure("WARNING")
    settings = Settings(
        database_url=dsn,
        rate=opts.get("rate", 0),
        concurrency=opts.get("concurrency", 10),
        health_port=0,  # any free port: several workers may run at once (schedules)
        # Any other setting, by name: the fleet section's short dead_worker_after.
        **opts.get("settings", {}),
    )

    async def main() -> None:
        worker = Worker(settings, registry)
        async with anyio.create_task_group() as tasks:

            async def run(task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
                await worker.run(task_status=task_status)
                tasks.cancel_scope.cancel()

            tasks.start_soon(stop_on_signals, worker)
            await tasks.start(run)
            _ready()

    backend = opts.get("backend", "trio")
    options = {"use_uvloop": opts.get("uvloop", False)} if backend == "asyncio" else {}
    anyio.run(main, backend=backend, backend_options=options)
    _dump(out)


NW_INSERT_ONE = "INSERT INTO notifyworker.jobs (task, payload) VALUES ('bench', %s)"
NW_INSERT_MANY = (
    "INSERT INTO notifyworker.jobs (task, payload) SELECT 'bench', p FROM unnest(%s::jsonb[]) AS p"
)


def nw_enqueue(dsn: str, seqs: list[int]) -> None:
    from psycopg.types.json import Jsonb

    with psycopg.connect(dsn, autocommit=True) as conn:
        if len(seqs) == 1:
            conn.execute(NW_INSERT_ONE, (Jsonb({"seq": seqs[0]}),))
        else:
            conn.execute(NW_INSERT_MANY, ([Jsonb({"seq": s}) for s in seqs],))


class NwProducer:
    def __init__(self, dsn: str) -> None:
        from psycopg.types.json import Jsonb

        self._jsonb = Jsonb
        self.conn = psycopg.connect(dsn, autocommit=True)

    async def one(self, seq: int) -> None:
        self.conn.execute(NW_INSERT_ONE, (self._jsonb({"seq": seq}),))

    async def many(self, seqs: list[int]) -> None:
        self.conn.execute(NW_INSERT_MANY, ([self._jsonb({"seq": s}) for s in seqs],))

    async def close(self) -> None:
        self.conn.close()


# -- PgQueuer ---------------------------------------------------------------


def pgq_worker(dsn: str, out: str, opts: dict[str, Any]) -> None:
    import asyncpg
    import uvloop
    from pgqueuer import PgQueuer
    from pgqueuer.db import AsyncpgDriver

    async def main() -> None:
        conn = await asyncpg.connect(dsn)
        pgq = PgQueuer(AsyncpgDriver(conn))

        @pgq.entrypoint("bench")
        async def bench(job: Any) -> None:
            _record(int(job.payload))

        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, pgq.shutdown.set)
        asyncio.get_running_loop().call_soon(_ready)
        await pgq.run(batch_size=opts.get("batch_size", 10), dequeue_timeout=timedelta(seconds=30))
        await conn.close()

    uvloop.run(main())
    _dump(out)


class PgqProducer:
    async def open(self, dsn: str) -> PgqProducer:
        import asyncpg
        from pgqueuer.db import AsyncpgDriver
        from pgqueuer.queries import Queries

        self.conn = await asyncpg.connect(dsn)
        self.queries = Queries(AsyncpgDriver(self.conn))
        return self

    async def one(self, seq: int) -> None:
        await self.queries.enqueue("bench", str(seq).encode())

    async def many(self, seqs: list[int]) -> None:
        n = len(seqs)
        await self.queries.enqueue(["bench"] * n, [str(s).encode() for s in seqs], [0] * n)

    async def close(self) -> None:
        await self.conn.close()


# -- Procrastinate ----------------------------------------------------------


def procrastinate_app(dsn: str) -> Any:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))

    @app.task(name="bench")
    async def bench(seq: int) -> None:
        _record(seq)

    return app


def procrastinate_worker(dsn: str, out: str, opts: dict[str, Any]) -> None:
    import logging

    logging.getLogger("procrastinate").setLevel(logging.WARNING)
    app = procrastinate_app(dsn)

    async def main() -> None:
        async with app.open_async():
            task = asyncio.create_task(
                app.run_worker_async(
                    concurrency=opts.get("concurrency", 1), install_signal_handlers=False
                )
            )
            stop = asyncio.Event()
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
            await asyncio.sleep(0.2)
            _ready()
            await stop.wait()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(main())
    _dump(out)


class ProcrastinateProducer:
    async def open(self, dsn: str) -> ProcrastinateProducer:
        self.app = procrastinate_app(dsn)
        await self.app.open_async()
        self.task = self.app.tasks["bench"]
        return self

    async def one(self, seq: int) -> None:
        await self.task.defer_async(seq=seq)

    async def many(self, seqs: list[int]) -> None:
        await self.task.batch_defer_async(*({"seq": s} for s in seqs))

    async def close(self) -> None:
        await self.app.close_async()


async def open_producer(system: str, dsn: str) -> Any:
    if system == "nw":
        return NwProducer(dsn)
    if system == "pgq":
        return await PgqProducer().open(dsn)
    return await ProcrastinateProducer().open(dsn)


# -- roles ------------------------------------------------------------------


async def produce(system: str, dsn: str, out: str, opts: dict[str, Any]) -> None:
    """One job at a time at `rate`/s for `seconds`: commit times by sequence."""
    producer = await open_producer(system, dsn)
    commits = []
    period, count = 1.0 / opts["rate"], int(opts["rate"] * opts["seconds"])
    next_at = time.monotonic()
    for seq in range(count):
        await producer.one(seq)
        commits.append((seq, time.time()))
        next_at += period
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    await producer.close()
    _dump(out, {"commits": commits})


async def fill(system: str, dsn: str, out: str, opts: dict[str, Any]) -> None:
    """Enqueue `count` jobs in bulk statements of `batch`, timed."""
    producer = await open_producer(system, dsn)
    count, batch = opts["count"], opts.get("batch", 1000)
    if "start_at" in opts:  # parallel writers start together
        await asyncio.sleep(max(0.0, opts["start_at"] - time.time()))
    began = time.perf_counter()
    if batch == 1:
        for seq in range(count):
            await producer.one(seq)
    else:
        for start in range(0, count, batch):
            await producer.many(list(range(start, min(count, start + batch))))
    elapsed = time.perf_counter() - began
    end = time.time()
    await producer.close()
    _dump(out, {"seconds": elapsed, "end": end})


def install(system: str, dsn: str) -> None:
    if system == "nw":
        from notifyworker import db, schema

        db.run_once(dsn, schema.migrate)
    elif system == "pgq":

        async def pgq_install() -> None:
            import asyncpg
            from pgqueuer.db import AsyncpgDriver
            from pgqueuer.queries import Queries

            conn = await asyncpg.connect(dsn)
            await Queries(AsyncpgDriver(conn)).install()
            await conn.close()

        asyncio.run(pgq_install())
    else:

        async def procrastinate_install() -> None:
            app = procrastinate_app(dsn)
            async with app.open_async():
                await app.schema_manager.apply_schema_async()

        asyncio.run(procrastinate_install())


def main() -> None:
    system, role, dsn, out, raw = sys.argv[1:6]
    opts = json.loads(raw)
    if role == "worker":
        {"nw": nw_worker, "pgq": pgq_worker, "procrastinate": procrastinate_worker}[system](
            dsn, out, opts
        )
    elif role == "produce":
        asyncio.run(produce(system, dsn, out, opts))
    elif role == "fill":
        asyncio.run(fill(system, dsn, out, opts))
    elif role == "install":
        install(system, dsn)


if __name__ == "__main__":
    main()
