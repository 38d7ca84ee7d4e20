"""The fleet section of `just bench` (issue 11): limits that hold for the whole fleet.

    python -m benchmarks.fleet [--quick] [--only rate,kill,...] [--output FILE] [--json FILE]

N worker processes of `benchmarks.systems nw worker` (as the rest of the bench
starts them) serve one database; what they did is read back from the table
(started_at, finished_at, created_at), so every process counts, including one
that was SIGKILLed. The parts, each runnable alone with --only:

    rate     fleet-wide rate with 1, 3 and 5 processes (notifyworker.queues.rate)
    kill     the same with one of three processes SIGKILLed a third of the way in
    keys     key_concurrency (interval overlap per key) and key_rate (per-key rate)
    fair     one key B job behind key A's 10,000-job backlog: B's pickup
    drain    20,000 no-op jobs, no limits, 1 and 3 processes: jobs/s
    big      claim_v1 on a big table (1 M finished, 100 k waiting, 10 queues, 100 keys)
    wake     claims per job and idle pickup with 1, 3, 5 processes (benchmarks/wake.py)

`drain` touches neither the new columns nor notifyworker.queues, so the same
file measures a checkout from before issue 11 (the ratio the issue asks for).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import psycopg
from psycopg import sql

from benchmarks.run import OUTSTANDING, ROOT, Bench, as_url, log, max_in_window, med

T = TypeVar("T")

# -- sizes -------------------------------------------------------------------


@dataclass(frozen=True)
class FleetSizes:
    reps: int
    processes: tuple[int, ...]  # the fleet-wide rate, with this many processes each
    rates: tuple[tuple[float, int], ...]  # (rate per second, jobs)
    kills: tuple[tuple[float, int], ...]  # the same, with one of three processes killed
    key_concurrency_jobs: int  # 50 ms jobs over 20 keys
    key_rate_jobs: int  # per key, 10 keys
    fair_backlog: int  # key A's jobs waiting
    drain: int
    big_done: int
    big_waiting: int
    big_claims: int  # per variant


FULL = FleetSizes(
    reps=3,
    processes=(1, 3, 5),
    rates=((50, 1_500), (2_000, 20_000)),
    kills=((50, 1_500), (2_000, 20_000)),
    key_concurrency_jobs=4_000,
    key_rate_jobs=100,
    fair_backlog=10_000,
    drain=20_000,
    big_done=1_000_000,
    big_waiting=100_000,
    big_claims=200,
)
QUICK = FleetSizes(
    reps=1,
    processes=(1, 3),
    rates=((50, 300), (2_000, 4_000)),
    kills=((50, 300), (2_000, 6_000)),
    key_concurrency_jobs=1_000,
    key_rate_jobs=30,
    fair_backlog=10_000,
    drain=10_000,
    big_done=100_000,
    big_waiting=10_000,
    big_claims=100,
)

PARTS = ("rate", "kill", "keys", "fair", "drain", "big", "wake")

# Each process: trio, a no-op (or 50 ms) handler, slots enough not to bind,
# and its own rate 0: where the queue has a fleet rate it is the only pacing.
CONCURRENCY = 50
DRAIN_CONCURRENCY = 100  # as section 1's headline configuration
HEARTBEAT = 1.0
DEAD_AFTER = 3.0
KEY_COUNT, KEY_CONCURRENCY, NAP_MS = 20, 2, 50.0
KEY_RATE_KEYS, KEY_RATE = 10, 5.0
FAIR_KEY_CONCURRENCY = 5
BIG_QUEUES, BIG_KEYS = 10, 100
BIG_TARGET_MS = 3.0

# -- the table ---------------------------------------------------------------

# Jobs for the queue 'default' (the column's default), `keys` keys round-robin (0: no key).
INSERT_JOBS = """
INSERT INTO notifyworker.jobs (task, payload, limit_key)
SELECT %(task)s, jsonb_build_object('seq', n, 'ms', %(ms)s),
       CASE WHEN %(keys)s > 0 THEN %(prefix)s || lpad((n %% greatest(%(keys)s, 1))::text, 3, '0') END
FROM generate_series(1, %(count)s) AS n
"""
# The plain INSERT of section 1: no new column named.
INSERT_PLAIN = """
INSERT INTO notifyworker.jobs (task, payload)
SELECT 'bench', jsonb_build_object('seq', n) FROM generate_series(1, %s) AS n
"""
SET_QUEUE = """
INSERT INTO notifyworker.queues (name, rate, concurrency, key_rate, key_concurrency)
VALUES (%(name)s, %(rate)s, %(concurrency)s, %(key_rate)s, %(key_concurrency)s)
ON CONFLICT (name) DO UPDATE SET rate = excluded.rate, concurrency = excluded.concurrency,
    key_rate = excluded.key_rate, key_concurrency = excluded.key_concurrency
