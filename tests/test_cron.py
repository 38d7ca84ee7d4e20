"""Cron expressions in a time zone, and which ticks a schedule owes: no database, fixed times."""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import BaseModel

from notifyworker.cron import ON_TIME_WITHIN, Cron, Due, Schedule, due, tick_reference
from notifyworker.errors import ConfigError, UnknownTask
from notifyworker.tasks import Registry

PARIS = ZoneInfo("Europe/Paris")
S = timedelta(seconds=1)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def paris(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=PARIS)


def ticks(cron: Cron, after: datetime, count: int) -> list[datetime]:
    found: list[datetime] = []
    while len(found) < count:
        tick = cron.next_after(found[-1] if found else after)
        if tick is None:
            break
        found.append(tick)
    return found


@pytest.mark.parametrize(
    ("expression", "tz", "says"),
    [
        ("61 * * * *", "UTC", "invalid cron expression '61 * * * *': bad minute"),
        ("* * *", "UTC", "invalid cron expression '* * *': wrong number of fields"),
        ("0 0 30 2 *", "UTC", "invalid cron expression '0 0 30 2 *': bad day-of-month"),
        ("@fortnightly", "UTC", "invalid cron expression '@fortnightly'"),
        ("", "UTC", "invalid cron expression ''"),
        ("1," * 150 + "2 * * * *", "UTC", "longer than 200 characters"),
        ("* * * * *", "Mars/Olympus_Mons", "unknown time zone 'Mars/Olympus_Mons'"),
        ("* * * * *", "../../etc/passwd", "unknown time zone '../../etc/passwd'"),
        ("* * * * *", "", "unknown time zone ''"),
    ],
)
def test_a_malformed_expression_or_zone_is_refused_in_one_line_quoting_it(
    expression: str, tz: str, says: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Cron(expression, tz)
    assert says in str(caught.value)
    assert "\n" not in str(caught.value)


def test_five_fields_six_with_seconds_and_nicknames() -> None:
    start = utc(2026, 12, 1, 10, 0, 0)
    assert ticks(Cron("*/20 * * * *"), start, 3) == [
        utc(2026, 12, 1, 10, 20),
        utc(2026, 12, 1, 10, 40),
        utc(2026, 12, 1, 11, 0),
    ]
    assert ticks(Cron("*/2 * * * * *"), start, 2) == [start + 2 * S, start + 4 * S]
    assert ticks(Cron("@daily"), start, 1) == [utc(2026, 12, 2)]
    assert ticks(Cron("@HOURLY"), start, 1) == [utc(2026, 12, 1, 11)]
    assert Cron("@HOURLY").expression == "@hourly"  # as the table's constraint wants it
    # Extra spaces are one separator; the expression is kept normalised.
    assert Cron("0   3 * *  *").expression == "0 3 * * *"


def test_the_next_tick_is_strictly_after_the_instant_even_within_a_second() -> None:
    cron = Cron("* * * * * *")
    assert cron.next_after(utc(2026, 1, 1, 0, 0, 0)) == utc(2026, 1, 1, 0, 0, 1)
    assert cron.next_after(utc(2026, 1, 1, 0, 0, 0) + timedelta(microseconds=999_999)) == utc(
        2026, 1, 1, 0, 0, 1
    )


def test_a_time_zone_moves_the_ticks_to_local_wall_time() -> None:
    cron = Cron("0 9 * * MON-FRI", "Europe/Paris")
    # Friday 4 December 2026, 09:00 in Paris is 08:00 UTC; then Monday.
    assert ticks(cron, utc(2026, 12, 4, 0), 2) == [utc(2026, 12, 4, 8), utc(2026, 12, 7, 8)]


def test_spring_forward_a_tick_in_the_skipped_hour_runs_just_after_the_jump() -> None:
    # Paris, 29 March 2026: 02:00 becomes 03:00; 02:30 does not exist that day.
    cron = Cron("30 2 * * *", "Europe/Paris")
    assert ticks(cron, paris(2026, 3, 28, 12), 3) == [
        paris(2026, 3, 29, 3, 0).astimezone(UTC),
        paris(2026, 3, 30, 2, 30).astimezone(UTC),
        paris(2026, 3, 31, 2, 30).astimezone(UTC),
    ]


def test_fall_back_a_daily_tick_runs_once_an_hourly_one_in_both_hours() -> None:
    # Paris, 25 October 2026: 03:00 becomes 02:00; 02:00-02:59 happen twice.
    daily = Cron("30 2 * * *", "Europe/Paris")
    assert ticks(daily, paris(2026, 10, 24, 12), 2) == [
        paris(2026, 10, 25, 2, 30).astimezone(UTC),  # the first 02:30 only
        paris(2026, 10, 26, 2, 30).astimezone(UTC),
    ]
    hourly = Cron("0 * * * *", "Europe/Paris")
    assert ticks(hourly, paris(2026, 10, 25, 1, 30), 4) == [
        utc(2026, 10, 25, 0),  # 02:00 summer time
        utc(2026, 10, 25, 1),  # 02:00 winter time
        utc(2026, 10, 25, 2),
        utc(2026, 10, 25, 3),
    ]


@pytest.mark.parametrize(
    ("expression", "tz"),
    [
        ("0 * * * *", "Europe/Paris"),
        ("30 2 * * *", "Europe/Paris"),
        ("*/15 * * * *", "America/New_York"),
        ("0 0 * * *", "Australia/Lord_Howe"),
        ("* * * * * *", "UTC"),
        ("0 0 29 2 *", "UTC"),
    ],
)
def test_the_latest_tick_going_back_is_the_one_going_forward_reaches(
    expression: str, tz: str
) -> None:
    cron = Cron(expression, tz)
    # Across 2026's DST changes in Europe, America and Lord Howe (half an hour), and leap days.
    starts = (
        utc(2026, 3, 28, 22), utc(2026, 10, 24, 22), utc(2026, 3, 8, 5), utc(2026, 11, 1, 4),
        utc(2026, 4, 4, 12), utc(2026, 10, 3, 12),
    )  # fmt: skip
    for start in starts:
        walked = ticks(cron, start, 60)
        for before, after in itertools.pairwise(walked):
            assert cron.latest_at_or_before(before) == before
            assert cron.latest_at_or_before(after - S) == before
    assert Cron("0 0 29 2 *").latest_at_or_before(utc(2026, 12, 1)) == utc(2024, 2, 29)


NOW = utc(2026, 12, 1, 12, 0, 0)


def test_a_tick_just_due_fires_and_nothing_before_it() -> None:
    cron = Cron("0 * * * *")
    assert due(cron, utc(2026, 12, 1, 11, 0), NOW, "one") == Due((NOW,))
    assert due(cron, utc(2026, 12, 1, 11, 0), NOW, "none") == Due((NOW,))
    assert due(cron, NOW, NOW + 59 * timedelta(minutes=1), "one") == Due()


def test_a_late_tick_fires_while_it_is_on_time() -> None:
    cron = Cron("0 * * * *")
    late = NOW + ON_TIME_WITHIN
    assert due(cron, utc(2026, 12, 1, 11, 0), late - S, "none") == Due((NOW,))
    assert due(cron, utc(2026, 12, 1, 11, 0), late, "none") == Due(skip_to=NOW, missed_from=NOW)


def test_after_downtime_one_catch_up_run_or_none_never_a_storm() -> None:
    cron = Cron("0 * * * *")
    since = utc(2026, 11, 28, 9, 0)  # three days down
    now = NOW + timedelta(minutes=30)
    assert due(cron, since, now, "one") == Due((NOW,), missed_from=utc(2026, 11, 28, 10))
    assert due(cron, since, now, "none") == Due(skip_to=NOW, missed_from=utc(2026, 11, 28, 10))


def test_after_downtime_the_ticks_on_time_fire_beside_the_catch_up() -> None:
    cron = Cron("*/20 * * * * *")
    since = NOW - timedelta(hours=1)
    now = NOW + 5 * S
    # 12:00:00 is 5 s late: on time. 11:59:00 was missed: one run for all the missed.
    assert due(cron, since, now, "one") == Due(
        (NOW - timedelta(minutes=1), NOW - 40 * S, NOW - 20 * S, NOW),
        missed_from=since + 20 * S,
    )
    assert due(cron, since, now, "none") == Due(
        (NOW - 40 * S, NOW - 20 * S, NOW),
        skip_to=NOW - timedelta(minutes=1),
        missed_from=since + 20 * S,
    )


def test_a_year_of_missed_ticks_every_second_is_decided_at_once() -> None:
    cron = Cron("* * * * * *")
    began = time.perf_counter()
    owed = due(cron, NOW - timedelta(days=365), NOW, "one")
    assert time.perf_counter() - began < 1.0  # 31 million ticks are never walked
    assert owed.fire[0] == NOW - ON_TIME_WITHIN
    assert owed.fire[1:] == tuple(NOW - ON_TIME_WITHIN + n * S for n in range(1, 61))


def test_the_job_names_its_schedule_and_its_tick_in_utc() -> None:
    tick = paris(2026, 12, 1, 9, 0)
    assert tick_reference("report", tick) == "schedule:report@2026-12-01T08:00:00Z"


class Report(BaseModel):
    region: str


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"cron": "0 25 * * *"}, "schedule 'r': invalid cron expression '0 25 * * *': bad hour"),
        ({"tz": "Europe/Nowhere"}, "schedule 'r': unknown time zone 'Europe/Nowhere'"),
        ({"catch_up": "all"}, "catch-up must be 'one' or 'none', not 'all'"),
        ({"name": "has space"}, "schedule name 'has space' must be 1 to 200 characters"),
        ({"task": ""}, "task name '' must be 1 to 200 characters"),
        ({"payload": {"at": datetime(2026, 1, 1)}}, "the payload is not JSON"),
    ],
)
def test_a_schedule_is_checked_when_declared(change: dict[str, Any], says: str) -> None:
    arguments: dict[str, Any] = {"name": "r", "cron": "0 * * * *", "task": "report", **change}
    with pytest.raises(ConfigError) as caught:
        Schedule(**arguments)
    assert says in str(caught.value)
    assert Schedule("r", "0  * * * *", "report").cron == "0 * * * *"


