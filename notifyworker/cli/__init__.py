"""The `notifyworker` command: up, run, migrate, check, enqueue, cancel, retry, rate, queue,
queues, jobs, job, schedules, prune, dashboard.

Typer gives typed options, help and shell completion for free; settings still
come from one pydantic-settings model (flags override NOTIFYWORKER_* env vars).
A user's mistake ends here as one line on stderr and a non-zero exit. The
commands are registered here, in the order `--help` lists them.
"""

from __future__ import annotations

from notifyworker.cli import dashboard, job, jobs, prune, queues, schedules, worker
from notifyworker.cli.app import app, main

for command in (
    worker.migrate,
    worker.check,
    worker.run,
    worker.up,
    jobs.enqueue,
    jobs.cancel,
    job.retry,
):
    app.command()(command)
# `rate -1` is a value to refuse with a clear message, not an unknown option.
app.command(context_settings={"ignore_unknown_options": True})(queues.rate)
app.command()(queues.queue)
app.command()(queues.queues)
app.command()(jobs.jobs)
app.command()(job.job)
app.add_typer(schedules.app, name="schedules")
app.command()(prune.prune)
app.command()(dashboard.dashboard)

__all__ = ["app", "main"]