"""
STARTS = """
SELECT extract(epoch FROM started_at)::float8 FROM notifyworker.jobs
WHERE started_at IS NOT NULL ORDER BY started_at
"""
PICKED_UP = "SELECT 1 FROM notifyworker.jobs WHERE id = %s AND started_at IS NOT NULL"
# B's pickup; A's jobs that had not started when B's did (exact, from the table);
# and how fast A's backlog was being worked until then (starts per second).
FAIR = """
SELECT extract(epoch FROM b.started_at - b.created_at)::float8 * 1000,
       count(*) FILTER (WHERE a.started_at IS NULL OR a.started_at > b.started_at),
       count(*) FILTER (WHERE a.started_at <= b.started_at)
           / extract(epoch FROM b.started_at - min(a.created_at))::float8
FROM notifyworker.jobs AS b, notifyworker.jobs AS a
WHERE b.id = %s AND a.limit_key LIKE 'A%%'
GROUP BY b.started_at, b.created_at
"""
# Each start, and whether the job is back from a dead worker (the sweeper's rescue).
STARTS_RESCUED = """
SELECT extract(epoch FROM started_at)::float8, lost_claims > 0 OR attempts > 1
FROM notifyworker.jobs WHERE started_at IS NOT NULL ORDER BY started_at
"""
RUNS = """
SELECT limit_key, extract(epoch FROM started_at)::float8, extract(epoch FROM finished_at)::float8
FROM notifyworker.jobs WHERE started_at IS NOT NULL AND finished_at IS NOT NULL
"""


def queue_settings(
    rate: float | None = None,
    concurrency: int | None = None,
    key_rate: float | None = None,
    key_concurrency: int | None = None,
    name: str = "default",
) -> dict[str, Any]:
    return {
        "name": name,
        "rate": rate,
        "concurrency": concurrency,
        "key_rate": key_rate,
        "key_concurrency": key_concurrency,
    }


# -- arithmetic (pure; tests/test_fleet_bench.py) ------------------------------


def middle_rate(times: list[float]) -> float:
    """Starts per second over the middle 80% of the run's span (as section 3 counts)."""
    first, last = times[0], times[-1]
    lo, hi = first + 0.1 * (last - first), last - 0.1 * (last - first)
    middle = [t for t in times if lo <= t <= hi]
    if len(middle) < 2 or middle[-1] == middle[0]:
        return float("nan")
    return (len(middle) - 1) / (middle[-1] - middle[0])


def max_overlap(intervals: Iterable[tuple[float, float]]) -> int:
    """Most intervals open at once; one that ends as another starts does not overlap it."""
    events = sorted(e for start, end in intervals for e in ((start, 1), (end, -1)))
    best = running = 0
    for _, delta in events:  # at equal times -1 sorts first
        running += delta
        best = max(best, running)
    return best


def fullest_window(times: list[float], width: float) -> tuple[int, float]:
    """The most starts in any `width` (as max_in_window counts them), and the first
    start of the first window that holds that many; `times` sorted."""
    best, at, lo = 0, float("nan"), 0
    for hi, t in enumerate(times):
        while t - times[lo] >= width:
            lo += 1
        if hi - lo + 1 > best:
            best, at = hi - lo + 1, times[lo]
    return best, at


def over_bound_pct(times: list[float], width: float, bound: float) -> float:
    """Of the windows that end at a start, the % holding more than `bound` starts."""
    over, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= width:
            lo += 1
        over += hi - lo + 1 > bound
    return over / len(times) * 100 if times else 0.0


def rolling_rate(times: list[float], at: float, window: float = 1.0) -> float:
    """Starts per second in (at - window, at]; `times` sorted."""
    return (bisect.bisect_right(times, at) - bisect.bisect_right(times, at - window)) / window


