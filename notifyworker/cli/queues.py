"""`notifyworker queue`, `queues` and `rate`: queues' fleet-wide settings, and their state.

A queue's settings are its row of notifyworker.queues (0014_queues.sql), for
the whole fleet: what these commands write, an operator may write with a plain
UPDATE too, and every claim reads it. A queue without a row runs with each
worker's own settings. `rate` is the default queue's rate, as it was the
fleet's before queues existed (it was each worker's then).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from notifyworker import admin, db
from notifyworker.cli.options import DatabaseUrl, DatabaseUrlFile, url_from
from notifyworker.errors import ConfigError, RowRejected
from notifyworker.models import (
    DEFAULT_QUEUE,
    MAX_CONCURRENCY,
    MAX_RATE,
    MIN_CONCURRENCY,
    MIN_RATE,
    QueueRow,
    concurrency_problem,
    key_rate_problem,
    queue_problem,
    rate_problem,
)
from notifyworker.safetext import visible

# The word that clears a limit: `--rate none`.
NONE = "none"
COLUMNS = (
    "queue",
    "waiting",
    "running",
    "rate",
    "concurrency",
    "key rate",
    "key concurrency",
    "state",
    "pickup p50",
)


def queue(
    name: Annotated[str, typer.Argument(help="The queue's name.", show_default=False)],
    rate: Annotated[
        str | None,
        typer.Option(
            metavar="R|none",
            help=f"Job starts per second for the whole fleet: {MIN_RATE:g} to {MAX_RATE:g}, "
            "0 = unpaced, or none = each worker's own rate.",
            show_default=False,
        ),
    ] = None,
    concurrency: Annotated[
        str | None,
        typer.Option(
            metavar="N|none",
            help=f"Jobs the whole fleet holds at once: {MIN_CONCURRENCY} to {MAX_CONCURRENCY}, "
            "or none = no limit.",
            show_default=False,
        ),
    ] = None,
    key_rate: Annotated[
        str | None,
        typer.Option(
            metavar="R|none",
            help=f"Starts per second of each limit_key, fleet-wide: {MIN_RATE:g} to "
            f"{MAX_RATE:g}, or none = no limit.",
            show_default=False,
        ),
    ] = None,
    key_concurrency: Annotated[
        str | None,
        typer.Option(
            metavar="N|none",
            help=f"Jobs of each limit_key held at once, fleet-wide: {MIN_CONCURRENCY} to "
            f"{MAX_CONCURRENCY}, or none = no limit.",
            show_default=False,
        ),
    ] = None,
    pause: Annotated[
        bool | None,
        typer.Option(
            "--pause/--resume",
            help="Pause the queue (its jobs stay new), or resume it.",
            show_default=False,
        ),
    ] = None,
    database_url: DatabaseUrl = None,
    database_url_file: DatabaseUrlFile = None,
) -> None:
    """Show a queue, or change its settings for the whole fleet (live: every claim reads them).

    Only the options given change; `none` clears a limit. A queue without
    settings runs with each worker's own rate and no limits.
    """
    if problem := queue_problem(name):
        raise ConfigError(problem)
    changes: dict[str, float | int | bool | None] = {}
    if rate is not None:
        changes["rate"] = _rate("--rate", rate, rate_problem)
    if concurrency is not None:
        changes["concurrency"] = _count("--concurrency", concurrency)
    if key_rate is not None:
        changes["key_rate"] = _rate("--key-rate", key_rate, key_rate_problem)
    if key_concurrency is not None:
        changes["key_concurrency"] = _count("--key-concurrency", key_concurrency)
    if pause is not None:
        changes["paused"] = pause
    url = url_from(database_url, database_url_file)
    if changes:
        try:
            db.run_once(url, admin.set_queue, name, changes)
        except RowRejected as exc:  # the CHECKs agree with the rules above: a late word
            raise ConfigError(str(exc)) from None
    _show(db.run_once(url, admin.list_queues, name))


def queues(database_url: DatabaseUrl = None, database_url_file: DatabaseUrlFile = None) -> None:
    """Every queue with settings, waiting jobs or running jobs: limits, state, recent pickup."""
    _show(db.run_once(url_from(database_url, database_url_file), admin.list_queues))


# A negative value is an argument for the rule to refuse in one line, not an unknown option.
def rate(
    value: Annotated[
        float | None,
        typer.Argument(
            help=f"Job starts per second of the default queue, for the whole fleet: "
            f"{MIN_RATE:g} to {MAX_RATE:g}, or 0 = unlimited.",
            show_default=False,
        ),
    ] = None,
    reset: Annotated[
        bool,
        typer.Option(
            "--reset",
            help="Go back to each worker's own configured rate "
            "(as `notifyworker queue default --rate none`).",
        ),
    ] = False,
    database_url: DatabaseUrl = None,
    database_url_file: DatabaseUrlFile = None,
) -> None:
    """Show or change the default queue's rate, shared by the whole fleet (live)."""
    if value is not None and (problem := rate_problem(value)):
        raise ConfigError(problem)
    url = url_from(database_url, database_url_file)
    if reset:
        db.run_once(url, admin.set_rate, None)
    elif value is not None:
        db.run_once(url, admin.set_rate, value)
    current = db.run_once(url, admin.get_rate)
    if current is None:
        print(f"each worker's own rate (queue {DEFAULT_QUEUE})")
    elif current == 0:
        print(f"unlimited for the whole fleet (queue {DEFAULT_QUEUE})")
    else:
        print(f"{current:g} jobs/s for the whole fleet (queue {DEFAULT_QUEUE})")


