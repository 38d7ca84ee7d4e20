"""Prometheus metrics of one worker, in a registry of its own.

Several workers can share a process (the tests, `up`), so nothing goes to
prometheus_client's global registry. Counters and histograms are fed by
one-line hooks where things happen; state that already lives in an object
(the listener's connects, the recorder's backlog) is read at scrape time;
the jobs-by-status gauge is refreshed in the background, never by a scrape.
"""

from __future__ import annotations

import bisect
import itertools
import logging
from collections.abc import Iterator
from datetime import datetime
from typing import NoReturn

import anyio
from prometheus_client import CollectorRegistry, Counter, disable_created_metrics
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from notifyworker import store
from notifyworker.db import Database
from notifyworker.errors import ConnectionLost
from notifyworker.gauges import Readings
from notifyworker.models import (
    ClaimedJob,
    JobStatus,
    Outcome,
    PruneReport,
    SweepReport,
    pickup_seconds,
)

log = logging.getLogger(__name__)

# A `_created` series per label set only doubles what a scrape carries.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Pickup is milliseconds when the worker keeps up and seconds when it does not.
PICKUP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Handlers run from a millisecond to their timeout (10 s by default, often more).
RUN_BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
# Waits for a start slot: nothing when the rate keeps up, a backlog's length when not.
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0)


class Buckets:
    """A histogram's counts, kept without locks: every hook runs on the event loop's thread."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        les = [repr(float(bound)) for bound in self.bounds] + ["+Inf"]
        return list(zip(les, itertools.accumulate(self.counts), strict=True))


class TaskStats:
    """Counts of one task's jobs and its run-time histogram."""

    __slots__ = ("claimed", "finished", "run", "started")

    def __init__(self) -> None:
        self.claimed = 0
        self.started = 0
        self.finished: dict[str, int] = {}
        self.run = Buckets(RUN_BUCKETS)


class Metrics:
    """Every metric of one worker; `registry` is what /metrics serves.

    The per-job hooks run thousands of times a second on the claim-to-finish
    path, so they bump plain numbers (a microsecond or two per job, where
    prometheus_client's locked, labelled metrics cost over ten); the collector
    turns them into metric families when scraped.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.tasks: dict[str, TaskStats] = {}
        self.pickup = Buckets(PICKUP_BUCKETS)
        self.limiter_wait = Buckets(WAIT_BUCKETS)
        self._swept = Counter(
            "notifyworker_sweeper_jobs",
            "Jobs this worker's sweeper acted on, by action.",
            ["action"],
            registry=self.registry,
        )
        self._dead_workers = Counter(
            "notifyworker_sweeper_dead_workers",
            "Workers this worker's sweeper declared dead.",
            registry=self.registry,
        )
        self._pruned = Counter(
            "notifyworker_jobs_pruned",
            "Finished jobs this worker's pruner deleted past their retention, by status.",
            ["status"],
            registry=self.registry,
        )
        self.registry.register(JobStats(self))
        self.job_counts = JobCounts()
        self.registry.register(self.job_counts)
        # Values read from the worker's parts when scraped (`Readings.watch`).
        self.readings = Readings()
        self.registry.register(self.readings)

    def _task(self, task: str) -> TaskStats:
        stats = self.tasks.get(task)
        if stats is None:
            stats = self.tasks[task] = TaskStats()
        return stats

    def job_claimed(self, job: ClaimedJob) -> None:
        self._task(job.task).claimed += 1

    def limiter_waited(self, seconds: float) -> None:
        self.limiter_wait.observe(seconds)

    def job_started(self, job: ClaimedJob, started_at: datetime) -> None:
        self._task(job.task).started += 1
        self.pickup.observe(pickup_seconds(job.created_at, started_at))

    def job_finished(
        self, job: ClaimedJob, outcome: Outcome, started_at: datetime | None, at: datetime
    ) -> None:
        stats = self._task(job.task)
        stats.finished[outcome.status] = stats.finished.get(outcome.status, 0) + 1
        if started_at is not None:
            stats.run.observe(max((at - started_at).total_seconds(), 0.0))

    def swept(self, report: SweepReport) -> None:
        for action, jobs in (
            ("retried_overdue", report.overdue_retried),
            ("cancelled_overdue", report.overdue_cancelled),
            ("requeued_from_dead_worker", report.rescued_requeued),
            ("retried_from_dead_worker", report.rescued_retried),
            ("cancelled_on_dead_worker", report.rescued_cancelled),
        ):
            if jobs:
                self._swept.labels(action).inc(jobs)
        if report.dead_workers:
            self._dead_workers.inc(report.dead_workers)

    def pruned(self, report: PruneReport) -> None:
        for status, jobs in report.deleted.items():
            self._pruned.labels(status).inc(jobs)


class JobStats(Collector):
    """The per-job counters and histograms, as metric families."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        tasks = sorted(self._metrics.tasks.items())
        claimed = CounterMetricFamily(
            "notifyworker_jobs_claimed", "Jobs this worker claimed.", labels=["task"]
        )
        started = CounterMetricFamily(
            "notifyworker_jobs_started", "Jobs whose handler started here.", labels=["task"]
        )
        finished = CounterMetricFamily(
            "notifyworker_jobs_finished",
            "Jobs that ended here, by final status (done, failed, cancelled).",
            labels=["task", "status"],
        )
        run = HistogramMetricFamily(
            "notifyworker_job_run_seconds",
            "How long handlers ran (finished_at - started_at).",
            labels=["task"],
        )
        for task, stats in tasks:
            claimed.add_metric([task], stats.claimed)
            started.add_metric([task], stats.started)
            for status, jobs in sorted(stats.finished.items()):
                finished.add_metric([task, status], jobs)
            run.add_metric([task], stats.run.cumulative(), stats.run.total)
        yield from (claimed, started, finished, run)
        yield HistogramMetricFamily(
            "notifyworker_job_pickup_seconds",
            "From a job's INSERT to its handler's start (started_at - created_at).",
            buckets=self._metrics.pickup.cumulative(),
            sum_value=self._metrics.pickup.total,
        )
        yield HistogramMetricFamily(
            "notifyworker_limiter_wait_seconds",
            "How long claimed jobs waited for their start slot from the rate limiter.",
            buckets=self._metrics.limiter_wait.cumulative(),
            sum_value=self._metrics.limiter_wait.total,
        )


class JobCounts(Collector):
    """The jobs-by-status gauge, as of its last refresh (`job_counts`, sql/queries/service.sql)."""

    def __init__(self) -> None:
        self.counts: dict[JobStatus, float] = {}

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "notifyworker_jobs",
            "Jobs in the table by status: new, queued and running counted, "
            "done, failed and cancelled estimated from PostgreSQL's statistics.",
            labels=["status"],
        )
        for status, jobs in self.counts.items():
            family.add_metric([status], jobs)
        yield family


async def refresh_job_counts(db: Database, counts: JobCounts, interval: float) -> NoReturn:
    """Refresh the jobs-by-status gauge every `interval`, off every hot path."""
    said = ""
    while True:
        try:
            counts.counts = await db.run(store.job_counts)
        except ConnectionLost as exc:
            log.debug("job counts not refreshed: %s", exc)  # the heartbeat reports outages
        except Exception as exc:  # noqa: BLE001 - a gauge is never worth the worker
            if str(exc) != said:  # once, not every interval: the worker itself is fine
                log.warning("the jobs-by-status gauge cannot be refreshed: %s", exc)
                said = str(exc)
        await anyio.sleep(interval)