class Digest(BaseModel):
    region: str = "all"


async def report(payload: Report) -> None: ...


async def digest(payload: Digest) -> None: ...


def test_declared_next_to_the_task_or_on_its_own() -> None:
    registry = Registry()
    registry.task("digest", schedule="0  8 * * *", tz="Europe/Paris", catch_up="none")(digest)
    assert registry.schedules == (
        Schedule("digest", "0 8 * * *", "digest", "Europe/Paris", {}, "none"),
    )
    # Beside the task, the payload is empty: a model that needs a field refuses it at once.
    with pytest.raises(ConfigError, match=r"schedule 'report': invalid payload.*region"):
        registry.task("report", schedule="0 8 * * *")(report)

    registry = Registry()
    registry.schedule("report-eu", "0 8 * * *", task="report", payload={"region": "eu"})
    registry.add("report", report)  # the task may come after its schedules
    registry.schedule("report-us", "0 8 * * *", task="report", tz="America/New_York",
                      payload={"region": "us"})  # fmt: skip
    registry.check_schedules()
    assert [s.name for s in registry.schedules] == ["report-eu", "report-us"]
    with pytest.raises(ConfigError, match="schedule 'report-eu' is declared twice"):
        registry.schedule("report-eu", "0 9 * * *", task="report", payload={"region": "eu"})
    with pytest.raises(ConfigError, match="schedule 'x': invalid payload for task 'report'"):
        registry.schedule("x", "0 9 * * *", task="report", payload={"region": 7})


def test_a_malformed_schedule_beside_a_task_registers_nothing() -> None:
    registry = Registry()
    with pytest.raises(ConfigError, match="invalid cron expression '0 0 0 0 0'"):

        @registry.task("nightly", schedule="0 0 0 0 0")
        async def nightly(payload: Report) -> None: ...

    assert registry.schedules == ()
    with pytest.raises(UnknownTask):
        registry.get("nightly")


def test_a_schedule_of_a_task_nobody_registers_stops_the_worker_before_it_starts() -> None:
    registry = Registry()
    registry.schedule("orphan", "@daily", task="nobody")
    with pytest.raises(ConfigError, match="'orphan' names task 'nobody', which no tasks module"):
        registry.check_schedules()