def recovery(
    times: list[float],
    since: float,
    rate: float,
    tolerance: float = 0.05,
    window: float = 1.0,
    step: float = 0.01,
) -> tuple[float | None, float]:
    """After `since` (a kill): seconds until the rolling rate is back within `tolerance`
    of `rate` for good (0: it never left; None: not by the end of the run), and the
    lowest rolling rate (NaN: no window ends after `since`). Windows end on a grid of
    `step` up to the last start, each whole (`window` long, inside the run)."""
    if not times:
        return None, float("nan")
    at = max(since, times[0] + window)
    last_bad: float | None = None
    back_at: float | None = None
    lowest = float("inf")
    while at <= times[-1]:
        current = rolling_rate(times, at, window)
        lowest = min(lowest, current)
        if abs(current / rate - 1) > tolerance:
            last_bad, back_at = at, None
        elif last_bad is not None and back_at is None:
            back_at = at
        at += step
    if lowest == float("inf"):
        return None, float("nan")
    if last_bad is None:
        return 0.0, lowest
    return (None if back_at is None else back_at - since), lowest


def per_key_rates(runs: Iterable[tuple[str, float]]) -> dict[str, float]:
    """Each key's middle-80% rate, from (key, started_at)."""
    by_key: dict[str, list[float]] = {}
    for key, started in runs:
        by_key.setdefault(key, []).append(started)
    return {key: middle_rate(sorted(times)) for key, times in sorted(by_key.items())}


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- the fleet -----------------------------------------------------------------


class Fleet:
    """`count` worker processes on the bench's notifyworker database, started side by
    side, each with stderr in its own log file (a chatty worker never blocks on a pipe)."""

    def __init__(self, bench: Bench, count: int, opts: dict[str, Any], name: str) -> None:
        self.bench, self.count, self.opts, self.name = bench, count, opts, name
        self.processes: list[subprocess.Popen[str]] = []
        self.logs: list[IO[str]] = []
        self.killed: set[int] = set()

    def log_path(self, n: int) -> Path:
        return self.bench.tmp / f"fleet-{self.name}-{n}.log"

    def __enter__(self) -> Fleet:
        try:
            for n in range(self.count):
                err = self.log_path(n).open("w")
                self.logs.append(err)
                self.processes.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "benchmarks.systems",
                            "nw",
                            "worker",
                            self.bench.dsn["nw"],
                            str(self.bench.tmp / f"fleet-{self.name}-{n}.json"),
                            json.dumps(self.opts),
                        ],
                        cwd=ROOT,
                        stdout=subprocess.PIPE,
                        stderr=err,
                        text=True,
                    )
                )
            for n, process in enumerate(self.processes):
                assert process.stdout is not None
                if not process.stdout.readline().startswith("READY"):
                    raise RuntimeError(
                        f"fleet {self.name}: worker {n} did not start: {self.tail(n)}"
                    )
        except BaseException:
            self.stop(check=False)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(check=exc[0] is None)

    def kill(self, n: int) -> None:
        self.processes[n].send_signal(signal.SIGKILL)
        self.processes[n].wait()
        self.killed.add(n)

    def tail(self, n: int) -> str:
        self.logs[n].flush()
        return self.log_path(n).read_text()[-2000:]

    def stop(self, check: bool) -> None:
        for n, process in enumerate(self.processes):
            if n not in self.killed and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        problems = []
        for n, process in enumerate(self.processes):
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                problems.append(f"worker {n} did not stop on SIGTERM")
            if n not in self.killed and process.returncode:
                problems.append(f"worker {n} exited {process.returncode}: {self.tail(n)}")
            if process.stdout:
                process.stdout.close()
        for err in self.logs:
            err.close()
        if check and problems:
            raise RuntimeError(f"fleet {self.name}: " + "; ".join(problems))


def worker_opts(concurrency: int = CONCURRENCY, **settings: Any) -> dict[str, Any]:
    return {"concurrency": concurrency, "rate": 0, "settings": settings}


# -- the measurements ------------------------------------------------------------


