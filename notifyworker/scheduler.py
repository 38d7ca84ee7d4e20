"""The scheduler: cron schedules' jobs, exactly one per tick, from every replica at once.

Every worker runs one. When it starts, it writes the schedules declared in
code to notifyworker.schedules (upsert by name); then it reads the table every
`reload_interval` (a schedule added from SQL or the CLI is seen within a
second), and sleeps until the next tick due or the next reading, whichever
comes first. Ticks are judged on PostgreSQL's clock, read with the table.

A due tick is fired by a compare-and-set on the schedule's row, moving
`last_tick` forward to it, and the insert of its job in the same transaction
(`store.fire_tick`): every replica may try the same tick, one moves the row,
and the others find it moved. So a tick makes one job, however many replicas
run, whoever restarts, and whatever their clocks say. Which ticks are owed
after downtime is `cron.due`'s rule: one catch-up run or none, never a storm.

A row it cannot use (an expression or zone that does not parse, stored by
hand) is skipped with one warning, and the others fire on; a failing
database pauses the loop with a growing backoff (`Retrying`), never ends it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NoReturn, cast

import anyio

from notifyworker import store
from notifyworker.backoff import Retrying
from notifyworker.cron import CATCH_UP_POLICIES, CatchUp, Cron, Due, Schedule, ScheduleRow, due
from notifyworker.db import Database
from notifyworker.errors import ConfigError, RowRejected

log = logging.getLogger(__name__)

# How often the table is read again: a schedule added, changed or paused from
# SQL or the CLI is acted on within this long.
RELOAD_INTERVAL = 1.0


@dataclass(frozen=True)
class _Plan:
    """A schedule's parsed expression, and its next tick as last computed."""

    key: tuple[str, str, datetime]  # (cron, tz, since) it was computed from
    cron: Cron
    next_tick: datetime | None


