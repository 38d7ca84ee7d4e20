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

import anyio
from pydantic_core import PydanticSerializationError, to_jsonable_python

from notifyworker.demand import Demand
from notifyworker.errors import InvalidPayload, TaskError
from notifyworker.handover import CLOSED, EMPTY, Receiver
from notifyworker.inflight import Held, InFlight, Stage
from notifyworker.limiter import NO_TICKET, FixedIntervalLimiter
from notifyworker.metrics import Metrics
from notifyworker.models import ClaimedJob, Outcome, pickup_seconds, will_retry
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
    # Every attempt this worker holds: the consumer moves each along its stages.
    inflight: InFlight
    # Longest payload (JSON text) a job may carry.
    max_payload_bytes: int
    # A job that outlives its timeout by this much is cancelled here even if
    # the sweeper (the authority on deadlines) never said so (watch_deadlines).
    backstop_grace: float
    stopping: bool = False
    metrics: Metrics = field(default_factory=Metrics)

    def stop_starting(self) -> None:
        """Start no more jobs: those waiting for a start slot go back unstarted."""
        self.stopping = True
        self.inflight.cancel_all("worker stopping before the job started", Stage.PACING)


async def consume(recv: Receiver[Held], ctx: ConsumerContext) -> None:
    """Run jobs until the channel closes (the claimer stopped)."""
    async with recv:
        while True:
            # One cancel scope serves job after job: entering a scope per job
            # cost more than a no-op job itself. Cancelling a job cancels its
            # consumer's scope, which ends here; the next job gets a fresh one.
            with anyio.CancelScope() as scope:
                while not scope.cancel_called:
                    try:
                        held = recv.receive_nowait()  # no task switch while jobs wait
                    except EMPTY:
                        try:
                            held = await recv.receive()
                        except CLOSED:
                            return
                    except CLOSED:
                        return
                    try:
                        await _run_one(held, scope, ctx)
                    finally:
                        ctx.inflight.release(held)
                        ctx.demand.released()


async def _run_one(held: Held, scope: anyio.CancelScope, ctx: ConsumerContext) -> None:
    job, ticket = held.job, held.ticket
    ctx.metrics.job_claimed(job)
    if ctx.stopping or held.reason is not None:
        # Stopping: left queued, the service hands it back on the way out.
        # Cancelled while claimed: the table already says it is not ours.
        ctx.limiter.abandon(ticket)
        return
    try:
        task = ctx.registry.get(job.task)
        payload = task.parse(_payload_text(job, ctx.max_payload_bytes))
    except TaskError as exc:
        ctx.limiter.abandon(ticket)  # a job that cannot start takes no start slot
        _finished(job, Outcome("failed", error=str(exc)), None, ctx)
        return
    if (ticket != NO_TICKET or held.start_at is not None) and not await _paced(held, ctx):
        return
    started_at = ctx.recorder.started(job)
    ctx.metrics.job_started(job, started_at)
    held.stage, held.scope = Stage.RUNNING, scope
    held.deadline = anyio.current_time() + job.timeout + ctx.backstop_grace
    outcome: Outcome | None = None
    try:
        result = await task.handler(payload)
    except Exception as exc:  # noqa: BLE001 - a handler's failure is the job's, not the worker's
        outcome = Outcome("failed", error=_describe(exc), retryable=True)
    except BaseException as exc:
        cancelled = _cancellation(exc)
        if cancelled is exc:
            raise
        if cancelled is not None:
            # Cancelled while other errors flew: the cancellation is what happened.
            raise cancelled from None
        # sys.exit(), or another BaseException a handler should never raise:
        # the job fails (a bug, not worth a retry) and the worker goes on.
        outcome = Outcome("failed", error=f"handler raised {_describe(exc)}")
    else:
        outcome = _done(result)
    finally:
        reason = held.reason  # `consume` releases the entry once this returns
        if outcome is None:
            # Cancelled: by the sweeper, the watchdog or the grace period (a
            # reason is given), or from outside when the worker stops hard.
            # Cancellations decided in the table never reach it (their marks are
            # refused); the worker's own (timeout, shutdown) deserve a retry.
            outcome = Outcome(
                "cancelled", error=reason or "worker stopped while the job ran", retryable=True
            )
        _finished(job, outcome, started_at, ctx)


async def _paced(held: Held, ctx: ConsumerContext) -> bool:
    """Wait for the job's start slot (the fleet's, else the limiter's); False: do not start."""
    # Only a paced job needs a scope that a cancel or the stop can end while it waits.
    with anyio.CancelScope() as pacing:
        held.stage, held.scope = Stage.PACING, pacing
        paced_at = anyio.current_time()
        try:
            if held.start_at is None:
                await ctx.limiter.wait(held.ticket)
            else:
                await anyio.sleep_until(held.start_at)
        finally:
            held.stage, held.scope = Stage.CLAIMED, None
            ctx.metrics.limiter_waited(anyio.current_time() - paced_at)
    return not (pacing.cancelled_caught or ctx.stopping or held.reason is not None)


def _payload_text(job: ClaimedJob, limit: int) -> str:
    """The payload's JSON text, or InvalidPayload when it is over the limit."""
    if job.payload is None:  # the claim would not fetch it
        raise InvalidPayload(
            f"payload is {job.stored_bytes} bytes as stored, over the limit of "
            f"{limit} (NOTIFYWORKER_MAX_PAYLOAD_BYTES); it was not fetched"
        )
    if len(job.payload) > limit:  # characters: a cheap lower bound
        size = len(job.payload.encode())
        if size > limit:
            raise InvalidPayload(
                f"payload is {size} bytes of JSON, over the limit of "
                f"{limit} (NOTIFYWORKER_MAX_PAYLOAD_BYTES)"
            )
    return job.payload


def _cancellation(exc: BaseException) -> BaseException | None:
    """The event loop's cancellation of the handler within `exc` (alone, or in a group), if any."""
    cancelled = anyio.get_cancelled_exc_class()
    if isinstance(exc, cancelled):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(cancelled)
    return None


async def watch_deadlines(inflight: InFlight, interval: float) -> NoReturn:
    """Cancel jobs that outlive their timeout by the backstop grace.

    The sweeper is the authority on deadlines and normally cancels first;
    this catches a job the sweeper cannot reach (the database is away).
    """
    while True:
        await anyio.sleep(interval)
        for held in inflight.overdue(anyio.current_time()):
            held.cancel("timed out: ran past its timeout (cancelled by the worker)")


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
    again = will_retry(outcome, attempts, job.max_attempts)
    pickup_ms = run_ms = None
    timing = "never started"
    if started_at is not None:
        pickup_ms = round(pickup_seconds(job.created_at, started_at) * 1000, 3)
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
