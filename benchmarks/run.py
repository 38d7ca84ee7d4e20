"""`just bench`: notifyworker side by side with PgQueuer and Procrastinate, in one run.

    python -m benchmarks.run [--quick] [--output FILE]
    python -m benchmarks.run --soak [churn options]   (benchmarks/churn.py instead)
    python -m benchmarks.fleet [--quick] [--only ...]  (the fleet section alone)

Every system runs in its own processes against its own database on the same
PostgreSQL (DATABASE_URL's server, else 127.0.0.1:5432, else an embedded one).
Measurements are interleaved: each repetition runs every configuration once, in
an order that rotates between repetitions; figures are medians with (min–max).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"

OUTSTANDING = {
    "nw": "SELECT count(*) FROM notifyworker.jobs WHERE status NOT IN ('done', 'failed', 'cancelled')",
    "pgq": "SELECT count(*) FROM pgqueuer",
    "procrastinate": "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')",
}


@dataclass(frozen=True)
class Config:
    label: str
    system: str
    opts: dict[str, Any] = field(default_factory=dict)


NW_C100 = Config("notifyworker (concurrency 100)", "nw", {"concurrency": 100, "rate": 0})
NW_C10 = Config("notifyworker (concurrency 10, default)", "nw", {"concurrency": 10, "rate": 0})
NW_C100_ASYNCIO = Config(
    "notifyworker on asyncio (concurrency 100)",
    "nw",
    {"concurrency": 100, "rate": 0, "backend": "asyncio"},
)
NW_C100_UVLOOP = Config(
    "notifyworker on asyncio + uvloop (concurrency 100)",
    "nw",
    {"concurrency": 100, "rate": 0, "backend": "asyncio", "uvloop": True},
)
NW_C10_ASYNCIO = Config(
    "notifyworker on asyncio (concurrency 10)",
    "nw",
    {"concurrency": 10, "rate": 0, "backend": "asyncio"},
)
NW_C10_UVLOOP = Config(
    "notifyworker on asyncio + uvloop (concurrency 10)",
    "nw",
    {"concurrency": 10, "rate": 0, "backend": "asyncio", "uvloop": True},
)
PGQ_B10 = Config("PgQueuer 1.6 asyncpg (batch 10)", "pgq", {"batch_size": 10})
PGQ_B100 = Config("PgQueuer 1.6 asyncpg (batch 100)", "pgq", {"batch_size": 100})
PROC_C10 = Config("Procrastinate (concurrency 10)", "procrastinate", {"concurrency": 10})
DRAIN_CONFIGS = [
    NW_C100, NW_C100_ASYNCIO, NW_C100_UVLOOP, NW_C10, NW_C10_ASYNCIO, NW_C10_UVLOOP,
    PGQ_B10, PGQ_B100, PROC_C10,
]  # fmt: skip
PICKUP_CONFIGS = [NW_C10, NW_C10_ASYNCIO, NW_C10_UVLOOP, PGQ_B10, PROC_C10]


@dataclass(frozen=True)
class Sizes:
    reps: int
    drain: int
    pickup_seconds: float
    limiter_50: int
    limiter_2000: int
    enqueue_bulk: int
    enqueue_single: int
    big_done: int
    big_waiting: int
    big_claims: int
    rss: tuple[int, int]


FULL = Sizes(
    3, 20_000, 15, 1_000, 20_000, 20_000, 1_000, 1_000_000, 100_000, 300, (10_000, 100_000)
)
QUICK = Sizes(1, 5_000, 4, 250, 4_000, 5_000, 300, 100_000, 10_000, 50, (5_000, 20_000))


class Bench:
    def __init__(self, server: str, sizes: Sizes) -> None:
        self.server = server
        self.sizes = sizes
        self.tmp = Path(tempfile.mkdtemp(prefix="notifyworker-bench-"))
        self.dsn = {s: as_url(server, f"bench_{s}") for s in OUTSTANDING}

    # -- plumbing -----------------------------------------------------------

    def create_databases(self) -> None:
        with psycopg.connect(self.server, autocommit=True) as conn:
            for system in OUTSTANDING:
                name = sql.Identifier(f"bench_{system}")
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
                conn.execute(sql.SQL("CREATE DATABASE {}").format(name))
        for system in OUTSTANDING:
            self.child(system, "install", {}).check_returncode()

    def child(
        self, system: str, role: str, opts: dict[str, Any]
    ) -> subprocess.CompletedProcess[str]:
        out = self.tmp / f"{system}-{role}.json"
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.systems",
                system,
                role,
                self.dsn[system],
                str(out),
                json.dumps(opts),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )

    def result(self, system: str, role: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.tmp / f"{system}-{role}.json").read_text())
        return data

    def reset(self, system: str) -> None:
        with psycopg.connect(self.dsn[system], autocommit=True) as conn:
            tables = conn.execute(
                "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables"
                " WHERE schemaname IN ('public', 'notifyworker')"
                # The record of migrations, and the one-row leases the schema comes with.
                " AND tablename NOT IN ('migrations', 'sweeper', 'pruner')"
            ).fetchall()
            for (table,) in tables:
                conn.execute(sql.SQL("TRUNCATE {} CASCADE").format(sql.SQL(table)))

    def fill(self, system: str, count: int, batch: int = 1000) -> float:
        done = self.child(system, "fill", {"count": count, "batch": batch})
        if done.returncode:
            raise RuntimeError(f"{system} fill failed: {done.stderr[-2000:]}")
        with psycopg.connect(self.dsn[system], autocommit=True) as conn:
            conn.execute("ANALYZE")
        return count / float(self.result(system, "fill")["seconds"])

    def outstanding(self, system: str) -> int:
        with psycopg.connect(self.dsn[system], autocommit=True) as conn:
            row = conn.execute(OUTSTANDING[system].encode()).fetchone()
        return int(row[0]) if row else 0

    def start_worker(self, config: Config, tag: str = "") -> tuple[subprocess.Popen[str], float]:
        """A worker process of `config`, once READY; `tag` tells several at once apart."""
        out = self.tmp / f"{config.system}-worker{tag}.json"
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.systems",
                config.system,
                "worker",
                self.dsn[config.system],
                str(out),
                json.dumps(config.opts),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("READY"):
            process.kill()
            err = process.stderr.read() if process.stderr else ""
            raise RuntimeError(f"{config.label} did not start: {err[-2000:]}")
        return process, float(line.split()[1])

    def stop_worker(
        self, config: Config, process: subprocess.Popen[str], tag: str = ""
    ) -> dict[str, Any]:
        process.send_signal(signal.SIGTERM)
        try:
            _, err = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise RuntimeError(f"{config.label} did not stop") from None
        if process.returncode:
            raise RuntimeError(f"{config.label} exited {process.returncode}: {err[-2000:]}")
        return self.result(config.system, f"worker{tag}")

    def drain(self, config: Config, count: int) -> tuple[float, int, dict[str, Any]]:
        """Jobs/s from READY until nothing is outstanding, and the worker's records."""
        self.reset(config.system)
        self.fill(config.system, count)
        process, ready = self.start_worker(config)
        with psycopg.connect(self.dsn[config.system], autocommit=True) as conn:
            query = OUTSTANDING[config.system].encode()
            while (row := conn.execute(query).fetchone()) and row[0]:
                time.sleep(0.005)
            done = time.time()
        records = self.stop_worker(config, process)
        ran = {seq for seq, _ in records["starts"]}
        if len(ran) != count or len(records["starts"]) != count:
            raise RuntimeError(f"{config.label}: {len(records['starts'])} runs of {count} jobs")
        return count / (done - ready), int(records["maxrss_kb"]), records

    # -- measurements ---------------------------------------------------------

    def measure_drain(self) -> dict[str, list[float]]:
        results: dict[str, list[float]] = {c.label: [] for c in DRAIN_CONFIGS}
        for configs in rotations(DRAIN_CONFIGS, self.sizes.reps):
            for config in configs:
                n = self.sizes.drain // (5 if config.system == "procrastinate" else 1)
                rate, _, _ = self.drain(config, n)
                results[config.label].append(rate)
                log(f"drain {config.label}: {rate:,.0f} jobs/s")
        return results

    def measure_pickup(self) -> dict[str, dict[str, list[float]]]:
        results: dict[str, dict[str, list[float]]] = {c.label: {} for c in PICKUP_CONFIGS}
        for configs in rotations(PICKUP_CONFIGS, self.sizes.reps):
            for config in configs:
                self.reset(config.system)
                process, _ = self.start_worker(config)
                time.sleep(1.5)  # idle, as a worker waiting for work is
                produced = self.child(
                    config.system, "produce", {"rate": 20, "seconds": self.sizes.pickup_seconds}
                )
                if produced.returncode:
                    raise RuntimeError(produced.stderr[-2000:])
                deadline = time.time() + 10
                while self.outstanding(config.system) and time.time() < deadline:
                    time.sleep(0.05)
                starts = dict(self.stop_worker(config, process)["starts"])
                commits = dict(self.result(config.system, "produce")["commits"])
                latencies = sorted(
                    (starts[seq] - at) * 1000 for seq, at in commits.items() if seq in starts
                )
                if len(latencies) != len(commits):
                    raise RuntimeError(f"{config.label}: {len(commits) - len(latencies)} lost")
                for name, value in percentiles(latencies).items():
                    results[config.label].setdefault(name, []).append(value)
                log(f"pickup {config.label}: p50 {percentiles(latencies)['p50']:.2f} ms")
        return results

    def measure_limiter(self) -> dict[str, dict[str, list[float]]]:
        cases = [
            (f"{self.sizes.limiter_50:,} jobs at 50/s", 50, self.sizes.limiter_50, 10),
            (f"{self.sizes.limiter_2000:,} jobs at 2,000/s", 2000, self.sizes.limiter_2000, 100),
        ]
        results: dict[str, dict[str, list[float]]] = {c[0]: {} for c in cases}
        for _ in range(self.sizes.reps):
            for label, rate, count, concurrency in cases:
                config = Config("notifyworker", "nw", {"rate": rate, "concurrency": concurrency})
                _, _, records = self.drain(config, count)
                times = sorted(t for _, t in records["starts"])
                first, last = times[0], times[-1]
                lo, hi = first + 0.1 * (last - first), last - 0.1 * (last - first)
                middle = [t for t in times if lo <= t <= hi]
                achieved = (len(middle) - 1) / (middle[-1] - middle[0])
                burst = max_in_window(times, 0.1)
                results[label].setdefault("rate", []).append(achieved)
                results[label].setdefault("error_pct", []).append(abs(achieved / rate - 1) * 100)
                results[label].setdefault("max_100ms", []).append(burst)
                log(f"limiter {label}: {achieved:.2f}/s, max {burst} per 100 ms")
        return results

    def measure_enqueue(self) -> dict[str, dict[str, list[float]]]:
        systems = ["nw", "pgq", "procrastinate"]
        results: dict[str, dict[str, list[float]]] = {s: {} for s in systems}
        for rep in range(self.sizes.reps):
            for system in systems[rep % 3 :] + systems[: rep % 3]:
                self.reset(system)
                bulk = self.fill(system, self.sizes.enqueue_bulk, 1000)
                self.reset(system)
                single = self.fill(system, self.sizes.enqueue_single, 1)
                results[system].setdefault("bulk", []).append(bulk)
                results[system].setdefault("single", []).append(single)
                log(f"enqueue {system}: bulk {bulk:,.0f}/s, single {single:,.0f}/s")
        return results

    def measure_producer(self) -> dict[str, dict[str, list[float]]]:
        """The producer API against a plain INSERT from the same connection (notifyworker only)."""
        from benchmarks.producer import measure

        single, bulk = self.sizes.enqueue_single, self.sizes.enqueue_bulk
        results = measure(self.dsn["nw"], single, bulk, self.sizes.reps)
        for shape, ways in results.items():
            for way, rates in ways.items():
                log(f"enqueue from Python, {shape}, {way}: {rates[-1]:,.0f}/s")
        return results

    def measure_trigger(self) -> dict[str, list[float]]:
        """notifyworker inserts/s with and without the NOTIFY trigger, 1 and 8 writers."""
        results: dict[str, list[float]] = {}
        toggles = [("with trigger", "ENABLE"), ("without trigger", "DISABLE")]
        for rep in range(self.sizes.reps):
            for name, toggle in toggles[rep % 2 :] + toggles[: rep % 2]:
                with psycopg.connect(self.dsn["nw"], autocommit=True) as conn:
                    conn.execute(
                        sql.SQL(
                            "ALTER TABLE notifyworker.jobs {} TRIGGER jobs_inserted_notify"
                        ).format(sql.SQL(toggle))
                    )
                for writers in (1, 8):
                    for shape, batch, count in (
                        ("single-row", 1, self.sizes.enqueue_single),
                        ("1,000-row", 1000, self.sizes.enqueue_bulk),
                    ):
                        self.reset("nw")
                        rate = self.parallel_fill(writers, count, batch)
                        key = f"{shape}, {writers} writer(s), {name}"
                        results.setdefault(key, []).append(rate)
                        log(f"trigger {key}: {rate:,.0f} rows/s")
        with psycopg.connect(self.dsn["nw"], autocommit=True) as conn:
            conn.execute("ALTER TABLE notifyworker.jobs ENABLE TRIGGER jobs_inserted_notify")
        return results

    def parallel_fill(self, writers: int, count: int, batch: int) -> float:
        start_at = time.time() + 1.0
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.systems",
                    "nw",
                    "fill",
                    self.dsn["nw"],
                    str(self.tmp / f"w{i}.json"),
                    json.dumps({"count": count, "batch": batch, "start_at": start_at}),
                ],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(writers)
        ]
        for p in procs:
            if p.wait(timeout=300):
                raise RuntimeError(p.stderr.read() if p.stderr else "fill failed")
        ends = [
            float(json.loads((self.tmp / f"w{i}.json").read_text())["end"]) for i in range(writers)
        ]
        return writers * count / (max(ends) - start_at)

    def measure_big_table(self) -> dict[str, list[float]]:
        from benchmarks.bigtable import claim_latencies

        timings = claim_latencies(
            self.dsn["nw"], self.sizes.big_done, self.sizes.big_waiting, self.sizes.big_claims
        )
        log(f"big-table claim: p50 {statistics.median(timings):.3f} ms")
        return {"claim_ms": timings}

    def measure_schedules(self) -> dict[str, Any]:
        from benchmarks.schedules import one_job_per_tick

        # 60 s in the full run, as the schedules issue asks; the quick pass checks the shape.
        seconds = 60.0 if self.sizes.reps > 1 else 10.0
        result = one_job_per_tick(self, NW_C10, seconds, processes=3)
        log(f"schedules: {result}")
        return result

    def measure_fleet(self) -> dict[str, Any]:
        """Limits for the whole fleet, N worker processes (issue 11: benchmarks/fleet.py)."""
        from benchmarks.fleet import measure

        return measure(self, quick=self.sizes is QUICK)

    def measure_rss(self) -> dict[int, list[float]]:
        results: dict[int, list[float]] = {}
        for _ in range(self.sizes.reps):
            for count in self.sizes.rss:
                _, rss_kb, _ = self.drain(NW_C100, count)
                results.setdefault(count, []).append(rss_kb / 1024)
                log(f"rss {count:,}: {rss_kb / 1024:.1f} MB")
        return results


