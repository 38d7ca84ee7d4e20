"""The producer API: enqueue in the caller's transaction, in bulk, and typed from the task."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.pq import TransactionStatus
from pydantic import BaseModel, ConfigDict, Field, field_serializer

from notifyworker.errors import InvalidJob, InvalidPayload, RowRejected, UnknownTask
from notifyworker.producer import (
    Job,
    JobOptions,
    defer,
    defer_async,
    enqueue,
    enqueue_async,
    enqueue_many,
    enqueue_many_async,
)
from notifyworker.tasks import Registry
from tests.helpers import scalar

COUNT = "SELECT count(*) FROM notifyworker.jobs"


class Resize(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_id: int
    width: int = Field(default=640, gt=0)


class Crop(BaseModel):
    image_id: int


class Aliased(BaseModel):
    image_id: int = Field(alias="imageId")


class Shouting(BaseModel):
    """Writes its field as what it refuses to read back: the worker would fail every such job."""

    name: str

    @field_serializer("name")
    def length(self, name: str) -> int:
        return len(name)


class Timed(BaseModel):
    timeout: float


registry = Registry()


@registry.task("resize")
async def resize(payload: Resize) -> dict[str, int]:
    return {"width": payload.width}


@registry.task("aliased")
async def aliased(payload: Aliased) -> None:
    pass


@registry.task("shouting")
async def shouting(payload: Shouting) -> None:
    pass


@registry.task("timed")
async def timed(payload: Timed) -> None:
    pass


@pytest.fixture
def tx(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection as an application holds it: not autocommit, so each use opens a transaction."""
    with psycopg.connect(database_url) as connection:
        yield connection


def sent_nothing(conn: psycopg.Connection[Any]) -> bool:
    """No statement reached the server: it would have opened a transaction."""
    return conn.info.transaction_status == TransactionStatus.IDLE


def test_importing_the_producer_imports_no_event_loop_and_starts_nothing() -> None:
    code = (
        "import threading, sys, notifyworker.producer;"
        "assert 'trio' not in sys.modules, 'trio';"
        "assert threading.active_count() == 1, threading.enumerate()"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_a_job_exists_only_if_the_caller_commits(
    tx: psycopg.Connection[Any], conn: psycopg.Connection[Any]
) -> None:
    enqueue(tx, "sleep", {"seconds": 1})
    assert scalar(conn, COUNT) == 0  # not yet committed: nobody else sees it
    tx.rollback()
    assert scalar(conn, COUNT) == 0
    with tx.transaction():
        job = enqueue(tx, "sleep", {"seconds": 1})
    assert scalar(conn, "SELECT payload FROM notifyworker.jobs") == {"seconds": 1}
    assert scalar(conn, "SELECT id FROM notifyworker.jobs") == job


def test_every_option_reaches_the_row(conn: psycopg.Connection[Any]) -> None:
    at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    first = enqueue(
        conn,
        "sleep",
        '{"seconds": 2}',
        object_id="image-7",
        timeout=2.5,
        max_attempts=3,
        run_at=at,
        unique_key="k",
    )
    second = enqueue(conn, "sleep", timeout=timedelta(minutes=2))
    rows = conn.execute(
        "SELECT id, payload, object_id, timeout, max_attempts, run_at, unique_key"
        " FROM notifyworker.jobs ORDER BY id"
    ).fetchall()
    assert rows[0] == (first, {"seconds": 2}, "image-7", timedelta(seconds=2.5), 3, at, "k")
    assert rows[1][:4] == (second, {}, None, timedelta(minutes=2))


def test_enqueue_leaves_what_a_plain_insert_leaves(conn: psycopg.Connection[Any]) -> None:
    """NULL options take the columns' defaults: the functions' and the statements' copies agree."""
    columns = (
        "task, payload, object_id, timeout, max_attempts, run_at, status, attempts, queue,"
        " priority, limit_key"
    )
    with conn.transaction():  # one now(), for run_at
        plain = scalar(conn, "INSERT INTO notifyworker.jobs (task) VALUES ('a') RETURNING id")
        by_function = scalar(conn, "SELECT notifyworker.enqueue('a')")
        by_bulk = scalar(conn, "SELECT notifyworker.enqueue_many(ARRAY['a'])")[0]
        # Without a unique_key, Python sends plain INSERTs with their own copy of the defaults.
        by_python = enqueue(conn, "a")
        by_python_bulk = enqueue_many(conn, [Job("a")])[0]
        rows = [
            conn.execute(
                f"SELECT {columns} FROM notifyworker.jobs WHERE id = %s".encode(), (job,)
            ).fetchone()
            for job in (plain, by_function, by_bulk, by_python, by_python_bulk)
        ]
    assert rows[0] == rows[1] == rows[2] == rows[3] == rows[4]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"run_at": datetime(2030, 1, 1)}, "run_at must carry its time zone"),
        ({"timeout": math.nan}, "finite number of seconds"),
        ({"timeout": 1e300}, "too long"),
    ],
)
def test_an_option_python_cannot_send_is_refused_before_any_sql(
    tx: psycopg.Connection[Any], options: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidJob, match=message):
        enqueue(tx, "sleep", **options)
    assert sent_nothing(tx)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([1, 2], "must be a JSON object"),
        ({"at": datetime.now(UTC)}, "not JSON"),
        ({"x": math.inf}, "not JSON"),
    ],
)
def test_a_payload_that_is_not_a_json_object_is_refused_before_any_sql(
    tx: psycopg.Connection[Any], payload: Any, message: str
) -> None:
    with pytest.raises(InvalidPayload, match=message):
        enqueue(tx, "sleep", payload)
    assert sent_nothing(tx)


