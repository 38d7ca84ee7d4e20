"""Enqueue from Python, in your own transaction: the producer API in one import.

    from notifyworker.producer import Job, defer, enqueue, enqueue_many

    with psycopg.connect(url) as conn:  # commits when the block ends
        enqueue(conn, "resize", {"image_id": 7}, unique_key="image-7")
        defer(conn, "resize", image_id=8)  # checked by the task's model first
        enqueue_many(conn, [Job("resize", {"image_id": i}) for i in range(1000)])

`enqueue` is the plain INSERT in Python (any task name, any JSON object, judged
by the table's constraints); `defer`, and `Task.defer` on a task itself, know
the task and check its payload before anything is sent. The `_async` forms take
an asyncio `AsyncConnection`. Importing this module starts nothing and imports
no event loop, so a web application or a script can use it as it is.
"""

from __future__ import annotations

from notifyworker.db.producer import (
    AsyncConnection,
    Connection,
    Job,
    JobOptions,
    Timeout,
    enqueue,
    enqueue_async,
    enqueue_many,
    enqueue_many_async,
)
from notifyworker.models import JobId
from notifyworker.tasks import Task, defer, defer_async

__all__ = [
    "AsyncConnection",
    "Connection",
    "Job",
    "JobId",
    "JobOptions",
    "Task",
    "Timeout",
    "defer",
    "defer_async",
    "enqueue",
    "enqueue_async",
    "enqueue_many",
    "enqueue_many_async",
]
