"""The worker: the composition root that owns every task in one tree of task groups.

    root task group
    ├── health server, job counts      (/livez, /readyz, /metrics; until the very end)
    ├── heartbeat                      (until the very end)
    └── watchers task group            (listener, sweeper, scheduler, pruner, recorder, ownership
        │                               checks, deadline watch, grace timer, loop watch)
        └── consumers task group       (`concurrency` consumers)
            └── claiming task group    (the claimer)

Joining the fleet and leaving it are `startup`'s; readiness is asked of the
parts (`health.Readiness`), and the metrics read them (`gauges`): this module
only builds the tree and runs the stop protocol.

Start-up loses nothing: the listener reports started only once LISTENing,
consumers exist before anything is claimed, and the claimer's first pass
takes whatever was inserted before. Shutdown runs the other way: the claimer
stops (the channel closes), running jobs get `shutdown_grace` while the
sweeper and listener still watch them, the rest are cancelled, and
claimed-but-unstarted jobs go back to `new`.
"""

from __future__ import annotations

import logging
import signal
import uuid

import anyio
import anyio.abc

from notifyworker.claimer import Claimer
from notifyworker.config import Settings
from notifyworker.consumer import ConsumerContext, consume, watch_deadlines
from notifyworker.db import Database, ListenConnection, redact
from notifyworker.demand import Demand
from notifyworker.handover import Receiver, Sender, open_handover
from notifyworker.health import Readiness, make_app, serve, silent
from notifyworker.heartbeat import beat_forever, pass_wakes_on
from notifyworker.inflight import Held, InFlight, Stage
from notifyworker.limiter import FixedIntervalLimiter
from notifyworker.listener import deaf, listen
from notifyworker.loopwatch import LoopWatch
from notifyworker.metrics import Metrics, refresh_job_counts
from notifyworker.models import RetryPolicy, WorkerId
from notifyworker.ownership import Ownership
from notifyworker.pruner import Pruner
from notifyworker.recorder import Recorder
from notifyworker.scheduler import Scheduler
from notifyworker.startup import join, sign_off
from notifyworker.sweeper import Sweeper
from notifyworker.tasks import Registry

log = logging.getLogger(__name__)

# After the grace period, cancelled jobs still get this long to record their
# outcome before the worker gives up on the database and exits.
FINAL_WRITE_LIMIT = 10.0
# How often the worker checks its own running jobs against their deadlines.
WATCHDOG_INTERVAL = 0.5
# Pooled connections a worker needs (the listener and the claimer have their
# own): the recorder's flushes, the sweeper, the pruner, the heartbeat, and
# some slack.
POOL_SIZE = 6
# Ready only while some unit of work reached the database within this many
# heartbeat intervals (the heartbeat alone makes one every interval), and
# while outcomes reach the table within as long.
READY_WITHIN_BEATS = 3


def new_worker_id() -> WorkerId:
    return WorkerId(uuid.uuid4().hex[:16])


