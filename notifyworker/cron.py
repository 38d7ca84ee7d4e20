"""Cron schedules: a definition, checked, and the ticks it owes at a given time.

    Schedule("nightly-report", "30 2 * * *", task="report", tz="Europe/Paris")

An expression has five fields (minute hour day-of-month month day-of-week),
six with seconds first (`*/10 * * * * *`: every ten seconds), or is a
nickname (@hourly, @daily, @weekly, @monthly, @yearly). It is read in its
time zone with Debian cron's rules across DST (cronsim): a job due in the
hour skipped in spring runs just after the jump, one due in the hour repeated
in autumn runs once, and one that runs every hour (or more often) runs in
both. A malformed expression or zone is refused when declared, in one line
that quotes it.

Which ticks to fire is decided here, from the last tick fired (or the last
change of the definition) and the time now, both on PostgreSQL's clock:
every tick that is due and less than ON_TIME_WITHIN late fires; older ones were
missed (no scheduler ran), and of those the catch-up policy fires the latest
once ('one') or none ('none'), never one per missed tick. Computing that
never walks the missed ticks one by one, however many there were.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from notifyworker.errors import ConfigError

CatchUp = Literal["one", "none"]
CATCH_UP_POLICIES: tuple[str, ...] = get_args(CatchUp)

# A tick fired less than this late is on time; an older one was missed (no
# scheduler ran) and falls to the catch-up policy. Quartz's misfire threshold.
ON_TIME_WITHIN = timedelta(seconds=60)
# Most ticks of one schedule fired in one round: on-time ticks of a schedule
# every second number at most ON_TIME_WITHIN's seconds, plus one catch-up.
MAX_TICKS_PER_ROUND = 100
# Steps forward that check a tick found going backwards (cronsim's reverse
# iteration) against forward iteration, the one the ticks are fired by.
_CHECK_STEPS = 50
_SECOND = timedelta(seconds=1)

NICKNAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# The lengths the table's constraints accept (name_is_a_name, task_is_a_name,
# cron_is_cron_shaped).
NAME_MAX = 200
EXPRESSION_MAX = 200


def name_problem(what: str, value: str) -> str | None:
    """Why a schedule's or a task's name cannot be one (the table's rule), or None."""
    if not 1 <= len(value) <= NAME_MAX or any(c in value for c in " \t\r\n\v\f"):
        return f"{what} {value!r} must be 1 to {NAME_MAX} characters with no whitespace"
    return None


class Cron:
    """A cron expression read in a time zone; every tick it yields is a UTC datetime."""

    def __init__(self, expression: str, tz: str = "UTC") -> None:
        # One space between fields and nicknames in lower case: the table's shape.
        self.expression = " ".join(expression.split())
        if self.expression.lower() in NICKNAMES:
            self.expression = self.expression.lower()
        self.tz = tz
        self.zone = _zone(tz)
        self._fields = NICKNAMES.get(self.expression, self.expression)
        if len(self.expression) > EXPRESSION_MAX:
            raise ConfigError(
                f"invalid cron expression {expression[:EXPRESSION_MAX]!r}…: "
                f"longer than {EXPRESSION_MAX} characters"
            )
        try:
            CronSim(self._fields, datetime.now(self.zone))
        except CronSimError as exc:
            reason = str(exc).lower() or "malformed"
            raise ConfigError(f"invalid cron expression {expression!r}: {reason}") from None
        if self.next_after(datetime.now(UTC)) is None:
            raise ConfigError(f"invalid cron expression {expression!r}: it never fires")

    def next_after(self, instant: datetime) -> datetime | None:
        """The first tick strictly after `instant`; None if there is none for 50 years."""
        try:
            tick = next(CronSim(self._fields, instant.astimezone(self.zone)))
        except StopIteration:
            return None
        # Compared in UTC only: two datetimes of one zone compare by wall time,
        # which is wrong in the hour that autumn repeats.
        return tick.astimezone(UTC)

    def latest_at_or_before(self, instant: datetime) -> datetime | None:
        """The last tick at or before `instant` (whole seconds), without walking forward to it."""
        cutoff = instant.astimezone(UTC).replace(microsecond=0)
        try:
            found = next(CronSim(self._fields, (cutoff + _SECOND).astimezone(self.zone), True))
        except StopIteration:
            return None
        tick = found.astimezone(UTC)
        if tick > cutoff:
            return None
        # Going backwards and forwards may disagree around a DST change: the
        # ticks fired are forward iteration's, so step forward to its last one.
        for _ in range(_CHECK_STEPS):
            following = self.next_after(tick)
            if following is None or following > cutoff:
                break
            tick = following
        return tick


def _zone(tz: str) -> tzinfo:
    if tz in {"UTC", "Etc/UTC"}:
        return UTC
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ConfigError(f"unknown time zone {tz!r} (an IANA name, e.g. Europe/Paris)") from None


@dataclass(frozen=True)
class Schedule:
    """A schedule as declared in code or with `notifyworker schedules add`; checked when made."""

    name: str
    cron: str
    task: str
    tz: str = "UTC"
    payload: dict[str, Any] = field(default_factory=dict)
    catch_up: CatchUp = "one"

    def __post_init__(self) -> None:
        for what, value in (("schedule name", self.name), ("task name", self.task)):
            if problem := name_problem(what, value):
                raise ConfigError(problem)
        where = f"schedule {self.name!r}"
        try:
            parsed = Cron(self.cron, self.tz)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        object.__setattr__(self, "cron", parsed.expression)
        if self.catch_up not in CATCH_UP_POLICIES:
            raise ConfigError(f"{where}: catch-up must be 'one' or 'none', not {self.catch_up!r}")
        if not isinstance(self.payload, dict):
            raise ConfigError(f"{where}: the payload must be a JSON object")
        try:
            json.dumps(self.payload, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: the payload is not JSON: {exc}") from None


@dataclass(frozen=True)
class Due:
    """What one schedule owes now: ticks to fire in order, and missed ticks passed over."""

    fire: tuple[datetime, ...] = ()
    # Under catch-up 'none': last_tick moves to this missed tick, with no job.
    skip_to: datetime | None = None
    # The first tick missed, when any was (for the log line).
    missed_from: datetime | None = None


def due(cron: Cron, since: datetime, now: datetime, catch_up: CatchUp) -> Due:
    """The ticks after `since` (the last fired, or the last change) owed at `now`."""
    first = cron.next_after(since)
    if first is None or first > now:
        return Due()
    cutoff = now - ON_TIME_WITHIN
    fire: list[datetime] = []
    skip_to = missed_from = None
    start = max(since, cutoff)
    if first <= cutoff:
        missed_from = first
        latest = cron.latest_at_or_before(cutoff)
        latest = first if latest is None or latest < first else latest
        if catch_up == "one":
            fire.append(latest)
        else:
            skip_to = latest
        start = max(latest, cutoff)
    tick = cron.next_after(start)
    while tick is not None and tick <= now and len(fire) < MAX_TICKS_PER_ROUND:
        fire.append(tick)
        tick = cron.next_after(tick)
    return Due(tuple(fire), skip_to, missed_from)


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    """A row of notifyworker.schedules, as stored: checked only when it is used."""

    name: str
    cron: str
    tz: str
    task: str
    paused: bool
    catch_up: str
    last_tick: datetime | None
    updated_at: datetime
    payload: dict[str, Any] | None = None
    created_at: datetime | None = None

    @property
    def since(self) -> datetime:
        """Ticks after this one are owed: the last fired, or the last change if later."""
        if self.last_tick is None:
            return self.updated_at
        return max(self.last_tick, self.updated_at)


def tick_reference(name: str, tick: datetime) -> str:
    """A scheduled job's object_id: its schedule and its tick, in UTC."""
    return f"schedule:{name}@{tick.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"


def schedule_rows(rows: list[dict[str, Any]]) -> tuple[list[ScheduleRow], datetime | None]:
    """Rows read with PostgreSQL's clock (`now`): the schedules, and the clock (None: no row)."""
    now = rows[0]["now"] if rows else None
    return [ScheduleRow(**{k: v for k, v in row.items() if k != "now"}) for row in rows], now
