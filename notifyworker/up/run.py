"""`up`'s runtime: worker, demo producer, live view and dashboard, in one task group."""

from __future__ import annotations

import logging
import sys

import anyio
import anyio.abc
from rich.console import Console
from rich.live import Live

from notifyworker import admin, console
from notifyworker.config import DashboardSettings, Settings
from notifyworker.dashboard import serve_dashboard
from notifyworker.db import Database
from notifyworker.errors import ConfigError, ConnectionLost
from notifyworker.models import JobId, JobRow, WorkerId
from notifyworker.service import Worker, stop_on_signals
from notifyworker.tasks import Registry
from notifyworker.up.demo import produce_forever

log = logging.getLogger(__name__)

# How often the view reads the table, and how many of the latest jobs it shows.
REFRESH_SECONDS = 0.25
SHOWN_JOBS = 18


async def run_up(
    settings: Settings,
    registry: Registry,
    demo_rate: float,
    duration: float | None,
    out: Console,
    live: bool,
    board: DashboardSettings | None = None,
) -> tuple[JobId, float]:
    """Run until a signal (or `duration`); returns the last job id before the run and its length."""
    db = Database(settings.url(), size=2)
    await db.open()
    try:
        first_id = await db.run(admin.last_job_id)
        worker = Worker(settings, registry)
        began = anyio.current_time()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(stop_on_signals, worker)
            if board is not None:
                await _start_dashboard(tasks, settings.url(), board)
            await tasks.start(_run_worker, worker, tasks.cancel_scope)
            async with anyio.create_task_group() as demo:
                demo.start_soon(produce_forever, db, demo_rate)
                demo.start_soon(_view, db, first_id, out, live)
                if duration is not None:
                    with anyio.move_on_after(duration):
                        await worker.stop_requested.wait()
                    worker.stop()
                else:
                    await worker.stop_requested.wait()
                demo.cancel_scope.cancel()
        return first_id, round(anyio.current_time() - began, 1)
    finally:
        with anyio.CancelScope(shield=True):
            await db.close()


async def _start_dashboard(tasks: anyio.abc.TaskGroup, url: str, board: DashboardSettings) -> None:
    """The dashboard beside the demo (its log line gives the address); on a free port
    when the default one is taken, as a busy port must not stop the demo."""
    try:
        await tasks.start(serve_dashboard, url, board)
    except ConfigError:
        if "port" in board.model_fields_set:
            raise
        log.warning("port %d is taken: the dashboard takes a free one", board.port)
        await tasks.start(serve_dashboard, url, board.model_copy(update={"port": 0}))


async def _run_worker(
    worker: Worker,
    scope: anyio.CancelScope,
    task_status: anyio.abc.TaskStatus[WorkerId] = anyio.TASK_STATUS_IGNORED,
) -> None:
    await worker.run(task_status=task_status)
    scope.cancel()


async def _latest(db: Database, limit: int) -> list[JobRow] | None:
    try:
        return await db.run(admin.latest_jobs, limit)
    except ConnectionLost as exc:
        log.warning("view: %s", exc)
        return None


async def _view(db: Database, first_id: JobId, out: Console, live: bool) -> None:
    if live:
        with Live(console=out, auto_refresh=False, transient=False) as screen:
            while True:
                rows = await _latest(db, SHOWN_JOBS)
                if rows is None:
                    await anyio.sleep(REFRESH_SECONDS)
                    continue
                screen.update(
                    console.job_table(rows, title="notifyworker up  (Ctrl-C stops)"), refresh=True
                )
                await anyio.sleep(REFRESH_SECONDS)
    else:
        # Plain output: one line per job as it reaches each new status.
        seen: dict[int, str] = {}
        while True:
            recent = await _latest(db, SHOWN_JOBS * 4) or []
            for row in reversed(recent):
                if row.id > first_id and seen.get(row.id) != row.status:
                    seen[row.id] = row.status
                    print(console.plain_line(row), file=sys.stdout, flush=True)
            await anyio.sleep(REFRESH_SECONDS)