class FleetBench:
    def __init__(self, bench: Bench, sizes: FleetSizes) -> None:
        self.bench, self.sizes = bench, sizes
        self.dsn = bench.dsn["nw"]

    def connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(self.dsn, autocommit=True)

    def fresh(self, queue: dict[str, Any] | None = None) -> None:
        """An empty table (and queues), `queue`'s settings in place."""
        self.bench.reset("nw")
        if queue:
            with self.connect() as conn:
                conn.execute(SET_QUEUE, queue)

    def insert(
        self, count: int, keys: int = 0, task: str = "bench", prefix: str = "k", ms: float = 0
    ) -> float:
        """`count` jobs in one statement; the time.time() of its commit."""
        with self.connect() as conn:
            conn.execute(
                INSERT_JOBS,
                {"task": task, "ms": ms, "keys": keys, "prefix": prefix, "count": count},
            )
            return time.time()

    def wait_done(self, deadline: float) -> float:
        """Polls (5 ms) until nothing is outstanding; time.time() then."""
        with self.connect() as conn:
            query = OUTSTANDING["nw"].encode()
            while (row := conn.execute(query).fetchone()) and row[0]:
                if time.time() > deadline:
                    raise RuntimeError(
                        f"fleet: jobs outstanding at the deadline ({self.counts()}); "
                        f"the workers' logs: {self.bench.tmp}/fleet-*.log"
                    )
                time.sleep(0.005)
        return time.time()

    def starts(self) -> list[float]:
        with self.connect() as conn:
            return [float(t) for (t,) in conn.execute(STARTS).fetchall()]

    def runs(self) -> list[tuple[str | None, float, float]]:
        with self.connect() as conn:
            return [(k, float(s), float(f)) for k, s, f in conn.execute(RUNS).fetchall()]

    def counts(self) -> dict[str, int]:
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT status, count(*) FROM notifyworker.jobs GROUP BY status"
            ).fetchall()
        return {str(status): int(n) for status, n in rows}

    # 1. Fleet-wide rate --------------------------------------------------------

    def rate(self) -> dict[str, dict[str, list[float]]]:
        cases = [(rate, count, n) for rate, count in self.sizes.rates for n in self.sizes.processes]
        results: dict[str, dict[str, list[float]]] = {}
        for rep in range(self.sizes.reps):
            for rate, count, n in rotate(cases, rep):
                label = f"{count:,} jobs at {rate:,.0f}/s, {n} process(es)"
                self.fresh(queue_settings(rate=rate))
                with Fleet(self.bench, n, worker_opts(), f"rate{n}"):
                    began = self.insert(count)
                    self.wait_done(began + count / rate * 3 + 30)
                times = self.starts()
                if len(times) != count:
                    raise RuntimeError(f"{label}: {len(times)} starts of {count} jobs")
                achieved = middle_rate(times)
                burst, burst_at = fullest_window(times, 0.1)
                row = results.setdefault(label, {})
                row.setdefault("rate", []).append(achieved)
                row.setdefault("error_pct", []).append(abs(achieved / rate - 1) * 100)
                row.setdefault("max_100ms", []).append(burst)
                row.setdefault("max_100ms_at_s", []).append(burst_at - times[0])
                row.setdefault("windows_over_bound_pct", []).append(
                    over_bound_pct(times, 0.1, rate * 0.1 + 1)
                )
                row.setdefault("bound", []).append(rate * 0.1 + 1)
                log(
                    f"fleet rate {label}: {achieved:.2f}/s, max {burst} per 100 ms "
                    f"at +{burst_at - times[0]:.2f} s"
                )
        return results

    # 2. One of three killed --------------------------------------------------------

    def kill(self) -> dict[str, dict[str, list[float]]]:
        """Three processes, one SIGKILLed a third of the way in. The jobs it held come
        back with the sweeper (`lost_claims` > 0) after dead_worker_after: the rescue,
        reported apart. Where it comes after the others have all started (2,000/s), it
        is left out of the rate after the kill and of its recovery; where it lands among
        them (50/s), its jobs take fleet slots like any other. A job whose start the
        killed worker had not yet written shows where it ran again."""
        results: dict[str, dict[str, list[float]]] = {}
        opts = worker_opts(heartbeat_interval=HEARTBEAT, dead_worker_after=DEAD_AFTER)
        for rep in range(self.sizes.reps):
            for rate, count in rotate(list(self.sizes.kills), rep):
                label = f"{count:,} jobs at {rate:,.0f}/s, 3 processes, one SIGKILLed"
                self.fresh(queue_settings(rate=rate))
                with Fleet(self.bench, 3, opts, "kill") as fleet:
                    began = self.insert(count)
                    time.sleep(max(0.0, began + count / rate / 3 - time.time()))
                    killed_at = time.time()
                    fleet.kill(0)
                    self.wait_done(began + count / rate * 3 + DEAD_AFTER + 30)
                with self.connect() as conn:
                    rows = conn.execute(STARTS_RESCUED).fetchall()
                counts = self.counts()
                times = [float(t) for t, _ in rows]
                rescued = [float(t) for t, rescued in rows if rescued]
                # The run's end: the last start of a job the killed worker never held
                # (where the rescue comes later, it is not part of the stream's rate).
                end = max(float(t) for t, rescued in rows if not rescued)
                stream = [t for t in times if t <= end]
                after = [t for t in stream if t > killed_at]
                rest = len(after) / (end - killed_at) if after else float("nan")
                back, lowest = recovery(stream, killed_at, rate)
                burst, burst_at = fullest_window(times, 0.1)
                row = results.setdefault(label, {})
                row.setdefault("rate_after", []).append(rest)
                row.setdefault("error_after_pct", []).append(abs(rest / rate - 1) * 100)
                row.setdefault("back_within_5pct_s", []).append(
                    float("inf") if back is None else back
                )
                row.setdefault("lowest_1s_rate", []).append(lowest)
                row.setdefault("max_100ms", []).append(burst)
                row.setdefault("max_100ms_at_s", []).append(burst_at - killed_at)
                row.setdefault("bound", []).append(rate * 0.1 + 1)
                row.setdefault("rescued", []).append(len(rescued))
                row.setdefault("rescued_after_s", []).append(
                    min(rescued) - killed_at if rescued else float("nan")
                )
                row.setdefault("not_done", []).append(count - counts.get("done", 0))
                log(
                    f"fleet kill {label}: {rest:.2f}/s after, back within 5% after "
                    f"{back if back is None else round(back, 2)} s, lowest {lowest:.1f}/s, "
                    f"{len(rescued)} rescued, max {burst} per 100 ms at {burst_at - killed_at:+.2f} s "
                    f"from the kill, statuses {counts}"
                )
        return results

    # 3. Key limits ------------------------------------------------------------------

    def keys(self) -> dict[str, dict[str, list[float]]]:
        results: dict[str, dict[str, list[float]]] = {}
        count = self.sizes.key_concurrency_jobs
        per_key = self.sizes.key_rate_jobs
        for rep in range(self.sizes.reps):
            for case in rotate(["concurrency", "rate"], rep):
                if case == "concurrency":
                    label = (
                        f"key_concurrency {KEY_CONCURRENCY}: {count:,} jobs of {NAP_MS:.0f} ms, "
                        f"{KEY_COUNT} keys, 3 processes"
                    )
                    self.fresh(queue_settings(key_concurrency=KEY_CONCURRENCY))
                    with Fleet(self.bench, 3, worker_opts(), "keyc"):
                        began = self.insert(count, KEY_COUNT, "bench_sleep", ms=NAP_MS)
                        ideal = count / KEY_COUNT / KEY_CONCURRENCY * NAP_MS / 1000
                        done = self.wait_done(began + ideal * 5 + 30)
                    by_key: dict[str, list[tuple[float, float]]] = {}
                    runs = self.runs()
                    for key, started, finished in runs:
                        by_key.setdefault(str(key), []).append((started, finished))
                    if len(runs) != count:
                        raise RuntimeError(f"{label}: {len(runs)} runs of {count} jobs")
                    most = max(max_overlap(spans) for spans in by_key.values())
                    row = results.setdefault(label, {})
                    row.setdefault("most_of_one_key", []).append(most)
                    row.setdefault("most_at_once", []).append(
                        max_overlap((s, f) for _, s, f in runs)
                    )
                    row.setdefault("jobs_per_s", []).append(count / (done - began))
                    log(f"fleet {label}: most of one key at once {most}")
                else:
                    label = (
                        f"key_rate {KEY_RATE:g}/s: {KEY_RATE_KEYS} keys × {per_key} jobs, "
                        "3 processes"
                    )
                    self.fresh(queue_settings(rate=0, key_rate=KEY_RATE))
                    with Fleet(self.bench, 3, worker_opts(), "keyr"):
                        began = self.insert(per_key * KEY_RATE_KEYS, KEY_RATE_KEYS)
                        self.wait_done(began + per_key / KEY_RATE * 3 + 30)
                    runs = self.runs()
                    rates = per_key_rates((str(k), s) for k, s, _ in runs)
                    errors = [abs(r / KEY_RATE - 1) * 100 for r in rates.values()]
                    bursts = []
                    for key in rates:
                        times = sorted(s for k, s, _ in runs if k == key)
                        bursts.append(max_in_window(times, 1.0))
                    row = results.setdefault(label, {})
                    row.setdefault("worst_error_pct", []).append(max(errors))
                    row.setdefault("slowest_key", []).append(min(rates.values()))
                    row.setdefault("fastest_key", []).append(max(rates.values()))
                    row.setdefault("most_of_one_key_1s", []).append(max(bursts))
                    log(
                        f"fleet {label}: per-key {min(rates.values()):.3f}–"
                        f"{max(rates.values()):.3f}/s, worst error {max(errors):.2f}%, "
                        f"most of one key in 1 s {max(bursts)}"
                    )
        return results

    # 4. Fair share ------------------------------------------------------------------

    def fair(self) -> dict[str, dict[str, list[float]]]:
        results: dict[str, dict[str, list[float]]] = {}
        backlog = self.sizes.fair_backlog
        cases = [
            (f"key_concurrency {FAIR_KEY_CONCURRENCY}", FAIR_KEY_CONCURRENCY),
            ("no key limits", None),
        ]
        for rep in range(self.sizes.reps):
            for name, limit in rotate(cases, rep):
                label = f"{backlog:,} of key A waiting ({NAP_MS:.0f} ms each), {name}, 3 processes"
                self.fresh(queue_settings(key_concurrency=limit) if limit else None)
                with Fleet(self.bench, 3, worker_opts(), "fair"), self.connect() as conn:
                    self.insert(backlog, 1, "bench_sleep", prefix="A", ms=NAP_MS)
                    time.sleep(0.5)  # A's backlog is being worked
                    inserted = conn.execute(
                        "INSERT INTO notifyworker.jobs (task, payload, limit_key)"
                        " VALUES ('bench', '{\"seq\": -1}', 'B') RETURNING id"
                    ).fetchone()
                    assert inserted is not None
                    deadline = time.time() + 30
                    while not conn.execute(PICKED_UP, inserted).fetchone():
                        if time.time() > deadline:
                            raise RuntimeError(f"fair share, {name}: B's job waited 30 s")
                        time.sleep(0.005)
                with self.connect() as conn:
                    row = conn.execute(FAIR, inserted).fetchone()
                assert row is not None
                pickup, waiting, a_rate = float(row[0]), int(row[1]), float(row[2])
                results.setdefault(label, {}).setdefault("pickup_ms", []).append(pickup)
                results[label].setdefault("a_waiting", []).append(waiting)
                results[label].setdefault("a_per_s", []).append(a_rate)
                log(
                    f"fleet fair {label}: B's pickup {pickup:.1f} ms, {waiting:,} of A waiting, "
                    f"A's backlog worked at {a_rate:,.0f} starts/s until then"
                )
        return results

    # 5. Drain ---------------------------------------------------------------------------

    def drain(self) -> dict[str, list[float]]:
        """Idle workers, then the jobs in one INSERT: jobs/s from its commit until none
        is outstanding. Plain INSERT, no queue settings: the code path from before."""
        count = self.sizes.drain
        results: dict[str, list[float]] = {}
        for rep in range(self.sizes.reps):
            for n in rotate([1, 3], rep):
                label = f"{count:,} no-op jobs, {n} process(es), concurrency {DRAIN_CONCURRENCY}"
                self.fresh()
                with Fleet(self.bench, n, worker_opts(DRAIN_CONCURRENCY), f"drain{n}"):
                    with self.connect() as conn:
                        conn.execute(INSERT_PLAIN, (count,))
                        began = time.time()
                    done = self.wait_done(began + 120)
                counts = self.counts()
                if counts.get("done") != count:
                    raise RuntimeError(f"drain {label}: {counts}")
                results.setdefault(label, []).append(count / (done - began))
                log(f"fleet drain {label}: {count / (done - began):,.0f} jobs/s")
        return results

    # 6. The big-table claim ---------------------------------------------------------------

    def big(self) -> dict[str, list[float]]:
        from benchmarks.bigtable import claim_v1_latencies

        return claim_v1_latencies(
            self.dsn, self.sizes.big_done, self.sizes.big_waiting, self.sizes.big_claims
        )

    # 7. Claims per job and idle pickup ---------------------------------------------------------

    def wake(self) -> str | None:
        """Claims per job and idle pickup with 1, 3 and 5 idle processes at 20 jobs/s:
        benchmarks/wake.py's measurement (its own database per fleet size)."""
        from benchmarks.wake import measure as measure_wake
        from benchmarks.wake import report as report_wake

        seconds = 15.0 if self.sizes.reps > 1 else 5.0
        sizes = (1, 3, 5) if self.sizes.reps > 1 else (1, 3)
        runs = [measure_wake(self.bench.server, ROOT, n, 20, seconds) for n in sizes]
        return report_wake(runs, 20, seconds, ROOT)


