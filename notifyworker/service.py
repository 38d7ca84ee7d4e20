"""The worker: the composition root that owns every task in one nursery tree.

    root nursery
    ├── heartbeat                      (until the very end)
    ├── health server, job counts      (/livez, /readyz, /metrics; until the very end)
    ├── grace timer                    (once a stop is asked)
    └── watchers nursery               (listener, sweeper, recorder)
        └── consumers nursery          (`concurrency` consumers)
            └── claiming nursery       (the claimer)

Start-up loses nothing: the listener reports started only once LISTENing,
consumers exist before anything is claimed, and the claimer's first pass
takes whatever was inserted before. Shutdown runs the other way: the claimer
stops (the channel closes), running jobs get `shutdown_grace` while the
sweeper and listener still watch them, the rest are cancelled, and
claimed-but-unstarted jobs go back to `new`.
"""

from __future__ import annotations

import logging
import math
import signal
import uuid

import trio

from notifyworker import schema, store
from notifyworker.backoff import Backoff
from notifyworker.claimer import Claimer
from notifyworker.config import Settings
from notifyworker.consumer import ConsumerContext, consume, watch_deadlines
from notifyworker.coordination import Demand
from notifyworker.db import Database, ListenConnection, redact
from notifyworker.errors import (
    AccessDenied,
    ConnectionLost,
    DatabaseError,
    SchemaMissing,
    SchemaOutdated,
)
from notifyworker.health import make_app, serve
from notifyworker.heartbeat import beat_forever, register
from notifyworker.inflight import Held, InFlight, Stage
from notifyworker.limiter import FixedIntervalLimiter
from notifyworker.listener import listen
from notifyworker.metrics import Metrics, refresh_job_counts
from notifyworker.models import RetryPolicy, WorkerId
from notifyworker.ownership import Ownership
from notifyworker.recorder import Recorder
from notifyworker.sweeper import Sweeper
from notifyworker.tasks import Registry

log = logging.getLogger(__name__)

# After the grace period, cancelled jobs still get this long to record their
# outcome before the worker gives up on the database and exits.
FINAL_WRITE_LIMIT = 10.0
# How often the worker checks its own running jobs against their deadlines.
WATCHDOG_INTERVAL = 0.5
# Pooled connections a worker needs (the listener and the claimer have their
# own): the recorder's flushes, the sweeper, the heartbeat, and some slack.
POOL_SIZE = 6
# Ready only while some unit of work reached the database within this many
# heartbeat intervals (the heartbeat alone makes one every interval), and
# while outcomes reach the table within as long.
READY_WITHIN_BEATS = 3
# Not ready when the fleet's sweeper (whichever replica leads) has not
# finished a round in this many sweep intervals (and never sooner than the
# database's own readiness bound): overdue and dead workers' jobs would wait unseen.
SWEEP_STALLED_AFTER = 10


def new_worker_id() -> WorkerId:
    return WorkerId(uuid.uuid4().hex[:16])