def test_a_row_the_table_refuses_is_row_rejected_with_the_drivers_error_as_cause(
    conn: psycopg.Connection[Any],
) -> None:
    with pytest.raises(RowRejected, match="max_attempts_in_range") as caught:
        enqueue(conn, "sleep", max_attempts=0)
    assert isinstance(caught.value.__cause__, psycopg.errors.CheckViolation)


PLACED = "SELECT queue, priority, limit_key FROM notifyworker.jobs WHERE id = %s"


def test_queue_priority_and_limit_key_reach_the_row_by_every_way_in(
    conn: psycopg.Connection[Any],
) -> None:
    where = JobOptions(queue="email", priority=7, limit_key="tenant-1")
    keyed = where.copy()
    keyed["unique_key"] = "k"
    one = enqueue(conn, "sleep", **where)  # the plain INSERT
    held = enqueue(conn, "sleep", **keyed)  # through notifyworker.enqueue()
    many = enqueue_many(conn, [Job("sleep", **where), Job("sleep")])  # the bulk INSERT
    keyed["unique_key"] = "k2"
    many_keyed = enqueue_many(conn, [Job("sleep", **keyed), Job("sleep")])  # enqueue_many()
    deferred = resize.defer(conn, image_id=1, queue="images", priority=-3, limit_key="t2")
    in_bulk = enqueue_many(conn, [resize.job(image_id=2, queue="images", limit_key="t3")])
    placed = [tuple(conn.execute(PLACED, (job,)).fetchone() or ()) for job in (one, held)]
    placed += [tuple(conn.execute(PLACED, (job,)).fetchone() or ()) for job in many + many_keyed]
    assert (
        placed
        == [("email", 7, "tenant-1")] * 2
        + [
            ("email", 7, "tenant-1"),
            ("default", 0, None),
        ]
        * 2
    )
    assert conn.execute(PLACED, (deferred,)).fetchone() == ("images", -3, "t2")
    assert conn.execute(PLACED, (in_bulk[0],)).fetchone() == ("images", 0, "t3")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"queue": ""}, "a queue's name must be 1 to 100 characters without whitespace"),
        ({"queue": "two words"}, "without whitespace"),
        ({"queue": "tab\there"}, "without whitespace"),
        ({"queue": "q" * 101}, "1 to 100 characters"),
        ({"queue": 7}, "a queue's name must be a string, not int"),
        ({"priority": 1_000_001}, "priority must be between -1,000,000 and 1,000,000"),
        ({"priority": -1_000_001}, "priority must be between"),
        ({"priority": 1.5}, "priority must be a whole number, not float"),
        ({"priority": True}, "priority must be a whole number, not bool"),
        ({"limit_key": ""}, "limit_key must be 1 to 200 characters"),
        ({"limit_key": "k" * 201}, "limit_key must be 1 to 200 characters"),
        ({"limit_key": 3}, "limit_key must be a string, not int"),
    ],
)
def test_a_queue_priority_or_limit_key_the_table_refuses_is_refused_before_any_sql(
    tx: psycopg.Connection[Any], options: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidJob, match=message):
        enqueue(tx, "sleep", **options)
    with pytest.raises(InvalidJob, match=message):
        enqueue_many(tx, [Job("sleep"), Job("sleep", **options)])
    with pytest.raises(InvalidJob, match=message):
        resize.defer(tx, image_id=1, **options)
    assert sent_nothing(tx)


