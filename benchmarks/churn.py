"""The churn soak: does retention keep the job table small under steady load?

    python -m benchmarks.churn [--minutes 10] [--rate 1000] [--retention 60] [--sample 30]
                               [--snapshot 120] [--output FILE]
    just bench --soak            (the same, with its defaults: the full soak, about 21 minutes)

Two phases, each on a fresh database: a producer inserts `rate` jobs a second
(a statement every 100 ms) for `minutes`, one `notifyworker run` (concurrency
100, no rate limit) runs them, and its pruner deletes finished jobs older than
`retention` seconds. Every `sample` seconds: the table's and its indexes' size,
live and dead tuples, autovacuum runs, the claim's latency and the pickup
latency. The second phase holds a REPEATABLE READ snapshot open for `snapshot`
seconds in the middle (vacuum can then remove nothing newer), to show how far
size and latency drift and how fast they come back.

The claim's latency is the worker's own claim statement (sql/queries/service.sql),
sent every 200 ms by a probe for up to 10 jobs in a transaction it rolls back,
so it measures the statement on the table as it is without taking jobs away.

Then `partition_probe` measures what a partitioned table would change: the
finish mark moving rows from an "active" to a "finished" partition, against
the same UPDATE in place, and dropping a partition against deleting its rows
in batches; and `index_build_seconds` how long migration 0011's index takes to
build over a million finished jobs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from benchmarks.run import ROOT, as_url, local_server, log
from notifyworker import db, schema
from notifyworker.sqlfiles import query

DATABASE = "bench_churn"
PROBE = "churn-probe"


@dataclass
class Phase:
    name: str
    samples: list[dict[str, float]] = field(default_factory=list)
    claims: list[tuple[float, float]] = field(default_factory=list)  # (elapsed s, ms)
    snapshot: tuple[float, float] | None = None  # held from, until (elapsed s)
    late_inserts: int = 0  # producer ticks that fell behind by over a second


@dataclass(frozen=True)
class Soak:
    minutes: float
    rate: int
    retention: float
    sample: float
    snapshot: float


SIZES = """
SELECT pg_total_relation_size('notifyworker.jobs') AS total,
       pg_relation_size('notifyworker.jobs') AS heap,
       pg_indexes_size('notifyworker.jobs') AS indexes,
       pg_relation_size('notifyworker.jobs_finished') AS finished_index,
       pg_relation_size('notifyworker.jobs_waiting') AS waiting_index,
       s.n_live_tup AS live, s.n_dead_tup AS dead,
       s.autovacuum_count AS autovacuums,
       (SELECT count(*) FROM notifyworker.jobs) AS rows,
       (SELECT count(*) FROM notifyworker.jobs WHERE status = 'new') AS waiting,
       (SELECT percentile_cont(0.5) WITHIN GROUP (
            ORDER BY extract(epoch FROM started_at - created_at)) * 1000
        FROM notifyworker.jobs
        WHERE finished_at > clock_timestamp() - make_interval(secs => %(window)s)
       ) AS pickup_ms
