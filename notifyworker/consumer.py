"""Consumers: pace each start with the limiter, run the handler, record the outcome.

Every job a consumer takes ends in exactly one outcome handed to the recorder
(or, when the worker stops before starting it, stays `queued` for the service
to requeue). Consumers never wait on the database: marks are buffered, so even
a handler cancelled from outside gets its outcome recorded.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NoReturn

import trio
from pydantic_core import PydanticSerializationError, to_jsonable_python

from notifyworker.coordination import Demand, EarlyCancels, RunningJobs
from notifyworker.errors import InvalidPayload, TaskError
from notifyworker.limiter import NO_TICKET, FixedIntervalLimiter
from notifyworker.metrics import Metrics, pickup_seconds
from notifyworker.models import ClaimedJob, Handover, Outcome
from notifyworker.recorder import Recorder, now
from notifyworker.tasks import Registry

log = logging.getLogger(__name__)


# Longest error text stored on a job; a handler's exception may be huge.
MAX_ERROR_CHARS = 2000


@dataclass
class ConsumerContext:
    """What every consumer of one worker shares."""

    registry: Registry
    recorder: Recorder
    limiter: FixedIntervalLimiter
    demand: Demand
    running: RunningJobs
    # Jobs waiting for their start slot: cancelled at once when the worker stops.
    pacing: RunningJobs
    # Jobs cancelled in the table while claimed here but not yet started.
    early_cancels: EarlyCancels
    # Longest payload (JSON text) a job may carry.
    max_payload_bytes: int
    # A job that outlives its timeout by this much is cancelled here even if
    # the sweeper (the authority on deadlines) never said so (watch_deadlines).
    backstop_grace: float
    stopping: bool = False
    metrics: Metrics = field(default_factory=Metrics)


async def consume(recv: trio.MemoryReceiveChannel[Handover], ctx: ConsumerContext) -> None:
    """Run jobs until the channel closes (the claimer stopped)."""
    async with recv:
        while True:
            # One cancel scope serves job after job: entering a scope per job
            # cost more than a no-op job itself. Cancelling a job cancels its
            # consumer's scope, which ends here; the next job gets a fresh one.
            with trio.CancelScope() as scope:
                while not scope.cancel_called:
                    try:
                        handed = recv.receive_nowait()  # no task switch while jobs wait
                    except trio.WouldBlock:
                        try:
                            handed = await recv.receive()
                        except trio.EndOfChannel:
                            return
                    except trio.EndOfChannel:
                        return
                    try:
                        await _run_one(handed.job, handed.ticket, scope, ctx)
                    finally:
                        ctx.demand.released(handed.job.id)


async def _run_one(
    job: ClaimedJob, ticket: int, scope: trio.CancelScope, ctx: ConsumerContext
) -> None:
    ctx.metrics.job_claimed(job)
    if ctx.stopping:
        ctx.limiter.abandon(ticket)
        return  # left queued: the service hands it back on the way out
    try:
        task = ctx.registry.get(job.task)
        if len(job.payload) > ctx.max_payload_bytes:  # characters: a cheap lower bound
            size = len(job.payload.encode())
            if size > ctx.max_payload_bytes:
                raise InvalidPayload(
                    f"payload is {size} bytes of JSON, over the limit of "
                    f"{ctx.max_payload_bytes} (NOTIFYWORKER_MAX_PAYLOAD_BYTES)"
                )
        payload = task.parse(job.payload)
    except TaskError as exc:
        ctx.limiter.abandon(ticket)  # a job that cannot start takes no start slot
        _finished(job, Outcome("failed", error=str(exc)), None, ctx)
        return
    if ticket != NO_TICKET:
        # Only a paced job needs a scope the stop can cancel while it waits.
        with trio.CancelScope() as pacing:
            ctx.pacing.add(job.id, pacing)
            paced_at = trio.current_time()
            try:
                await ctx.limiter.wait(ticket)
            finally:
                ctx.pacing.remove(job.id)
                ctx.metrics.limiter_waited(trio.current_time() - paced_at)
        if pacing.cancelled_caught or ctx.stopping:
            return
    if ctx.early_cancels.take(job.id):
        return  # the table already says cancelled; nothing to record
    started_at = ctx.recorder.started(job)
    ctx.metrics.job_started(job, started_at)
    ctx.running.add(job.id, scope, trio.current_time() + job.timeout + ctx.backstop_grace)
    outcome: Outcome | None = None
    try:
        result = await task.handler(payload)
    except Exception as exc:  # noqa: BLE001 - a handler's failure is the job's, not the worker's
        outcome = Outcome("failed", error=_describe(exc), retryable=True)
    else:
        outcome = _done(result)
    finally:
        reason = ctx.running.remove(job.id)
        if outcome is None:
            # Cancelled: by the sweeper, the watchdog or the grace period (a
            # reason is given), or from outside when the worker stops hard.
            # Cancellations decided in the table never reach it (their marks are
            # refused); the worker's own (timeout, shutdown) deserve a retry.
            outcome = Outcome(
                "cancelled", error=reason or "worker stopped while the job ran", retryable=True
            )
        _finished(job, outcome, started_at, ctx)


async def watch_deadlines(running: RunningJobs, interval: float) -> NoReturn:
    """Cancel jobs that outlive their timeout by the backstop grace.

    The sweeper is the authority on deadlines and normally cancels first;
    this catches a job the sweeper cannot reach (the database is away).
    """
    while True:
        await trio.sleep(interval)
        for job_id in running.overdue(trio.current_time()):
            running.cancel(job_id, "timed out: ran past its timeout (cancelled by the worker)")


def _finished(
    job: ClaimedJob, outcome: Outcome, started_at: datetime | None, ctx: ConsumerContext
) -> None:
    ctx.recorder.finished(job, outcome, started_at)
    at = now()
    ctx.metrics.job_finished(job, outcome, started_at, at)
    _log_finished(job, outcome, started_at, at)


def _log_finished(
    job: ClaimedJob, outcome: Outcome, started_at: datetime | None, at: datetime
) -> None:
    """The job's one log line; its facts are fields too (keys of a JSON line)."""
    level = logging.INFO if outcome.status == "done" else logging.WARNING
    if not log.isEnabledFor(level):
        return
    ran = started_at is not None
    attempts = job.attempt if ran else job.attempt - 1
    again = ran and outcome.retryable and job.attempt < job.max_attempts
    pickup_ms = run_ms = None
    timing = "never started"
    if started_at is not None:
        pickup_ms = round(pickup_seconds(job, started_at) * 1000, 3)
        run_ms = round((at - started_at).total_seconds() * 1000, 3)
        timing = f"ran {run_ms:g} ms, picked up in {pickup_ms:g} ms"
    fields = {
        "job_id": job.id,
        "task": job.task,
        "status": outcome.status,
        "attempts": attempts,
        "max_attempts": job.max_attempts,
        "will_retry": again,
        "pickup_ms": pickup_ms,
        "run_ms": run_ms,
        "error": outcome.error,
    }
    error = f": {outcome.error}" if outcome.error else ""
    retry = ", will retry" if again else ""
    log.log(
        level, "job %s %s %s (%s, attempt %d of %d%s)%s", job.id, job.task, outcome.status,
        timing, attempts, job.max_attempts, retry, error, extra=fields,
    )  # fmt: skip


def _done(result: Any) -> Outcome:
    if result is None:
        return Outcome("done")
    try:
        value = to_jsonable_python(result)
        json.dumps(value, allow_nan=False)
    except (PydanticSerializationError, ValueError, TypeError) as exc:
        return Outcome(
            "failed",
            error=f"handler returned a value that is not JSON ({type(result).__name__}): {exc}"[
                :MAX_ERROR_CHARS
            ],
        )
    return Outcome("done", result=value)


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text[:MAX_ERROR_CHARS]
