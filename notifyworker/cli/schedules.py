"""`notifyworker schedules`: list them with their next runs; add, remove, pause, resume.

What these commands do, an application may do with SQL on
notifyworker.schedules (the notifyworker_app role may); running workers see
a change within a second.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from notifyworker import admin, db, store
from notifyworker.cli.options import DatabaseUrl, DatabaseUrlFile, payload_object, url_from
from notifyworker.cron import CATCH_UP_POLICIES, CatchUp, Cron, Schedule, ScheduleRow
from notifyworker.errors import ConfigError
from notifyworker.safetext import visible

app = typer.Typer(
    help="Cron schedules: without a command, list them with their next run times.",
    no_args_is_help=False,
    invoke_without_command=True,
)

Name = Annotated[str, typer.Argument(help="The schedule's name.", show_default=False)]
COLUMNS = ("name", "cron", "tz", "task", "catch-up", "state", "last tick", "next run")


@app.callback()
def schedules(
    ctx: typer.Context,
    database_url: DatabaseUrl = None,
    database_url_file: DatabaseUrlFile = None,
) -> None:
    """Cron schedules: without a command, every schedule with its next run time."""
    if ctx.invoked_subcommand is not None:
        return
    rows, now = db.run_once(url_from(database_url, database_url_file), admin.list_schedules)
    lines = [_cells(row, now) for row in rows] if now is not None else []
    if sys.stdout.isatty():
        table = Table()
        for column in COLUMNS:
            table.add_column(column, no_wrap=True)
        for cells in lines:
            table.add_row(*(Text(cell) for cell in cells))
        Console().print(table)
    else:
        for cells in lines:
            print(" ".join(f"{k}={v}" for k, v in zip(COLUMNS, cells, strict=True) if v))


def _cells(row: ScheduleRow, now: datetime) -> list[str]:
    """The row as inert text; the next run as the schedule's own zone tells it."""
    try:
        cron = Cron(row.cron, row.tz)
    except ConfigError as exc:
        state, next_run = f"invalid: {exc}", ""
    else:
        state = "paused" if row.paused else "active"
        following = cron.next_after(max(row.since, now))
        next_run = "" if row.paused or following is None else _when(following, cron)
    last = "" if row.last_tick is None else row.last_tick.isoformat(" ", "seconds")
    raw = [row.name, row.cron, row.tz, row.task, row.catch_up, state, last, next_run]
    return [visible(cell) for cell in raw]


def _when(tick: datetime, cron: Cron) -> str:
    return tick.astimezone(cron.zone).isoformat(" ", "seconds")


@app.command()
def add(
    name: Name,
    cron: Annotated[
        str,
        typer.Option(
            help="Five fields (minute hour day month weekday), six with seconds first, "
            "or @hourly, @daily, @weekly, @monthly, @yearly.",
            show_default=False,
        ),
    ],
    task: Annotated[str, typer.Option(help="The task each tick runs.", show_default=False)],
    tz: Annotated[str, typer.Option(help="IANA time zone the expression is read in.")] = "UTC",
    payload: Annotated[str, typer.Option(help="JSON object passed to the task.")] = "{}",
    catch_up: Annotated[
        str,
        typer.Option(help="After ticks were missed: run the latest once (one), or none (none)."),
    ] = "one",
    database_url: DatabaseUrl = None,
    database_url_file: DatabaseUrlFile = None,
) -> None:
    """Add a schedule, or change the one of that name (its pause and ticks stay)."""
    if catch_up not in CATCH_UP_POLICIES:
        raise ConfigError(f"--catch-up must be 'one' or 'none', not {catch_up!r}")
    policy: CatchUp = "one" if catch_up == "one" else "none"
    schedule = Schedule(name, cron, task, tz, payload_object(payload), policy)
    url = url_from(database_url, database_url_file)
    created = db.run_once(url, store.declare_schedule, schedule)
    said = {True: "added", False: "updated", None: "unchanged"}[created]
    parsed = Cron(schedule.cron, schedule.tz)
    following = parsed.next_after(datetime.now(UTC))
    when = "" if following is None else f"; next tick {_when(following, parsed)}"
    print(visible(f"{said} schedule {name}{when}"))


@app.command()
def remove(
    name: Name, database_url: DatabaseUrl = None, database_url_file: DatabaseUrlFile = None
) -> None:
    """Delete a schedule (its jobs already enqueued stay)."""
    if not db.run_once(url_from(database_url, database_url_file), admin.remove_schedule, name):
        raise ConfigError(f"there is no schedule {name!r}")
    print(visible(f"removed schedule {name}"))


@app.command()
def pause(
    name: Name, database_url: DatabaseUrl = None, database_url_file: DatabaseUrlFile = None
) -> None:
    """Stop a schedule firing until it is resumed."""
    _pause(name, True, url_from(database_url, database_url_file))


@app.command()
def resume(
    name: Name, database_url: DatabaseUrl = None, database_url_file: DatabaseUrlFile = None
) -> None:
    """Resume a paused schedule from its next tick (the ticks of the pause never run)."""
    _pause(name, False, url_from(database_url, database_url_file))


def _pause(name: str, paused: bool, url: str) -> None:
    if not db.run_once(url, admin.pause_schedule, name, paused):
        raise ConfigError(f"there is no schedule {name!r}")
    print(visible(f"{'paused' if paused else 'resumed'} schedule {name}"))
