"""A worker inside an application's own event loop: FastAPI's lifespan, a trio app.

    from contextlib import asynccontextmanager
    from notifyworker.config import Settings
    from notifyworker.embedding import worker_running

    @asynccontextmanager
    async def lifespan(app):
        async with worker_running(Settings(tasks=("myapp.tasks",))):
            yield

The worker runs on whichever loop is running (asyncio or trio; `backend` is
for the CLI's own loop and is ignored here) and leaves signals to the
application: leaving the block stops it the way SIGTERM stops `notifyworker
run`, with no new claims, running jobs given `shutdown_grace`, and
unstarted jobs handed back.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio

from notifyworker.config import Settings
from notifyworker.service import Worker
from notifyworker.tasks import Registry, import_tasks
from notifyworker.tasks import registry as default_registry


@contextlib.asynccontextmanager
async def worker_running(
    settings: Settings, registry: Registry | None = None
) -> AsyncIterator[Worker]:
    """Start a worker, yield it once it claims, and stop it gracefully on the way out.

    Its task modules (`settings.tasks`) are imported first; handlers may also
    be registered in `registry` (the default one, unless given) beforehand.
    """
    import_tasks(settings.tasks)
    worker = Worker(settings, default_registry if registry is None else registry)
    async with anyio.create_task_group() as tasks:
        await tasks.start(worker.run)
        try:
            yield worker
        finally:
            if not worker.stop_requested.is_set():  # a second stop would cut the grace short
                worker.stop()