class Worker:
    """One worker process's state; `run` drives it until `stop` is called."""

    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        self.worker_id = new_worker_id()
        self.limiter = FixedIntervalLimiter(settings.rate)
        # Every attempt this worker holds, from claim to outcome.
        self.inflight = InFlight(settings.concurrency)
        self.retry = RetryPolicy(settings.retry_backoff, settings.retry_backoff_max)
        self.stop_requested = trio.Event()
        self._grace_over = trio.Event()
        self.metrics = Metrics()
        # The port /livez, /readyz and /metrics listen on, once `run` started them.
        self.health_port: int | None = None
        self._db: Database | None = None
        self._listener: ListenConnection | None = None
        self._recorder: Recorder | None = None
        self._sweeper: Sweeper | None = None
        self._started = False
        # What start-up waits for (the database, the schema), for /readyz.
        self._waiting_for: str | None = None

    def stop(self) -> None:
        """Ask for a graceful stop; a second call ends the grace period at once."""
        if self.stop_requested.is_set():
            self._grace_over.set()
        self.stop_requested.set()

    async def run(
        self, *, task_status: trio.TaskStatus[WorkerId] = trio.TASK_STATUS_IGNORED
    ) -> None:
        settings = self.settings
        url = settings.url()
        db = Database(url, size=POOL_SIZE)
        self._db = db
        try:
            async with trio.open_nursery() as root:
                # Probes answer from the first moment: /livez at once, /readyz
                # saying what the worker waits for.
                await self._serve_health(root)
                if await self._connect(db):
                    try:
                        log.info("worker %s connected to %s", self.worker_id, redact(url))
                        root.start_soon(
                            refresh_job_counts, db, self.metrics.job_counts,
                            settings.heartbeat_interval,
                        )  # fmt: skip
                        await self._pipeline(db, root, task_status)
                    finally:
                        with trio.CancelScope(shield=True), trio.move_on_after(FINAL_WRITE_LIMIT):
                            await self._sign_off(db)
                root.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await db.close()

    async def _pipeline(
        self, db: Database, root: trio.Nursery, task_status: trio.TaskStatus[WorkerId]
    ) -> None:
        settings = self.settings
        inflight = self.inflight
        demand = Demand(inflight)
        recorder = self._recorder = Recorder(db, self.worker_id, inflight, self.retry, demand)
        ownership = Ownership(db, self.worker_id, inflight)
        sweeper = self._sweeper = Sweeper(
            db, self.worker_id, settings.sweep_interval, settings.dead_worker_after,
            self.retry, self.metrics, demand,
        )  # fmt: skip
        claimer = Claimer(
            db.url, self.worker_id, demand, inflight, recorder, self.limiter,
            poll_interval=settings.poll_interval,
            reconcile_interval=settings.heartbeat_interval,
            max_payload_bytes=settings.max_payload_bytes,
        )  # fmt: skip
        ctx = ConsumerContext(
            registry=self.registry,
            recorder=recorder,
            limiter=self.limiter,
            demand=demand,
            inflight=inflight,
            max_payload_bytes=settings.max_payload_bytes,
            backstop_grace=settings.sweep_interval + 1.0,
            metrics=self.metrics,
        )
        # Room for every job the claimer may hold (it claims no more than the free
        # slots), so handing a batch over never blocks and costs no task switch.
        send, recv = trio.open_memory_channel[Held](settings.concurrency)
        listener = self._listener = ListenConnection(db.url)
        self._read_state(listener, recorder, demand)
        root.start_soon(
            beat_forever, db, self.worker_id, settings.heartbeat_interval,
            self.limiter, settings.rate, ownership, demand,
        )  # fmt: skip
        try:
            # The listener and the sweeper outlive the consumers: while jobs run out
            # their grace, deadlines are still enforced and cancellations still heard.
            async with trio.open_nursery() as watchers:
                await watchers.start(
                    listen,
                    listener,
                    demand,
                    ownership.ask,
                    ownership.ask_all,
                    settings.listener_check_interval,
                )
                watchers.start_soon(sweeper.sweep_forever)
                watchers.start_soon(recorder.flush_forever)
                watchers.start_soon(ownership.check_forever)
                watchers.start_soon(watch_deadlines, inflight, WATCHDOG_INTERVAL)
                async with trio.open_nursery() as consumers:
                    async with recv:
                        for _ in range(settings.concurrency):
                            consumers.start_soon(consume, recv.clone(), ctx)
                    async with trio.open_nursery() as claiming:
                        claiming.start_soon(claimer.run, send)
                        self._started = True
                        task_status.started(self.worker_id)
                        await self.stop_requested.wait()
                        log.info(
                            "stopping: no new claims; running jobs get %gs",
                            settings.shutdown_grace,
                        )
                        ctx.stopping = True
                        inflight.cancel_all("worker stopping before the job started", Stage.PACING)
                        claiming.cancel_scope.cancel()
                    root.start_soon(self._grace_timer)
                # Every outcome is in the table before this worker signs off.
                with trio.move_on_after(FINAL_WRITE_LIMIT):
                    await recorder.flush()
                watchers.cancel_scope.cancel()
        finally:
            listener.close()

    async def _connect(self, db: Database) -> bool:
        """Open the pool, wait for the schema, register; False if stopped meanwhile.

        A database that is down or still starting, or a schema its migration
        Job has not brought up to date yet, is waited for (a log line per
        attempt), so a worker started before them does not crash in a loop.
        A server that refuses this URL is a mistake, reported at once.
        """
        backoff = Backoff(first=0.5)
        limit = self.settings.startup_timeout
        with trio.move_on_after(limit if limit > 0 else math.inf):
            while True:
                try:
                    await db.open()
                    pending = await db.run(schema.pending_migrations)
                    if not pending:
                        await register(db, self.worker_id)
                        self._waiting_for = None
                        return True
                    self._waiting_for = (
                        f"the schema is not up to date ({len(pending)} migration(s) pending): "
                        "waiting for `notifyworker migrate`"
                    )
                except AccessDenied:
                    raise
                except SchemaMissing:
                    self._waiting_for = "no notifyworker schema: waiting for `notifyworker migrate`"
                except ConnectionLost as exc:
                    self._waiting_for = f"database not reachable: {exc}"
                delay = backoff.next_delay()
                log.warning(
                    "%s (attempt %d); retrying in %.1fs", self._waiting_for, backoff.attempt, delay
                )
                with trio.move_on_after(delay):
                    await self.stop_requested.wait()
                if self.stop_requested.is_set():
                    return False
        reason = self._waiting_for or "the database"
        if "migrate" in reason:
            raise SchemaOutdated(
                f"{reason.split(':')[0]} after {limit:g}s: run `notifyworker migrate`"
            )
        raise ConnectionLost(f"gave up after {limit:g}s (NOTIFYWORKER_STARTUP_TIMEOUT): {reason}")

    async def _serve_health(self, root: trio.Nursery) -> None:
        """Serve /livez, /readyz and /metrics (port bound before `run` reports started)."""
        if self.settings.health_port is not None:
            app = make_app(self.not_ready, self.metrics.registry)
            self.health_port = await root.start(
                serve, app, self.settings.health_host, self.settings.health_port
            )

    def not_ready(self) -> str | None:
        """Why this worker should get no traffic now (/readyz says it), or None.

        Never a query of its own: the listener's state and the time of the last
        unit of work that reached the database, so a hung database cannot hang
        the probe. Stopping is not ready, so traffic moves on while jobs drain.
        """
        if self.stop_requested.is_set():
            return "stopping"
        if self._waiting_for is not None:
            return f"starting: {self._waiting_for}"
        if not self._started or self._db is None:
            return "starting"
        if self._listener is None or not self._listener.listening:
            return "not listening: the listener connection is down"
        now, within = trio.current_time(), READY_WITHIN_BEATS * self.settings.heartbeat_interval
        silent = now - self._db.last_success
        if silent > within:
            return f"the database has not answered for {silent:.1f}s"
        return self._stalled(now, within)

    def _stalled(self, now: float, within: float) -> str | None:
        """A part that cannot do its work: outcomes not recorded, nobody sweeping."""
        if self._recorder is not None:
            stalled = max(self._recorder.stalled_for(now), self._recorder.retrying.failing_for(now))
            if stalled > within:
                return (
                    f"outcomes have not reached the table for {stalled:.1f}s"
                    f" ({self._recorder.retrying.last_error or 'waiting on the database'})"
                )
        if self._sweeper is not None:
            sweeping = self._sweeper.retrying
            if sweeping.failing_for(now) > within:
                return (
                    f"the sweeper has failed for {sweeping.failing_for(now):.1f}s"
                    f" ({sweeping.last_error})"
                )
            age = self._sweeper.last_sweep_age(now)
            if age > max(SWEEP_STALLED_AFTER * self.settings.sweep_interval, within):
                return f"no sweeper in the fleet has finished a round for {age:.1f}s"
        return None

    def _read_state(self, listener: ListenConnection, recorder: Recorder, demand: Demand) -> None:
        """Metrics read from state the worker keeps anyway, when scraped."""
        metrics, concurrency = self.metrics, self.settings.concurrency
        metrics.counter(
            "notifyworker_listener_reconnects",
            "Times the listener connected again after losing its connection.",
            lambda: max(listener.connects - 1, 0),
        )
        metrics.gauge(
            "notifyworker_listener_connected",
            "1 while the listener is connected and LISTENing.",
            lambda: float(listener.listening),
        )
        metrics.gauge(
            "notifyworker_consumers_busy",
            "Consumer slots holding a claimed job (waiting for a start slot or running).",
            lambda: concurrency - demand.free,
        )
        metrics.gauge(
            "notifyworker_recorder_backlog",
            "Start and finish marks not yet written to the table.",
            lambda: recorder.backlog,
        )
        metrics.gauge(
            "notifyworker_last_sweep_age_seconds",
            "Seconds since any sweeper of the fleet finished a round, as this worker last saw.",
            lambda: (
                0.0 if self._sweeper is None else self._sweeper.last_sweep_age(trio.current_time())
            ),
        )
        metrics.gauge(
            "notifyworker_recorder_stalled_seconds",
            "Seconds the marks being written have waited for the table (0 when none wait).",
            lambda: recorder.stalled_for(trio.current_time()),
        )
        metrics.gauge(
            "notifyworker_rate",
            "Job starts per second this worker allows; 0 = unlimited.",
            lambda: self.limiter.rate,
        )

    async def _sign_off(self, db: Database) -> None:
        try:
            requeued = await db.run(store.requeue_unstarted, self.worker_id)
            left_jobs = await db.run(store.unregister_worker, self.worker_id)
        except DatabaseError as exc:
            # Nothing is lost: this worker's row stops heart-beating, and the
            # sweeper of another replica (or of the next start) rescues its jobs.
            log.warning("could not sign off (%s); the sweeper will rescue this worker's jobs", exc)
            return
        if left_jobs:
            # Stopped without recording every outcome (it crashed out, or the
            # database would not take them): the row stays, marked dead, so the
            # next sweep of any replica rescues those jobs at once.
            log.warning(
                "worker %s stopped with jobs unfinished; left for the sweeper", self.worker_id
            )
        else:
            log.info("worker %s stopped; %d unstarted job(s) handed back", self.worker_id, requeued)

    async def _grace_timer(self) -> None:
        with trio.move_on_after(self.settings.shutdown_grace):
            await self._grace_over.wait()
        cancelled = self.inflight.cancel_all(
            f"cancelled at shutdown: ran past the {self.settings.shutdown_grace:g}s grace period",
            Stage.RUNNING,
        )
        if cancelled:
            log.warning("grace period over: cancelling %d running job(s)", cancelled)


async def stop_on_signals(worker: Worker) -> None:
    """SIGINT/SIGTERM stop the worker gracefully; a second one ends the grace at once."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s", signal.Signals(signum).name)
            worker.stop()