def as_url(server: str, dbname: str) -> str:
    """A URL for `dbname` on `server` (asyncpg takes URLs, not libpq keywords)."""
    parts = conninfo_to_dict(make_conninfo(server))
    auth = quote(str(parts.get("user", "postgres")))
    if parts.get("password"):
        auth += ":" + quote(str(parts["password"]))
    host = str(parts.get("host", "127.0.0.1"))
    if host.startswith("/"):
        return f"postgresql://{auth}@/{dbname}?host={quote(host)}&port={parts.get('port', 5432)}"
    return f"postgresql://{auth}@{host}:{parts.get('port', 5432)}/{dbname}"


def rotations(configs: list[Config], reps: int) -> Iterator[list[Config]]:
    for rep in range(reps):
        shift = rep % len(configs)
        yield configs[shift:] + configs[:shift]


def percentiles(values: list[float]) -> dict[str, float]:
    def at(q: float) -> float:
        return values[min(len(values) - 1, round(q * (len(values) - 1)))]

    return {"p50": at(0.5), "p95": at(0.95), "p99": at(0.99), "max": values[-1]}


def max_in_window(times: list[float], width: float) -> int:
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= width:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def med(values: list[float], fmt: str = "{:,.0f}") -> str:
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def report(bench: Bench, quick: bool, parts: dict[str, Any], seconds: float) -> str:
    lines: list[str] = []
    add = lines.append
    sizes = bench.sizes
    versions = ", ".join(
        f"{name} {metadata.version(name)}"
        for name in (
            "notifyworker",
            "pgqueuer",
            "procrastinate",
            "psycopg",
            "asyncpg",
            "trio",
            "anyio",
            "uvloop",
        )
    )
    with psycopg.connect(bench.server) as conn:
        server = conn.execute("SHOW server_version").fetchone()
    add(
        f"Command: `just bench{' --quick' if quick else ''}` · {sizes.reps} repetition(s), "
        f"interleaved · median (min–max) · {seconds:.0f} s in all"
    )
    add(
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"PostgreSQL {server[0] if server else '?'} · {versions}"
    )
    add("")
    drain = parts["drain"]
    base = statistics.median(drain[NW_C100.label])
    add(f"### 1. Drain: {sizes.drain:,} pre-inserted no-op jobs, one worker process, no rate limit")
    add("(Procrastinate drains a fifth as many: it is that much slower.)")
    add("")
    add("| system | jobs/s | notifyworker (c100) ÷ this |")
    add("|---|---|---|")
    for config in DRAIN_CONFIGS:
        values = drain[config.label]
        add(f"| {config.label} | {med(values)} | {base / statistics.median(values):.2f}× |")
    add("")
    add(
        f"### 2. Idle pickup: one job at a time at 20 jobs/s for {sizes.pickup_seconds:g} s, "
        "producer's commit → handler's first line (ms)"
    )
    add("")
    add("| system | p50 | p95 | p99 | max | p50 ÷ notifyworker's |")
    add("|---|---|---|---|---|---|")
    pickup = parts["pickup"]
    nw_p50 = statistics.median(pickup[NW_C10.label]["p50"])
    for config in PICKUP_CONFIGS:
        row = pickup[config.label]
        cells = " | ".join(med(row[k], "{:.2f}") for k in ("p50", "p95", "p99", "max"))
        add(f"| {config.label} | {cells} | {statistics.median(row['p50']) / nw_p50:.2f}× |")
    add("")
    add("### 3. Limiter accuracy (notifyworker only: the peers have no rate limit)")
    add("")
    add("| case | achieved rate over the middle 80% | error | most starts in any 100 ms (bound) |")
    add("|---|---|---|---|")
    for label, row in parts["limiter"].items():
        rate = 50 if "50/s" in label else 2000
        add(
            f"| {label} | {med(row['rate'], '{:.2f}')}/s | {med(row['error_pct'], '{:.2f}')}% | "
            f"{med(row['max_100ms'])} ({rate * 0.1 + 1:.0f}) |"
        )
    add("")
    add("### 4. Enqueue (rows/s), with each system's own insert trigger")
    add("")
    add("| system | bulk, 1,000 per statement | one row per transaction |")
    add("|---|---|---|")
    names = {
        "nw": "notifyworker (plain INSERT)",
        "pgq": "PgQueuer 1.6 asyncpg",
        "procrastinate": "Procrastinate",
    }
    for system, row in parts["enqueue"].items():
        add(f"| {names[system]} | {med(row['bulk'])} | {med(row['single'])} |")
    add("")
    add(
        "Enqueue from Python (notifyworker jobs/s on one autocommit connection, ids returned; "
        "÷ the plain INSERT with RETURNING from the same connection):"
    )
    add("")
    add("| way | jobs/s | ÷ plain INSERT |")
    add("|---|---|---|")
    for shape, ways in parts["producer"].items():
        label = "one job per transaction" if shape == "single" else "1,000 per call"
        plain = statistics.median(next(iter(ways.values())))
        for way, rates in ways.items():
            ratio = statistics.median(rates) / plain
            add(f"| {label}: {way} | {med(rates)} | {ratio * 100:.0f}% |")
    add("")
    add("NOTIFY trigger cost (notifyworker rows/s; aggregate over the writers):")
    add("")
    add("| statement, writers | with trigger | without | with ÷ without |")
    add("|---|---|---|---|")
    trig = parts["trigger"]
    for key in [k for k in trig if k.endswith("with trigger")]:
        base_key = key.removesuffix("with trigger") + "without trigger"
        ratio = statistics.median(trig[key]) / statistics.median(trig[base_key])
        add(
            f"| {key.removesuffix(', with trigger')} | {med(trig[key])} | {med(trig[base_key])} "
            f"| {ratio * 100:.0f}% |"
        )
    add("")
    claim = parts["big"]["claim_ms"]
    add(
        f"### 5. Claim on a big table: {sizes.big_done:,} finished rows, {sizes.big_waiting:,} "
        f"waiting; {len(claim)} claims of 100"
    )
    add("")
    add(
        f"Median {statistics.median(claim):.3f} ms, p95 {percentiles(sorted(claim))['p95']:.3f} ms "
        "(one round trip on the event loop, server time included)."
    )
    add("")
    add("### 6. Worker peak RSS (notifyworker, concurrency 100)")
    add("")
    add("| drain of | peak RSS (MB) |")
    add("|---|---|")
    for count, values in parts["rss"].items():
        add(f"| {count:,} jobs | {med(values, '{:.1f}')} |")
    small, large = (statistics.median(v) for v in parts["rss"].values())
    add("")
    add(f"The larger drain's peak is {large / small:.2f}× the smaller one's.")
    ticks = parts["schedules"]
    add("")
    add(
        f"### 7. Schedules: {ticks['processes']} worker processes, a schedule every second "
        f"for {ticks['seconds']:g} s"
    )
    add("")
    add("| jobs | ticks fired | ticks with more than one job | ticks missed |")
    add("|---|---|---|---|")
    add(f"| {ticks['jobs']} | {ticks['ticks']} | {ticks['doubles']} | {ticks['missed']} |")
    add("")
    from benchmarks.fleet import report as fleet_report

    add(fleet_report(parts["fleet"], number=8).rstrip())
    return "\n".join(lines) + "\n"