FROM pg_stat_user_tables AS s
WHERE s.relid = 'notifyworker.jobs'::regclass
"""
INSERT = (
    "INSERT INTO notifyworker.jobs (task, payload)"
    " SELECT 'sleep', '{\"seconds\": 0}' FROM generate_series(1, %s)"
)


def fresh_database(server: str) -> str:
    with psycopg.connect(server, autocommit=True) as conn:
        name = sql.Identifier(DATABASE)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(name))
    dsn = as_url(server, DATABASE)
    db.run_once(dsn, schema.migrate)
    return dsn


def start_worker(dsn: str, soak: Soak) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFYWORKER_")}
    env.update(
        DATABASE_URL=dsn,
        NOTIFYWORKER_HEALTH_PORT="off",
        NOTIFYWORKER_LOG_LEVEL="WARNING",
        NOTIFYWORKER_LOG_FORMAT="text",
        **{
            f"NOTIFYWORKER_RETENTION_{status}": str(soak.retention)
            for status in ("DONE", "FAILED", "CANCELLED")
        },
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "notifyworker", "run", "--concurrency", "100", "--rate", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        deadline = time.monotonic() + 30
        while not conn.execute(
            "SELECT 1 FROM notifyworker.workers WHERE id <> %s", (PROBE,)
        ).fetchone():
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"the worker did not start: {process.communicate()[1][-2000:]}")
            time.sleep(0.1)
    return process


def produce(dsn: str, soak: Soak, began: float, stop: threading.Event, phase: Phase) -> None:
    """`rate` jobs a second, a statement every 100 ms on absolute deadlines."""
    per_tick = max(1, round(soak.rate / 10))
    with psycopg.connect(dsn, autocommit=True) as conn:
        tick = 0
        while not stop.is_set():
            due = began + tick * 0.1
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            elif now - due > 1.0:
                phase.late_inserts += 1
            conn.execute(INSERT, (per_tick,), prepare=True)
            tick += 1


def probe_claims(dsn: str, began: float, stop: threading.Event, phase: Phase) -> None:
    """The claim statement every 200 ms, rolled back: its latency on the table as it is."""
    claim = query("claim").encode()
    params = {
        "worker_id": PROBE,
        "serve": None,
        "limit": 10,
        "max_payload_bytes": 1_048_576,
        "pace_ahead": 0.1,
    }
    with psycopg.connect(dsn) as conn:
        last_beat = 0.0
        while not stop.is_set():
            if time.monotonic() - last_beat > 1.0:  # alive, or the sweeper removes the probe
                conn.execute(
                    "INSERT INTO notifyworker.workers (id, host, pid) VALUES (%s, 'probe', 0)"
                    " ON CONFLICT (id) DO UPDATE SET heartbeat_at = clock_timestamp()",
                    (PROBE,),
                )
                conn.commit()
                last_beat = time.monotonic()
            started = time.perf_counter()
            conn.execute(claim, params, prepare=True).fetchall()
            elapsed = (time.perf_counter() - started) * 1000
            conn.rollback()
            phase.claims.append((time.monotonic() - began, elapsed))
            time.sleep(0.2)


def hold_snapshot(dsn: str, soak: Soak, began: float, stop: threading.Event, phase: Phase) -> None:
    """A transaction holding one snapshot for `snapshot` seconds in the middle of the run."""
    start_at = began + soak.minutes * 30 - soak.snapshot / 2
    while time.monotonic() < start_at:
        if stop.wait(0.2):
            return
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET idle_in_transaction_session_timeout = 0")
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        conn.execute("SELECT count(*) FROM notifyworker.workers").fetchone()
        held_from = time.monotonic() - began
        stop.wait(soak.snapshot)
        conn.execute("COMMIT")
        phase.snapshot = (held_from, time.monotonic() - began)


def run_phase(server: str, soak: Soak, name: str, with_snapshot: bool) -> Phase:
    phase = Phase(name)
    dsn = fresh_database(server)
    worker = start_worker(dsn, soak)
    stop = threading.Event()
    began = time.monotonic()
    threads = [
        threading.Thread(target=produce, args=(dsn, soak, began, stop, phase)),
        threading.Thread(target=probe_claims, args=(dsn, began, stop, phase)),
    ]
    if with_snapshot:
        threads.append(threading.Thread(target=hold_snapshot, args=(dsn, soak, began, stop, phase)))
    for thread in threads:
        thread.start()
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            end = began + soak.minutes * 60
            next_sample = began
            while (now := time.monotonic()) < end + 0.01:
                if worker.poll() is not None:
                    raise RuntimeError(f"the worker died: {worker.communicate()[1][-2000:]}")
                if now >= next_sample:
                    phase.samples.append(sample(conn, soak, phase, now - began))
                    next_sample += soak.sample
                time.sleep(min(0.5, max(0.0, min(next_sample, end) - time.monotonic())))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
    if worker.returncode:
        raise RuntimeError(f"the worker exited {worker.returncode}: {err[-2000:]}")
    return phase


def sample(conn: psycopg.Connection[Any], soak: Soak, phase: Phase, at: float) -> dict[str, float]:
    cur = conn.execute(SIZES.encode(), {"window": soak.sample})
    names = [column.name for column in cur.description or ()]
    row = dict(zip(names, cur.fetchone() or (), strict=True))
    recent = [ms for t, ms in phase.claims if at - soak.sample <= t <= at]
    values = {"at": at, **{k: float(v) if v is not None else float("nan") for k, v in row.items()}}
    values["claim_ms"] = statistics.median(recent) if recent else float("nan")
    log(
        f"{phase.name} {at:5.0f} s: {values['rows']:,.0f} rows, table {mb(values['total'])}, "
        f"dead {values['dead']:,.0f} ({values['autovacuums']:.0f} autovacuums), "
        f"claim p50 {values['claim_ms']:.2f} ms"
    )
    return values


def mb(size: float) -> str:
    return f"{size / 1_048_576:.1f} MB"


def claim_p50(phase: Phase, lo: float, hi: float) -> float:
    window = [ms for t, ms in phase.claims if lo <= t < hi]
    return statistics.median(window) if window else float("nan")


# -- what a partitioned table would change -----------------------------------

PARTITION_SETUP = """
DROP SCHEMA IF EXISTS churn_probe CASCADE;
CREATE SCHEMA churn_probe;
CREATE TABLE churn_probe.plain (
    id bigint, status text NOT NULL, worker_id text, finished_at timestamptz,
    payload jsonb NOT NULL DEFAULT '{"seconds": 0}', PRIMARY KEY (id));
