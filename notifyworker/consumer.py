"""Consumers: pace each start with the limiter, run the handler, record the outcome.

Every job a consumer takes ends in exactly one outcome handed to the recorder
(or, when the worker stops before starting it, stays `queued` for the service
to requeue). Consumers never wait on the database: marks are buffered, so even
a handler cancelled from outside gets its outcome recorded.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import trio
from pydantic_core import PydanticSerializationError, to_jsonable_python

from notifyworker.coordination import Demand, RunningJobs
from notifyworker.errors import TaskError
from notifyworker.limiter import FixedIntervalLimiter
from notifyworker.models import ClaimedJob, Outcome
from notifyworker.recorder import Recorder
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
    # A job that outlives its timeout by this much is cancelled here even if
    # the sweeper (the authority on deadlines) never said so.
    backstop_grace: float
    stopping: bool = False


async def consume(recv: trio.MemoryReceiveChannel[ClaimedJob], ctx: ConsumerContext) -> None:
    """Run jobs until the channel closes (the publishers stopped)."""
    async with recv:
        async for job in recv:
            try:
                await _run_one(job, ctx)
            finally:
                ctx.demand.released()


async def _run_one(job: ClaimedJob, ctx: ConsumerContext) -> None:
    if ctx.stopping:
        return  # left queued: the service hands it back on the way out
    with trio.CancelScope() as pacing:
        ctx.pacing.add(job.id, pacing)
        try:
            await ctx.limiter.wait()
        finally:
            ctx.pacing.remove(job.id)
    if pacing.cancelled_caught or ctx.stopping:
        return
    try:
        task = ctx.registry.get(job.task)
        payload = task.parse(job.payload)
    except TaskError as exc:
        _finished(job, Outcome("failed", error=str(exc)), None, ctx)
        return
    started_at = ctx.recorder.started(job.id)
    outcome: Outcome | None = None
    try:
        with trio.CancelScope() as scope:
            scope.deadline = trio.current_time() + job.timeout.total_seconds() + ctx.backstop_grace
            ctx.running.add(job.id, scope)
            try:
                result = await task.handler(payload)
            except Exception as exc:  # noqa: BLE001 - a handler's failure is the job's, not the worker's
                outcome = Outcome("failed", error=_describe(exc))
            else:
                outcome = _done(result)
            finally:
                reason = ctx.running.remove(job.id)
        if scope.cancelled_caught:
            outcome = Outcome(
                "cancelled", error=reason or f"timed out: ran longer than {job.timeout}"
            )
    finally:
        # Cancelled from outside (the worker stopped hard): still say so.
        outcome = outcome or Outcome("cancelled", error="worker stopped while the job ran")
        _finished(job, outcome, started_at, ctx)


def _finished(
    job: ClaimedJob, outcome: Outcome, started_at: datetime | None, ctx: ConsumerContext
) -> None:
    ctx.recorder.finished(job.id, outcome, started_at)
    if outcome.status == "done":
        log.info("job %s %s done", job.id, job.task)
    else:
        log.warning("job %s %s %s: %s", job.id, job.task, outcome.status, outcome.error)


def _done(result: Any) -> Outcome:
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