def rotate(items: list[T], rep: int) -> list[T]:
    shift = rep % len(items)
    return items[shift:] + items[:shift]


# -- the report ----------------------------------------------------------------------


def measure(bench: Bench, quick: bool, only: Iterable[str] = PARTS) -> dict[str, Any]:
    """Every part named in `only`, on the bench's notifyworker database."""
    fleet = FleetBench(bench, QUICK if quick else FULL)
    began = time.time()
    results: dict[str, Any] = {"sizes": asdict(fleet.sizes)}
    for part in PARTS:
        if part in only:
            results[part] = getattr(fleet, part)()
    fleet.fresh()  # leave no big table behind
    results["seconds"] = time.time() - began
    return results


def _report_rate(results: dict[str, Any], add: Callable[[str], None]) -> None:
    add("")
    add(
        "Fleet-wide rate (`rate` of the queue, no-op jobs). The fullest 100 ms window: its "
        "count against the bound `rate × 0.1 + 1`, where it begins (seconds after the first "
        "start), and the share of windows ending at a start that hold more than the bound."
    )
    add("")
    add(
        "| case | achieved rate over the middle 80% | error | most starts in any 100 ms "
        "(bound) | at | windows over the bound |"
    )
    add("|---|---|---|---|---|---|")
    for label, row in results["rate"].items():
        add(
            f"| {label} | {med(row['rate'], '{:.2f}')}/s | {med(row['error_pct'], '{:.2f}')}% "
            f"| {med(row['max_100ms'])} ({row['bound'][0]:.0f}) "
            f"| +{med(row['max_100ms_at_s'], '{:.2f}')} s "
            f"| {med(row['windows_over_bound_pct'], '{:.1f}')}% |"
        )