CREATE INDEX ON churn_probe.plain (worker_id, status) WHERE status IN ('queued', 'running');
CREATE INDEX ON churn_probe.plain (status, finished_at)
    WHERE status IN ('done', 'failed', 'cancelled');
CREATE TABLE churn_probe.parted (
    id bigint, status text NOT NULL, worker_id text, finished_at timestamptz,
    payload jsonb NOT NULL DEFAULT '{"seconds": 0}', finished boolean NOT NULL,
    PRIMARY KEY (id, finished)) PARTITION BY LIST (finished);
CREATE TABLE churn_probe.parted_active PARTITION OF churn_probe.parted FOR VALUES IN (false);
CREATE TABLE churn_probe.parted_finished PARTITION OF churn_probe.parted FOR VALUES IN (true);
CREATE INDEX ON churn_probe.parted (worker_id, status) WHERE status IN ('queued', 'running');
"""
FINISH_PLAIN = (
    "UPDATE churn_probe.plain SET status = 'done', finished_at = clock_timestamp()"
    " WHERE id = ANY(%s)"
)
FINISH_PARTED = (
    "UPDATE churn_probe.parted SET status = 'done', finished_at = clock_timestamp(),"
    " finished = true WHERE id = ANY(%s) AND NOT finished"
)


def partition_probe(server: str, rows: int = 50_000) -> dict[str, float]:
    """ms per finish mark of 100 rows, in place vs moving partitions; ms to remove `rows`."""
    dsn = as_url(server, DATABASE)
    result: dict[str, float] = {"rows": rows}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(PARTITION_SETUP.encode())
        conn.execute(
            "INSERT INTO churn_probe.plain (id, status, worker_id)"
            " SELECT n, 'running', 'w' FROM generate_series(1, %s) AS n",
            (rows,),
        )
        conn.execute(
            "INSERT INTO churn_probe.parted (id, status, worker_id, finished)"
            " SELECT n, 'running', 'w', false FROM generate_series(1, %s) AS n",
            (rows,),
        )
        conn.execute("VACUUM ANALYZE churn_probe.plain, churn_probe.parted")
        timings: dict[str, list[float]] = {"plain": [], "parted": []}
        for first in range(1, rows + 1, 100):
            ids = list(range(first, min(first + 100, rows + 1)))
            for name, statement in (("plain", FINISH_PLAIN), ("parted", FINISH_PARTED)):
                began = time.perf_counter()
                conn.execute(statement.encode(), (ids,), prepare=True)
                timings[name].append((time.perf_counter() - began) * 1000)
        result["finish_plain_ms"] = statistics.median(timings["plain"])
        result["finish_parted_ms"] = statistics.median(timings["parted"])
        began = time.perf_counter()
        while conn.execute(
            "DELETE FROM churn_probe.plain WHERE id IN (SELECT id FROM churn_probe.plain"
            " WHERE status = 'done' ORDER BY finished_at LIMIT 1000 FOR UPDATE SKIP LOCKED)"
        ).rowcount:
            pass
        result["delete_batches_ms"] = (time.perf_counter() - began) * 1000
        began = time.perf_counter()
        conn.execute("ALTER TABLE churn_probe.parted DETACH PARTITION churn_probe.parted_finished")
        conn.execute("DROP TABLE churn_probe.parted_finished")
        result["drop_partition_ms"] = (time.perf_counter() - began) * 1000
        conn.execute("DROP SCHEMA churn_probe CASCADE")
    log(
        f"partition probe: finish mark of 100 {result['finish_plain_ms']:.2f} ms in place, "
        f"{result['finish_parted_ms']:.2f} ms moving partitions; removing {rows:,} rows "
        f"{result['delete_batches_ms']:.0f} ms in batches, {result['drop_partition_ms']:.0f} ms "
        "by dropping a partition"
    )
    return result


def index_build_seconds(server: str, rows: int = 1_000_000) -> float:
    """Seconds migration 0011 spends building jobs_finished over `rows` finished jobs."""
    dsn = as_url(server, DATABASE)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE notifyworker.jobs")
        conn.execute("DROP INDEX notifyworker.jobs_finished")
        conn.execute(
            "INSERT INTO notifyworker.jobs"
            " (task, status, worker_id, started_at, finished_at, cancelled_at)"
            " SELECT 'bench', (ARRAY['done', 'done', 'done', 'failed', 'cancelled'])[n %% 5 + 1],"
            "        'w', now(), now() - n * interval '1 second', now()"
            " FROM generate_series(1, %s) AS n",
            (rows,),
        )
        conn.execute("VACUUM ANALYZE notifyworker.jobs")
        began = time.perf_counter()
        conn.execute(
            "CREATE INDEX jobs_finished ON notifyworker.jobs (status, finished_at)"
            " WHERE status IN ('done', 'failed', 'cancelled')"
        )
        seconds = time.perf_counter() - began
    log(f"building jobs_finished over {rows:,} finished jobs: {seconds:.1f} s")
    return seconds


def describe(server: str) -> str:
    with psycopg.connect(server) as conn:
        row = conn.execute(
            "SELECT current_setting('server_version'), current_setting('autovacuum')"
        ).fetchone()
    assert row is not None
    return f"PostgreSQL {row[0]}, autovacuum {row[1]}"


def embedded_server(stack: contextlib.ExitStack) -> str:
    from notifyworker.up.embedded import embedded_postgres

    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nw-churn-pg-")))
    folder.chmod(0o755)  # the embedded server runs as its own user
    return stack.enter_context(embedded_postgres(folder / "data", delete=True))


# -- the report ----------------------------------------------------------------


def report(
    soak: Soak,
    phases: list[Phase],
    probe: dict[str, float],
    build: float,
    command: str,
    server: str,
) -> str:
    lines: list[str] = []
    add = lines.append
    add(
        f"Command: `{command}` · {soak.minutes:g} min per phase at {soak.rate:,} jobs/s, "
        f"retention {soak.retention:g} s, samples every {soak.sample:g} s"
    )
    add(f"Server: {server}")
    add("")
    span = soak.minutes * 60
    first = min(60.0, span / 3)
    for phase in phases:
        add(f"#### {phase.name}")
        if phase.snapshot:
            add(
                f"A REPEATABLE READ snapshot was held from {phase.snapshot[0]:.0f} s to "
                f"{phase.snapshot[1]:.0f} s."
            )
        add("")
        add(
            "| at (s) | rows | table + indexes | heap | indexes | jobs_finished | live | dead "
            "| autovacuums | waiting | claim p50 (ms) | pickup p50 (ms) |"
        )
        add("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for s in phase.samples:
            add(
                f"| {s['at']:.0f} | {s['rows']:,.0f} | {mb(s['total'])} | {mb(s['heap'])} "
                f"| {mb(s['indexes'])} | {mb(s['finished_index'])} | {s['live']:,.0f} "
                f"| {s['dead']:,.0f} | {s['autovacuums']:.0f} | {s['waiting']:,.0f} "
                f"| {s['claim_ms']:.2f} | {s['pickup_ms']:.1f} |"
            )
        early, late = claim_p50(phase, 0, first), claim_p50(phase, span - first, span)
        add("")
        add(
            f"Claim p50: {early:.2f} ms in the first {first:.0f} s, {late:.2f} ms in the last "
            f"{first:.0f} s ({(late / early - 1) * 100:+.0f}%). Producer ticks more than 1 s "
            f"late: {phase.late_inserts}."
        )
        add("")
    add(
        f"What a partitioned table would change ({probe['rows']:,.0f} rows): a finish mark of "
        f"100 jobs takes {probe['finish_plain_ms']:.2f} ms updated in place and "
        f"{probe['finish_parted_ms']:.2f} ms moving the rows from an active to a finished "
        f"partition; removing them takes {probe['delete_batches_ms']:.0f} ms in batches of "
        f"1,000 and {probe['drop_partition_ms']:.0f} ms by dropping the partition."
    )
    add("")
    add(
        f"Migration 0011 builds jobs_finished over 1,000,000 finished jobs in {build:.1f} s "
        "(writes to the job table wait that long)."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--rate", type=int, default=1000, help="jobs inserted per second")
    parser.add_argument("--retention", type=float, default=60.0, help="seconds jobs are kept")
    parser.add_argument("--sample", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--snapshot", type=float, default=120.0, help="seconds it is held")
    parser.add_argument("--output", type=Path, help="also write the report here")
    parser.add_argument(
        "--as-is",
        action="store_true",
        help="measure the server even if its autovacuum is off (else: an embedded one)",
    )
    args = parser.parse_args(argv)
    soak = Soak(args.minutes, args.rate, args.retention, args.sample, args.snapshot)
    if soak.snapshot >= soak.minutes * 60:
        parser.error("--snapshot must be shorter than the phase")
    command = "python -m benchmarks.churn " + " ".join(argv)
    with contextlib.ExitStack() as stack:
        server = os.environ.get("DATABASE_URL") or local_server(stack)
        if not args.as_is and describe(server).endswith("autovacuum off"):
            # Deleted rows are reclaimed by autovacuum: without it, no table plateaus.
            log("autovacuum is off on that server: measuring on an embedded PostgreSQL instead")
            server = embedded_server(stack)
        phases = [
            run_phase(server, soak, "Steady churn", with_snapshot=False),
            run_phase(server, soak, "Steady churn with a snapshot held open", with_snapshot=True),
        ]
        probe = partition_probe(server)
        build = index_build_seconds(server)
        text = report(soak, phases, probe, build, command.strip(), describe(server))
    print(text)
    if args.output:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