@pytest.mark.parametrize(
    ("column", "accepted", "refused", "constraint"),
    [
        ("queue", "q" * 100, "q" * 101, "queue_is_a_name"),
        ("queue", "a-b.c:d", "a\x0bb", "queue_is_a_name"),
        ("priority", 1_000_000, 1_000_001, "priority_in_range"),
        ("priority", -1_000_000, -1_000_001, "priority_in_range"),
        ("limit_key", "k" * 200, "k" * 201, "limit_key_1_to_200_characters"),
        ("limit_key", "k", "", "limit_key_1_to_200_characters"),
    ],
    ids=["queue-length", "queue-whitespace", "priority-max", "priority-min", "key-max", "key-min"],
)
def test_the_producers_rules_are_the_tables(
    conn: psycopg.Connection[Any], column: str, accepted: Any, refused: Any, constraint: str
) -> None:
    """What Python lets through, the table stores; what it refuses, the table refuses too."""
    job = enqueue(conn, "sleep", **{column: accepted})
    assert scalar(conn, f"SELECT {column} FROM notifyworker.jobs WHERE id = %s", job) == accepted
    with pytest.raises(InvalidJob):
        enqueue(conn, "sleep", **{column: refused})
    with pytest.raises(psycopg.errors.CheckViolation, match=constraint):
        conn.execute(
            f"INSERT INTO notifyworker.jobs (task, {column}) VALUES ('sleep', %s)".encode(),
            (refused,),
        )


def test_many_jobs_in_one_call_come_back_in_order(conn: psycopg.Connection[Any]) -> None:
    jobs = [Job("sleep", {"n": n}, object_id=str(n)) for n in range(5)]
    jobs[2] = Job("sleep", {"n": 2}, max_attempts=2, timeout=3)
    ids = enqueue_many(conn, jobs)
    stored = conn.execute(
        "SELECT id, payload, object_id, max_attempts, timeout FROM notifyworker.jobs ORDER BY id"
    ).fetchall()
    assert [row[0] for row in stored] == ids
    assert [row[1] for row in stored] == [{"n": n} for n in range(5)]
    assert stored[2][2:] == (None, 2, timedelta(seconds=3))
    assert stored[3][2:] == ("3", 1, timedelta(seconds=10))
    assert enqueue_many(conn, []) == []


def test_many_jobs_wake_the_workers_once(database_url: str, conn: psycopg.Connection[Any]) -> None:
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("LISTEN notifyworker_jobs")
        enqueue_many(conn, [Job("sleep") for _ in range(100)])
        enqueue_many(conn, [Job("sleep", unique_key=str(n)) for n in range(100)])
        got = list(listener.notifies(timeout=1.0))
    assert len(got) == 2


@pytest.mark.parametrize("keyed", [False, True])
def test_a_failed_bulk_enqueue_inserts_none_of_its_jobs(
    tx: psycopg.Connection[Any], conn: psycopg.Connection[Any], keyed: bool
) -> None:
    jobs = [Job("sleep", unique_key=f"k{n}" if keyed else None) for n in range(10)]
    jobs[7] = Job("bad name")
    with pytest.raises(RowRejected, match="task_is_a_name"):
        enqueue_many(conn, jobs)  # autocommit: the statement alone
    assert scalar(conn, COUNT) == 0
    with pytest.raises(RowRejected, match="task_is_a_name"):
        enqueue_many(tx, jobs)
    tx.rollback()
    assert scalar(conn, COUNT) == 0
    with pytest.raises(InvalidPayload, match="'sleep' job must be a JSON object"):
        enqueue_many(tx, [Job("sleep"), Job("sleep", [1])])  # type: ignore[arg-type]
    assert sent_nothing(tx)