def _report_kill(results: dict[str, Any], add: Callable[[str], None]) -> None:
    add("")
    add(
        f"One of three processes SIGKILLed a third of the way in (heartbeat "
        f"{HEARTBEAT:g} s, dead_worker_after {DEAD_AFTER:g} s). The jobs it held (claimed "
        "ahead, or started but not yet written) come back with the sweeper and run again: "
        "'rescued', with the time from the kill to the first of them. The run ends at the "
        "last start of a job the killed worker never held (a rescue that comes later is "
        "left out); the rate after the kill is the starts from the kill to that end over "
        "that time; 'back within 5%' is when the rolling 1-second rate last re-entered ±5% "
        "of the target, from the kill (0: it never left); the fullest 100 ms window is "
        "over the whole run, placed from the kill."
    )
    add("")
    add(
        "| case | rate after the kill | error | back within 5% after | lowest 1-s rate "
        "| rescued (after) | most starts in any 100 ms (bound), from the kill | jobs not done |"
    )
    add("|---|---|---|---|---|---|---|---|")
    for label, row in results["kill"].items():
        add(
            f"| {label} | {med(row['rate_after'], '{:.2f}')}/s | "
            f"{med(row['error_after_pct'], '{:.2f}')}% | "
            f"{med(row['back_within_5pct_s'], '{:.2f}')} s | "
            f"{med(row['lowest_1s_rate'], '{:.0f}')}/s | {med(row['rescued'])} "
            f"({med(row['rescued_after_s'], '{:.1f}')} s) | {med(row['max_100ms'])} "
            f"({row['bound'][0]:.0f}), {med(row['max_100ms_at_s'], '{:+.2f}')} s "
            f"| {med(row['not_done'])} |"
        )