class Worker:
    """One worker process's state; `run` drives it until `stop` is called."""

    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        # Declared schedules name tasks this worker runs, with payloads they accept.
        registry.check_schedules()
        self.worker_id = new_worker_id()
        self.limiter = FixedIntervalLimiter(settings.rate)
        # Every attempt this worker holds, from claim to outcome.
        self.inflight = InFlight(settings.concurrency)
        self.retry = RetryPolicy(settings.retry_backoff, settings.retry_backoff_max)
        self.stop_requested = anyio.Event()
        self._grace_over = anyio.Event()
        self.metrics = Metrics()
        # What /readyz answers: each part adds its own check as it starts.
        self.readiness = Readiness(READY_WITHIN_BEATS * settings.heartbeat_interval)
        # The port /livez, /readyz and /metrics listen on, once `run` started them.
        self.health_port: int | None = None

    def stop(self) -> None:
        """Ask for a graceful stop; a second call ends the grace period at once."""
        if self.stop_requested.is_set():
            self._grace_over.set()
        self.readiness.stopping = True
        self.stop_requested.set()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[WorkerId] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        settings = self.settings
        url = settings.url()
        db = Database(url, size=POOL_SIZE)
        try:
            async with anyio.create_task_group() as root:
                # Probes answer from the first moment: /livez at once, /readyz
                # saying what the worker waits for.
                if settings.health_port is not None:
                    app = make_app(self.readiness, self.metrics.registry)
                    self.health_port = await root.start(
                        serve, app, settings.health_host, settings.health_port
                    )
                timeout = settings.startup_timeout
                if await join(db, self.worker_id, timeout, self.stop_requested, self.readiness):
                    try:
                        log.info("worker %s connected to %s", self.worker_id, redact(url))
                        root.start_soon(
                            refresh_job_counts, db, self.metrics.job_counts,
                            settings.heartbeat_interval,
                        )  # fmt: skip
                        await self._pipeline(db, root, task_status)
                    finally:
                        with anyio.CancelScope(shield=True), anyio.move_on_after(FINAL_WRITE_LIMIT):
                            await sign_off(db, self.worker_id)
                root.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await db.close()

    async def _pipeline(
        self, db: Database, root: anyio.abc.TaskGroup, task_status: anyio.abc.TaskStatus[WorkerId]
    ) -> None:
        settings, inflight = self.settings, self.inflight
        demand = Demand(
            inflight, self.worker_id, queues=settings.queues, fleet_ttl=settings.dead_worker_after
        )
        recorder = Recorder(db, self.worker_id, inflight, self.retry, demand)
        ownership = Ownership(db, self.worker_id, inflight)
        sweeper = Sweeper(
            db, self.worker_id, settings.sweep_interval, settings.dead_worker_after,
            self.retry, self.metrics, demand,
        )  # fmt: skip
        scheduler = Scheduler(db, self.registry.schedules)
        claimer = Claimer(
            db.url, self.worker_id, demand, inflight, recorder, self.limiter,
            poll_interval=settings.poll_interval,
            reconcile_interval=settings.heartbeat_interval,
            max_payload_bytes=settings.max_payload_bytes,
            serve=settings.queues,
        )  # fmt: skip
        consumers_share = ConsumerContext(
            registry=self.registry,
            recorder=recorder,
            limiter=self.limiter,
            demand=demand,
            inflight=inflight,
            max_payload_bytes=settings.max_payload_bytes,
            backstop_grace=settings.sweep_interval + 1.0,
            metrics=self.metrics,
        )
        listener = ListenConnection(db.url)
        loopwatch = LoopWatch(inflight)
        self.readiness.watch(
            deaf(listener), silent(db), recorder.stalled, sweeper.stalled, scheduler.stalled
        )
        self.metrics.readings.watch(
            listener=listener, recorder=recorder, sweeper=sweeper, slots=demand,
            limiter=self.limiter, concurrency=settings.concurrency,
        )  # fmt: skip
        self.metrics.readings.counter(
            "notifyworker_event_loop_stalls",
            "Times the event loop was blocked (by a handler's blocking call) for over a second.",
            lambda: loopwatch.stalls,
        )
        self.metrics.readings.claims(demand)
        # Room for every job the claimer may hold (it claims no more than the free
        # slots), so handing a batch over never blocks and costs no task switch.
        send: Sender[Held]
        recv: Receiver[Held]
        send, recv = open_handover(settings.concurrency)
        root.start_soon(
            beat_forever, db, self.worker_id, settings.heartbeat_interval,
            settings.dead_worker_after, ownership, demand,
        )  # fmt: skip
        try:
            # The listener and the sweeper outlive the consumers: while jobs run out
            # their grace, deadlines are still enforced and cancellations still heard.
            async with anyio.create_task_group() as watchers:
                await watchers.start(
                    listen, listener, demand, ownership.ask, ownership.ask_all,
                    settings.listener_check_interval,
                )  # fmt: skip
                watchers.start_soon(pass_wakes_on, db, demand)
                watchers.start_soon(sweeper.sweep_forever)
                watchers.start_soon(scheduler.run_forever)
                if settings.retention().rules():
                    pruner = Pruner(
                        db, self.worker_id, settings.retention(), settings.prune_batch,
                        settings.prune_interval, self.metrics,
                    )  # fmt: skip
                    watchers.start_soon(pruner.prune_forever)
                watchers.start_soon(recorder.flush_forever)
                watchers.start_soon(ownership.check_forever)
                watchers.start_soon(watch_deadlines, inflight, WATCHDOG_INTERVAL)
                watchers.start_soon(self._grace_timer)
                watchers.start_soon(loopwatch.run)
                async with anyio.create_task_group() as consumers:
                    async with recv:
                        for _ in range(settings.concurrency):
                            consumers.start_soon(consume, recv.clone(), consumers_share)
                    async with anyio.create_task_group() as claiming:
                        claiming.start_soon(claimer.run, send)
                        self.readiness.phase = None
                        task_status.started(self.worker_id)
                        await self.stop_requested.wait()
                        log.info(
                            "stopping: no new claims; running jobs get %gs",
                            settings.shutdown_grace,
                        )
                        consumers_share.stop_starting()
                        demand.stop_claiming()
                        claiming.cancel_scope.cancel()
                # Every outcome is in the table before this worker signs off.
                with anyio.move_on_after(FINAL_WRITE_LIMIT):
                    await recorder.flush()
                watchers.cancel_scope.cancel()
        finally:
            listener.close()

    async def _grace_timer(self) -> None:
        """Once a stop is asked, give running jobs the grace period, then cancel them."""
        await self.stop_requested.wait()
        with anyio.move_on_after(self.settings.shutdown_grace):
            await self._grace_over.wait()
        cancelled = self.inflight.cancel_all(
            f"cancelled at shutdown: ran past the {self.settings.shutdown_grace:g}s grace period",
            Stage.RUNNING,
        )
        if cancelled:
            log.warning("grace period over: cancelling %d running job(s)", cancelled)


async def stop_on_signals(worker: Worker) -> None:
    """SIGINT/SIGTERM stop the worker gracefully; a second one ends the grace at once."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s", signal.Signals(signum).name)
            worker.stop()