def test_defer_takes_the_model_a_mapping_or_fields(conn: psycopg.Connection[Any]) -> None:
    ids = [
        resize.defer(conn, Resize(image_id=1)),
        resize.defer(conn, {"image_id": 2, "width": 20}),
        resize.defer(conn, image_id=3, object_id="image-3", unique_key="image-3"),
        registry.defer(conn, "resize", image_id=4),
        aliased.defer(conn, Aliased(imageId=5)),
    ]
    rows = conn.execute(
        "SELECT id, task, payload, object_id, unique_key FROM notifyworker.jobs ORDER BY id"
    ).fetchall()
    assert [row[0] for row in rows] == ids
    assert [row[2] for row in rows] == [
        {"image_id": 1, "width": 640},
        {"image_id": 2, "width": 20},
        {"image_id": 3, "width": 640},
        {"image_id": 4, "width": 640},
        {"imageId": 5},  # as the worker's model reads it back
    ]
    assert rows[2][3:] == ("image-3", "image-3")
    assert {row[1] for row in rows} == {"resize", "aliased"}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: resize.defer(c, image_id="seven"), r"image_id: Input should be a valid integer"),
        (lambda c: resize.defer(c, image_id=7, width=0), r"width: Input should be greater than 0"),
        (lambda c: resize.defer(c, {"image_id": 7, "height": 1}), r"height: Extra inputs"),
        (resize.defer, r"image_id: Field required"),
        (lambda c: resize.defer(c, Crop(image_id=7)), r"takes a Resize, not a Crop"),  # type: ignore[arg-type]
        (lambda c: resize.defer(c, {"image_id": 7}, width=1), r"not two"),
        (lambda c: timed.defer(c, timeout=1.0), r"timeout is both a field of Timed and an option"),
        (lambda c: shouting.defer(c, name="x"), r"name: Input should be a valid string"),
        (lambda c: defer(c, "sleep", seconds=-1), r"invalid payload for task 'sleep': seconds"),
    ],
)
def test_a_payload_the_model_refuses_raises_before_any_sql(
    tx: psycopg.Connection[Any], conn: psycopg.Connection[Any], call: Any, message: str
) -> None:
    with pytest.raises(InvalidPayload, match=message):
        call(tx)
    assert sent_nothing(tx)
    assert scalar(conn, COUNT) == 0


def test_an_unknown_task_name_is_an_error_at_the_call_site(tx: psycopg.Connection[Any]) -> None:
    with pytest.raises(UnknownTask, match=r"unknown task 'rezise' \(known tasks: .*sleep"):
        defer(tx, "rezise", image_id=7)
    with pytest.raises(UnknownTask, match="known tasks: aliased, resize, shouting, timed"):
        registry.defer(tx, "rezise", image_id=7)
    assert sent_nothing(tx)


def test_a_payload_given_with_its_options_keeps_a_field_named_like_one(
    conn: psycopg.Connection[Any],
) -> None:
    timed.defer(conn, Timed(timeout=1.5), timeout=3)
    row = conn.execute("SELECT payload, timeout FROM notifyworker.jobs").fetchone()
    assert row == ({"timeout": 1.5}, timedelta(seconds=3))


def test_typed_jobs_in_bulk(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(InvalidPayload, match="image_id"):
        enqueue_many(conn, [resize.job(image_id=1), resize.job(image_id="two")])
    ids = enqueue_many(conn, [resize.job(image_id=n, unique_key=f"image-{n}") for n in range(3)])
    assert len(set(ids)) == 3
    assert scalar(conn, COUNT) == 3


async def test_the_decorated_name_still_runs_the_handler() -> None:
    assert await resize(Resize(image_id=1, width=3)) == {"width": 3}
    assert registry.get("resize") is resize


@pytest.mark.backends("asyncio")  # psycopg's AsyncConnection runs on asyncio only
async def test_the_async_forms_on_an_asyncio_connection(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    async with await psycopg.AsyncConnection.connect(database_url) as aconn:
        await enqueue_async(aconn, "sleep", {"seconds": 1}, unique_key="a")
        await enqueue_many_async(aconn, [Job("sleep"), resize.job(image_id=1)])
        await resize.defer_async(aconn, image_id=2)
        await aconn.rollback()
        assert scalar(conn, COUNT) == 0
        with pytest.raises(InvalidPayload, match="image_id"):
            await resize.defer_async(aconn, image_id="x")
        with pytest.raises(UnknownTask):
            await defer_async(aconn, "rezise")
        assert aconn.info.transaction_status == TransactionStatus.IDLE
        first = await enqueue_async(aconn, "sleep", unique_key="a")
        again = await defer_async(aconn, "sleep", {}, unique_key="a")
        ids = await enqueue_many_async(aconn, [Job("sleep", unique_key="a"), Job("sleep")])
        await aconn.commit()
    assert first == again == ids[0]
    assert scalar(conn, COUNT) == 2