def _report_keys(results: dict[str, Any], add: Callable[[str], None]) -> None:
    add("")
    add(
        "Limits per key. key_concurrency: the most of one key's jobs running at once, an "
        "overlap sweep of [started_at, finished_at] (inside the time the job is held, so "
        "never an over-count). key_rate: each key's rate over its middle 80%."
    )
    add("")
    add("| case | result | bound |")
    add("|---|---|---|")
    for label, row in results["keys"].items():
        if "most_of_one_key" in row:
            add(
                f"| {label} | most of one key at once {med(row['most_of_one_key'])}; "
                f"all keys {med(row['most_at_once'])}; {med(row['jobs_per_s'])} jobs/s "
                f"| {KEY_CONCURRENCY} |"
            )
        else:
            add(
                f"| {label} | worst per-key error {med(row['worst_error_pct'], '{:.2f}')}% "
                f"(keys {med(row['slowest_key'], '{:.3f}')} to "
                f"{med(row['fastest_key'], '{:.3f}')}/s); most of one key's starts in "
                f"any 1 s {med(row['most_of_one_key_1s'])} | 5%; {KEY_RATE + 1:.0f} |"
            )


def _report_fair(results: dict[str, Any], add: Callable[[str], None]) -> None:
    add("")
    add(
        "Fair share: one job of key B inserted 0.5 s after key A's backlog. (With no key "
        "limits, 3 processes × 50 slots of 50 ms jobs could start A's jobs at 3,000/s.)"
    )
    add("")
    add(
        "| case | B's pickup (started_at − created_at) | A's jobs not started when B's did "
        "| A's starts/s until then |"
    )
    add("|---|---|---|---|")
    for label, row in results["fair"].items():
        add(
            f"| {label} | {med(row['pickup_ms'], '{:.1f}')} ms | {med(row['a_waiting'])} "
            f"| {med(row['a_per_s'])} |"
        )