def main() -> None:
    if "--soak" in sys.argv[1:]:
        from benchmarks.churn import main as soak

        soak([arg for arg in sys.argv[1:] if arg != "--soak"])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repetition")
    parser.add_argument(
        "--soak",
        action="store_true",
        help="the churn soak instead (benchmarks/churn.py; about 21 minutes; its own options)",
    )
    parser.add_argument("--output", type=Path, help="also write the report here")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        server = os.environ.get("DATABASE_URL") or local_server(stack)
        run_all(server, args.quick, args.output)


def local_server(stack: contextlib.ExitStack) -> str:
    """127.0.0.1:5432 when it answers, else an embedded PostgreSQL for this run."""
    try:
        psycopg.connect(DEFAULT_SERVER, connect_timeout=2).close()
    except psycopg.OperationalError:
        from notifyworker.up.embedded import embedded_postgres

        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nw-bench-pg-")))
        folder.chmod(0o755)  # the embedded server runs as its own user
        log("no PostgreSQL on 127.0.0.1:5432: using an embedded one")
        return stack.enter_context(embedded_postgres(folder / "data", delete=True))
    return DEFAULT_SERVER


def run_all(server: str, quick: bool, output: Path | None) -> None:
    bench = Bench(server, QUICK if quick else FULL)
    began = time.time()
    bench.create_databases()
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("drain", bench.measure_drain),
        ("pickup", bench.measure_pickup),
        ("limiter", bench.measure_limiter),
        ("enqueue", bench.measure_enqueue),
        ("producer", bench.measure_producer),
        ("trigger", bench.measure_trigger),
        ("big", bench.measure_big_table),
        ("rss", bench.measure_rss),
        ("schedules", bench.measure_schedules),
        ("fleet", bench.measure_fleet),
    ]
    parts = {name: step() for name, step in steps}
    text = report(bench, quick, parts, time.time() - began)
    print(text)
    if output:
        output.write_text(text)


if __name__ == "__main__":
    main()