class Scheduler:
    def __init__(
        self,
        db: Database,
        declared: Iterable[Schedule] = (),
        reload_interval: float = RELOAD_INTERVAL,
    ) -> None:
        self._db = db
        self._declared = tuple(declared)
        self.reload_interval = reload_interval
        self.retrying = Retrying("scheduler")
        self._plans: dict[str, _Plan] = {}
        # Parsed expressions by (cron, tz): a ConfigError for one that does not parse.
        self._crons: dict[tuple[str, str], Cron | ConfigError] = {}
        # (name, cron, tz, what) already warned about: one warning per problem, not per round.
        self._warned: set[tuple[str, str, str, str]] = set()

    def stalled(self, now: float, within: float) -> str | None:
        """Why schedules may not fire: the scheduler has failed for too long (readiness)."""
        failing = self.retrying.failing_for(now)
        if failing > within:
            return f"the scheduler has failed for {failing:.1f}s ({self.retrying.last_error})"
        return None

    async def run_forever(self) -> NoReturn:
        await self._declare()
        while True:
            started = anyio.current_time()
            try:
                wake = await self._round()
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                await self.retrying.failed(exc)
                continue
            self.retrying.succeeded()
            await anyio.sleep_until(min(wake, started + self.reload_interval))

    async def _declare(self) -> None:
        """Write the schedules declared in code, retrying what the database could not take."""
        for schedule in self._declared:
            while True:
                try:
                    created = await self._db.run(store.declare_schedule, schedule)
                except RowRejected as exc:
                    log.error("schedule %r could not be stored: %s", schedule.name, exc)
                    break
                except Exception as exc:  # noqa: BLE001 - retried until it lands
                    await self.retrying.failed(exc)
                    continue
                self.retrying.succeeded()
                if created is not None:
                    log.info(
                        "schedule %r %s: %s (%s) -> task %r",
                        schedule.name, "declared" if created else "updated",
                        schedule.cron, schedule.tz, schedule.task,
                    )  # fmt: skip
                break

    async def _round(self) -> float:
        """Fire what is due; when (event loop's clock) the next tick falls due."""
        rows, db_now = await self._db.run(store.load_schedules)
        seen_at = anyio.current_time()
        wake = seen_at + self.reload_interval
        # What is remembered of rows changed or gone since is forgotten.
        names = {row.name for row in rows}
        definitions = {(row.cron, row.tz) for row in rows}
        current = {(row.name, row.cron, row.tz) for row in rows}
        self._plans = {name: plan for name, plan in self._plans.items() if name in names}
        self._crons = {key: cron for key, cron in self._crons.items() if key in definitions}
        self._warned = {key for key in self._warned if key[:3] in current}
        if db_now is None:
            return wake
        for row in rows:
            if row.paused:
                continue
            # PostgreSQL's clock now, as read with the rows, plus the time since.
            now = db_now + _seconds(anyio.current_time() - seen_at)
            plan = self._plan(row)
            if plan is None:
                continue
            next_tick = plan.next_tick
            if next_tick is not None and next_tick <= now:
                next_tick = await self._act(row, plan, now)
            if next_tick is not None:
                wake = min(wake, seen_at + (next_tick - db_now).total_seconds())
        return wake

    def _plan(self, row: ScheduleRow) -> _Plan | None:
        """The row's parsed expression and next tick; None (warned once) if it cannot be used."""
        key = (row.cron, row.tz, row.since)
        plan = self._plans.get(row.name)
        if plan is not None and plan.key == key:
            return plan
        try:
            if row.catch_up not in CATCH_UP_POLICIES:
                raise ConfigError(f"catch-up must be 'one' or 'none', not {row.catch_up!r}")
            cron = self._cron(row.cron, row.tz)
            plan = _Plan(key, cron, cron.next_after(row.since))
        except Exception as exc:  # noqa: BLE001 - a row nobody planned for skips itself only
            self._warn_once(row, "skipped", f"schedule {row.name!r} skipped: {exc}")
            self._plans.pop(row.name, None)
            return None
        self._plans[row.name] = plan
        return plan

    def _cron(self, expression: str, tz: str) -> Cron:
        parsed = self._crons.get((expression, tz))
        if parsed is None:
            try:
                parsed = Cron(expression, tz)
            except ConfigError as exc:
                parsed = exc
            self._crons[(expression, tz)] = parsed
        if isinstance(parsed, ConfigError):
            raise parsed
        return parsed

    async def _act(self, row: ScheduleRow, plan: _Plan, now: datetime) -> datetime | None:
        """Fire (or skip) the ticks `row` owes at `now`; its next tick after them."""
        try:
            owed = due(plan.cron, row.since, now, cast("CatchUp", row.catch_up))
        except Exception as exc:  # noqa: BLE001 - an expression cronsim cannot follow
            self._warn_once(row, "skipped", f"schedule {row.name!r} skipped: {exc}")
            return None
        last = row.since
        if owed.skip_to is not None:
            if await self._db.run(store.skip_ticks, row, owed.skip_to):
                self._say_missed(row, owed, "catch-up 'none': none of them runs")
            last = owed.skip_to
        for tick in owed.fire:
            try:
                job = await self._db.run(store.fire_tick, row, tick)
            except RowRejected as exc:
                self._warn_once(row, "rejected", f"schedule {row.name!r}: its job refused: {exc}")
                return None
            if job is not None:
                log.debug("schedule %r: tick %s fired as job %d", row.name, tick, job)
                if owed.skip_to is None and tick == owed.fire[0]:
                    self._say_missed(row, owed, f"catch-up 'one': job {job} runs once for them")
            last = tick
        return plan.cron.next_after(last)

    def _say_missed(self, row: ScheduleRow, owed: Due, what: str) -> None:
        """One line per outage and schedule, from the replica that acted on it."""
        if owed.missed_from is not None:
            log.warning(
                "schedule %r missed its ticks from %s on (no scheduler ran); %s",
                row.name, owed.missed_from.isoformat(), what,
            )  # fmt: skip

    def _warn_once(self, row: ScheduleRow, what: str, message: str) -> None:
        key = (row.name, row.cron, row.tz, what)
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s", message)


def _seconds(value: float) -> timedelta:
    """Seconds of the event loop's clock as a timedelta."""
    return timedelta(seconds=value)
