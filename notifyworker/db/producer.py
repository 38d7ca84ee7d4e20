"""Enqueue on the application's own psycopg connection, in its own transaction.

Nothing here commits: the job exists only if the caller commits (on an
autocommit connection each call is its own transaction). Each call is one
statement, through notifyworker.enqueue() and enqueue_many() (sql/queries/
producer.sql), so a unique_key behaves the same from Python as from SQL, and a
failed call inserts none of its jobs. A driver error comes out as one of
notifyworker.errors, with the driver's own as its __cause__ (its SQLSTATE).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeAlias, TypedDict, Unpack

import psycopg
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb

from notifyworker.db.translate import translate
from notifyworker.errors import InvalidJob, InvalidPayload
from notifyworker.models import JobId, limit_key_problem, priority_problem, queue_problem
from notifyworker.sqlfiles import query

Connection: TypeAlias = psycopg.Connection[Any]
AsyncConnection: TypeAlias = psycopg.AsyncConnection[Any]
# A job's timeout: an interval, or seconds.
Timeout: TypeAlias = timedelta | float

# Each column of a job and its array parameter in enqueue_jobs.
_ARRAYS = {
    "task": "tasks",
    "payload": "payloads",
    "object_id": "object_ids",
    "timeout": "timeouts",
    "max_attempts": "max_attempts_each",
    "run_at": "run_ats",
    "unique_key": "unique_keys",
    "queue": "queues",
    "priority": "priorities",
    "limit_key": "limit_keys",
}


@dataclass(frozen=True, slots=True)
class Job:
    """One job to enqueue: the columns a new row may set. None leaves the column's default.

    `payload` is a JSON object: a mapping, or its JSON text as is. While a job
    with the same `unique_key` is new, queued or running, enqueueing returns
    that job's id instead; once it has finished the key is free again.
    `queue` (default 'default'), `priority` (higher first; default 0) and
    `limit_key` (the tenant or account a queue's key limits count by) say
    where and in which order it runs.
    """

    task: str
    payload: Mapping[str, Any] | str = field(default_factory=dict)
    object_id: str | None = None
    timeout: Timeout | None = None
    max_attempts: int | None = None
    run_at: datetime | None = None
    unique_key: str | None = None
    queue: str | None = None
    priority: int | None = None
    limit_key: str | None = None


class JobOptions(TypedDict, total=False):
    """The keywords of `enqueue`: a job's own columns, as in `Job`."""

    object_id: str | None
    timeout: Timeout | None
    max_attempts: int | None
    run_at: datetime | None
    unique_key: str | None
    queue: str | None
    priority: int | None
    limit_key: str | None


def enqueue(
    conn: Connection,
    task: str,
    payload: Mapping[str, Any] | str | None = None,
    **options: Unpack[JobOptions],
) -> JobId:
    """Enqueue one job as a plain INSERT would (any task name), its id; a held key, its holder's."""
    return enqueue_one(conn, Job(task, {} if payload is None else payload, **options))


async def enqueue_async(
    aconn: AsyncConnection,
    task: str,
    payload: Mapping[str, Any] | str | None = None,
    **options: Unpack[JobOptions],
) -> JobId:
    """`enqueue` on an asyncio connection."""
    return await enqueue_one_async(aconn, Job(task, {} if payload is None else payload, **options))


def enqueue_one(conn: Connection, job: Job) -> JobId:
    """Enqueue `job` (Task.defer's way in): its id, or the holder's of its key."""
    params = _row(job)
    with _driver_errors(), conn.cursor(row_factory=tuple_row) as cur:
        cur.execute(query(_one(job)), params)
        row = cur.fetchone()
    assert row is not None
    return JobId(row[0])


async def enqueue_one_async(aconn: AsyncConnection, job: Job) -> JobId:
    params = _row(job)
    with _driver_errors():
        async with aconn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(query(_one(job)), params)
            row = await cur.fetchone()
    assert row is not None
    return JobId(row[0])


def enqueue_many(conn: Connection, jobs: Iterable[Job]) -> list[JobId]:
    """Enqueue every job in one statement, all or none: their ids, in order.

    Jobs sharing a unique_key within the call, or with a job already holding
    it, get the same id.
    """
    params = _columns(list(jobs))
    if params is None:
        return []
    with _driver_errors(), conn.cursor(row_factory=tuple_row) as cur:
        cur.execute(query(_many(params)), params)
        row = cur.fetchone()
    assert row is not None
    return [JobId(i) for i in row[0]]


async def enqueue_many_async(aconn: AsyncConnection, jobs: Iterable[Job]) -> list[JobId]:
    """`enqueue_many` on an asyncio connection."""
    params = _columns(list(jobs))
    if params is None:
        return []
    with _driver_errors():
        async with aconn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(query(_many(params)), params)
            row = await cur.fetchone()
    assert row is not None
    return [JobId(i) for i in row[0]]


def _one(job: Job) -> str:
    """A keyed job goes through notifyworker.enqueue(), which finds a key's holder;
    any other is a plain INSERT, without the function's cost."""
    return "enqueue_job" if job.unique_key is not None else "enqueue_job_keyless"


def _many(params: dict[str, Any]) -> str:
    return "enqueue_jobs" if params["unique_keys"] is not None else "enqueue_jobs_keyless"


@contextlib.contextmanager
def _driver_errors() -> Iterator[None]:
    """The caller's own connection: keep the driver's exception as the cause."""
    try:
        yield
    except psycopg.Error as exc:
        raise translate(exc) from exc


def _row(job: Job) -> dict[str, Any]:
    """`job` as enqueue_job's parameters, checked before anything is sent."""
    placed = job.queue is not None or job.priority is not None or job.limit_key is not None
    if placed and (problem := _placement_problem(job)):
        raise InvalidJob(problem)
    return {
        "task": job.task,
        "payload": Jsonb(_json_object(job), dumps=_as_is),
        "object_id": job.object_id,
        "timeout": _interval(job.timeout),
        "max_attempts": job.max_attempts,
        "run_at": _aware(job.run_at),
        "unique_key": job.unique_key,
        "queue": job.queue,
        "priority": job.priority,
        "limit_key": job.limit_key,
    }


def _placement_problem(job: Job) -> str | None:
    """Why the job's queue, priority or limit_key would break the table's CHECKs, or None."""
    if job.queue is not None and (problem := queue_problem(job.queue)):
        return problem
    if job.priority is not None and (problem := priority_problem(job.priority)):
        return problem
    if job.limit_key is not None:
        return limit_key_problem(job.limit_key)
    return None


def _columns(jobs: Sequence[Job]) -> dict[str, Any] | None:
    """enqueue_jobs's arrays, a column with no values as NULL (all defaults); None: no jobs."""
    if not jobs:
        return None
    rows = [_row(job) for job in jobs]
    params: dict[str, Any] = {}
    for column, array in _ARRAYS.items():
        values = [row[column] for row in rows]
        params[array] = values if any(v is not None for v in values) else None
    return params


def _json_object(job: Job) -> str:
    if isinstance(job.payload, str):
        return job.payload  # JSON text: the table's constraints judge it
    if not isinstance(job.payload, Mapping):
        raise InvalidPayload(
            f"the payload of a {job.task!r} job must be a JSON object (a mapping or its text),"
            f" not {type(job.payload).__name__}"
        )
    try:
        return json.dumps(job.payload, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InvalidPayload(f"the payload of a {job.task!r} job is not JSON: {exc}") from None


def _as_is(text: str) -> str:
    return text


def _interval(timeout: Timeout | None) -> timedelta | None:
    if timeout is None or isinstance(timeout, timedelta):
        return timeout
    if not math.isfinite(timeout):
        raise InvalidJob(f"timeout must be a finite number of seconds, not {timeout!r}")
    try:
        return timedelta(seconds=timeout)
    except OverflowError:
        raise InvalidJob(f"timeout of {timeout!r} seconds is too long") from None


def _aware(run_at: datetime | None) -> datetime | None:
    if run_at is not None and run_at.utcoffset() is None:
        raise InvalidJob(f"run_at must carry its time zone, not be naive: {run_at.isoformat()}")
    return run_at