def _rate(option: str, text: str, rule: Callable[[float], str | None]) -> float | None:
    """A rate option's value: None for `none`, else a number the rule takes."""
    if text.strip().lower() == NONE:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{option} must be a number or {NONE}, not {text!r}") from None
    if problem := rule(value):
        raise ConfigError(f"{option}: {problem}")
    return value


def _count(option: str, text: str) -> int | None:
    """A concurrency option's value: None for `none`, else a whole number in bounds."""
    if text.strip().lower() == NONE:
        return None
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{option} must be a whole number or {NONE}, not {text!r}") from None
    if problem := concurrency_problem(value):
        raise ConfigError(f"{option} {problem}")
    return value


def _show(rows: list[QueueRow]) -> None:
    if sys.stdout.isatty():
        table = Table()
        for column in COLUMNS:
            table.add_column(
                column, no_wrap=True, justify="right" if column == "waiting" else "default"
            )
        for row in rows:
            cells = _cells(row)
            style = ("bold red" if row.waiting else "yellow") if row.paused else ""
            table.add_row(*(Text(cell) for cell in cells[:-2]), Text(cells[-2], style), cells[-1])
        Console().print(table)
    else:
        for row in rows:
            pairs = zip(COLUMNS, _cells(row), strict=True)
            print(" ".join(f"{k.replace(' ', '_')}={v}" for k, v in pairs))


def _cells(row: QueueRow) -> list[str]:
    """The row as inert text."""
    waiting = f"{admin.WAITING_CAP:,}+" if row.waiting > admin.WAITING_CAP else f"{row.waiting:,}"
    rate = "worker's own" if row.rate is None else _rate_text(row.rate)
    state = "active"
    if row.paused:
        state = f"paused, {waiting} waiting" if row.waiting else "paused"
    return [
        visible(row.name),
        waiting,
        f"{row.held:,}",
        rate,
        "-" if row.concurrency is None else f"{row.concurrency:,}",
        "-" if row.key_rate is None else f"{row.key_rate:g}/s",
        "-" if row.key_concurrency is None else f"{row.key_concurrency:,}",
        state,
        "-" if row.pickup_p50_ms is None else _ms(row.pickup_p50_ms),
    ]


def _rate_text(rate: float) -> str:
    return "unpaced" if rate == 0 else f"{rate:g}/s"


def _ms(value: float) -> str:
    return f"{value:.1f} ms" if value < 10 else f"{value:,.0f} ms"
