"""Consumers: pace each start with the limiter, run the handler, record the outcome.

Every job a consumer takes ends in exactly one recorded outcome (or, when the
worker stops before starting it, stays `queued` for the service to requeue):
the outcome is written under a shield, so even a cancelled handler's job is
marked as such rather than left `running`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

import trio
from pydantic_core import PydanticSerializationError, to_jsonable_python

from notifyworker import store
from notifyworker.backoff import Backoff
from notifyworker.coordination import Demand, RunningJobs
from notifyworker.db import Database, Session
from notifyworker.errors import ConnectionLost, DatabaseError, TaskError
from notifyworker.limiter import FixedIntervalLimiter
from notifyworker.models import ClaimedJob, Outcome, WorkerId
from notifyworker.tasks import Registry

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

# Longest error text stored on a job; a handler's exception may be huge.
MAX_ERROR_CHARS = 2000
# How long recording one outcome may keep retrying through a database outage
# before the job is left for the sweeper (dead-worker or deadline rescue).
RECORD_PATIENCE = 30.0


@dataclass
class ConsumerContext:
    """What every consumer of one worker shares."""

    db: Database
    worker_id: WorkerId
    registry: Registry
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
        await _record(job, Outcome("failed", error=str(exc)), ctx)
        return
    if not await _with_retries(ctx, store.start, ctx.worker_id, job.id):
        return  # the sweeper rescued it first: no longer ours to run
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
        with trio.CancelScope(shield=True):
            await _record(job, outcome, ctx)


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


async def _record(job: ClaimedJob, outcome: Outcome, ctx: ConsumerContext) -> None:
    with trio.move_on_after(RECORD_PATIENCE) as patience:
        try:
            recorded = await _with_retries(ctx, store.finish, ctx.worker_id, job.id, outcome)
        except DatabaseError as exc:
            # PostgreSQL refused this outcome (say, a result it cannot store):
            # record the refusal instead, so the job still ends.
            refused = Outcome("failed", error=f"could not record the outcome: {exc}")
            recorded = await _with_retries(ctx, store.finish, ctx.worker_id, job.id, refused)
    if patience.cancelled_caught:
        log.error("job %s: could not record %s; the sweeper will rescue it", job.id, outcome.status)
        return
    level = logging.INFO if outcome.status == "done" else logging.WARNING
    if recorded:
        log.log(
            level,
            "job %s %s %s%s",
            job.id,
            job.task,
            outcome.status,
            f": {outcome.error}" if outcome.error else "",
        )


async def _with_retries(
    ctx: ConsumerContext,
    fn: Callable[Concatenate[Session, P], T],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """Run a unit of work, retrying through a lost connection (the caller bounds it)."""
    backoff = Backoff()
    while True:
        try:
            return await ctx.db.run(fn, *args, **kwargs)
        except ConnectionLost as exc:
            delay = backoff.next_delay()
            log.warning("database unavailable (%s); retrying in %.2fs", exc, delay)
            await trio.sleep(delay)