def _report_drain(results: dict[str, Any], add: Callable[[str], None]) -> None:
    add("")
    add(
        "Drain, no limits: idle processes, then the jobs in one INSERT; from its commit "
        "until none is outstanding. The same file measures a checkout from before "
        "issue 11 (`python -m benchmarks.fleet --only drain`)."
    )
    add("")
    add("| case | jobs/s |")
    add("|---|---|")
    for label, values in results["drain"].items():
        add(f"| {label} | {med(values)} |")


def _report_big(results: dict[str, Any], add: Callable[[str], None]) -> None:
    big = results["big"]
    sizes = results["sizes"]
    add("")
    add(
        f"claim_v1 on a big table: {sizes['big_done']:,} finished rows, "
        f"{sizes['big_waiting']:,} waiting across {BIG_QUEUES} queues and {BIG_KEYS} keys "
        "(every key in every queue); one session as a worker's, claimed jobs put back "
        "after each variant; round trip with the rows fetched (ms)."
    )
    add("")
    add("| claim | median | p90 | target |")
    add("|---|---|---|---|")
    for label, values in big.items():
        add(
            f"| {label} | {statistics.median(values):.3f} | {quantile(values, 0.9):.3f} "
            f"| < {BIG_TARGET_MS:g} |"
        )


def _report_wake(results: dict[str, Any], add: Callable[[str], None]) -> None:
    add("")
    if results["wake"] is None:
        add(
            "Claims per job and idle pickup p50 with 1, 3 and 5 processes: measured by "
            "`benchmarks/wake.py` (not part of this run)."
        )
    else:
        add(str(results["wake"]).rstrip())


REPORTS: dict[str, Callable[[dict[str, Any], Callable[[str], None]], None]] = {
    "rate": _report_rate,
    "kill": _report_kill,
    "keys": _report_keys,
    "fair": _report_fair,
    "drain": _report_drain,
    "big": _report_big,
    "wake": _report_wake,
}


def report(results: dict[str, Any], number: int = 8) -> str:
    lines: list[str] = []
    add = lines.append
    add(
        f"### {number}. Fleet: limits for the whole fleet ({results['seconds']:.0f} s; "
        f"{results['sizes']['reps']} repetition(s))"
    )
    add("")
    add(
        f"N processes of `benchmarks.systems nw worker` (trio, concurrency {CONCURRENCY}, "
        "their own rate 0: a queue's fleet settings in `notifyworker.queues` are the only "
        "limit); every figure is read from the table (`started_at`, `finished_at`, "
        "`created_at`), all processes together."
    )
    for part, write in REPORTS.items():
        if part in results:
            write(results, add)
    return "\n".join(lines) + "\n"


def create_database(bench: Bench, name: str) -> None:
    """A notifyworker database of its own for the section run alone, fresh, migrated."""
    bench.dsn["nw"] = as_url(bench.server, name)
    with psycopg.connect(bench.server, autocommit=True) as conn:
        identifier = sql.Identifier(name)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(identifier))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(identifier))
    bench.child("nw", "install", {}).check_returncode()


def main(argv: list[str] | None = None) -> None:
    from benchmarks.run import QUICK as RUN_QUICK
    from benchmarks.run import local_server

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repetition")
    parser.add_argument(
        "--only", default=",".join(PARTS), help=f"comma-separated parts: {', '.join(PARTS)}"
    )
    parser.add_argument("--output", type=Path, help="also write the markdown report here")
    parser.add_argument("--json", type=Path, help="write the raw figures here")
    parser.add_argument(
        "--database",
        default="bench_fleet",
        help="the database to (re)create on the server (default bench_fleet)",
    )
    args = parser.parse_args(argv)
    only = [part.strip() for part in args.only.split(",") if part.strip()]
    if unknown := set(only) - set(PARTS):
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    with contextlib.ExitStack() as stack:
        server = os.environ.get("DATABASE_URL") or local_server(stack)
        bench = Bench(server, RUN_QUICK)
        create_database(bench, args.database)
        results = measure(bench, args.quick, only)
    text = report(results)
    print(text)
    if args.output:
        args.output.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
