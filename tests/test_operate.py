"""Operating a single job: `retry`, the filters of `jobs`, and `job ID`'s story."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import psycopg
import psycopg.errors
import pytest
from psycopg.types.json import Jsonb

from notifyworker import admin, db
from notifyworker.models import JobId
from notifyworker.tasks import Registry
from tests.helpers import Nothing, eventually, fast_settings, running_worker, scalar
from tests.test_cli import cli, cli_on_terminal, one_line_error

STORY = (
    "SELECT status, attempts, max_attempts, retries, attempts_before_retry, error_before_retry,"
    " error, worker_id, queued_at, started_at, finished_at, cancelled_at, lost_claims"
    " FROM notifyworker.jobs WHERE id = %s"
)


def ended(
    conn: psycopg.Connection[Any],
    status: str,
    *,
    task: str = "sleep",
    attempts: int = 1,
    max_attempts: int = 1,
    error: str | None = "it broke",
    object_id: str | None = None,
) -> int:
    """A job that ended `status` on worker `w` (as the owner may write it)."""
    job: int = scalar(
        conn,
        "INSERT INTO notifyworker.jobs (task, object_id, status, attempts, max_attempts, error,"
        " worker_id, queued_at, started_at, finished_at, cancelled_at, lost_claims)"
        " VALUES (%s, %s, %s, %s, %s, %s, 'w', now(), now(), now(),"
        " CASE WHEN %s::text = 'cancelled' THEN now() END, 2) RETURNING id",
        task,
        object_id,
        status,
        attempts,
        max_attempts,
        error,
        status,
    )
    return job


def status_of(conn: psycopg.Connection[Any], job: int) -> str:
    status: str = scalar(conn, "SELECT status FROM notifyworker.jobs WHERE id = %s", job)
    return status


class Flaky:
    """A task that raises on its first start and returns on the next."""

    def __init__(self) -> None:
        self.starts = 0
        self.registry = Registry()
        self.registry.add("flaky", self._flaky)

    async def _flaky(self, payload: Nothing) -> str:
        self.starts += 1
        if self.starts == 1:
            raise RuntimeError("first start fails")
        return "second start works"


# === retry ===


async def test_a_failed_job_retried_runs_again_at_once_and_keeps_its_story(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    flaky = Flaky()
    # Polling every ten minutes: only the retry's notification brings the job back in time.
    async with running_worker(fast_settings(database_url, poll_interval=600), flaky.registry):
        job = scalar(conn, "INSERT INTO notifyworker.jobs (task) VALUES ('flaky') RETURNING id")
        await eventually(lambda: status_of(conn, job) == "failed")
        failed = conn.execute(
            "SELECT created_at, error FROM notifyworker.jobs WHERE id = %s", (job,)
        ).fetchone()
        assert failed is not None
        assert "first start fails" in failed[1]
        assert db.run_once(database_url, admin.retry, JobId(job)) == ("failed", True)
        await eventually(lambda: status_of(conn, job) == "done", within=5)
    row = conn.execute(STORY, (job,)).fetchone()
    assert row is not None
    assert row[:7] == ("done", 2, 2, 1, 1, failed[1], None)  # attempts 2 of 2, one retry
    assert flaky.starts == 2
    after = conn.execute(
        "SELECT created_at, retried_at > created_at, result FROM notifyworker.jobs WHERE id = %s",
        (job,),
    ).fetchone()
    assert after == (failed[0], True, "second start works")


async def test_a_cancelled_job_retried_is_picked_up_through_notify(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    flaky = Flaky()
    flaky.starts = 1  # it works on its first start here
    async with running_worker(fast_settings(database_url, poll_interval=600), flaky.registry):
        # Cancelled before any worker claimed it.
        job = scalar(
            conn,
            "INSERT INTO notifyworker.jobs (task, status, finished_at, cancelled_at, error)"
            " VALUES ('flaky', 'cancelled', now(), now(), 'cancelled by hand') RETURNING id",
        )
        assert scalar(conn, "SELECT notifyworker.retry(%s)", job) == "new"
        await eventually(lambda: status_of(conn, job) == "done", within=5)
    row = conn.execute(STORY, (job,)).fetchone()
    assert row is not None
    assert row[:7] == ("done", 1, 1, 1, 0, "cancelled by hand", None)


def test_retry_gives_a_fresh_budget_each_time_and_clears_the_last_round(
    conn: psycopg.Connection[Any],
) -> None:
    job = ended(conn, "failed", attempts=3, max_attempts=3)
    assert scalar(conn, "SELECT notifyworker.retry(%s)", job) == "new"
    assert conn.execute(STORY, (job,)).fetchone() == (
        "new", 3, 6, 1, 3, "it broke", "it broke", None, None, None, None, None, 0
    )  # fmt: skip
    conn.execute(
        "UPDATE notifyworker.jobs SET status = 'cancelled', attempts = 4, finished_at = now(),"
        " cancelled_at = now(), error = 'cancelled with notifyworker.cancel() while running'"
        " WHERE id = %s",
        (job,),
    )
    assert scalar(conn, "SELECT notifyworker.retry(%s)", job) == "new"
    row = conn.execute(STORY, (job,)).fetchone()
    assert row is not None
    # Cancelled after 1 of its 3 starts: the next round has 3 again, not 5.
    assert row[:6] == ("new", 4, 7, 2, 4, "cancelled with notifyworker.cancel() while running")
    # A budget of 100 (the most) is given again, whatever the job used before.
    big = ended(conn, "failed", attempts=100, max_attempts=100)
    assert scalar(conn, "SELECT notifyworker.retry(%s)", big) == "new"
    assert conn.execute(STORY, (big,)).fetchone()[:3] == ("new", 100, 200)  # type: ignore[index]


def test_retry_keeps_a_run_at_still_ahead_and_notifies_at_commit(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    later = scalar(
        conn,
        "INSERT INTO notifyworker.jobs (task, run_at) VALUES ('sleep', now() + interval '1 hour')"
        " RETURNING id",
    )
    assert scalar(conn, "SELECT notifyworker.cancel(%s)", later) == "cancelled"
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("LISTEN notifyworker_jobs")
        with conn.transaction():
            scalar(conn, "SELECT notifyworker.retry(%s)", later)
            assert list(listener.notifies(timeout=0.2)) == []  # not before the commit
        got = list(listener.notifies(timeout=1.0))
    assert [(n.channel, n.payload) for n in got] == [("notifyworker_jobs", "retried")]
    assert scalar(
        conn, "SELECT run_at > now() + interval '59 minutes' FROM notifyworker.jobs WHERE id = %s",
        later,
    )  # fmt: skip


@pytest.mark.parametrize("status", ["new", "queued", "running", "done"])
def test_retry_refuses_a_job_that_is_not_failed_or_cancelled(
    database_url: str, conn: psycopg.Connection[Any], status: str
) -> None:
    job = ended(conn, "done") if status == "done" else None
    if job is None:
        job = scalar(
            conn,
            "INSERT INTO notifyworker.jobs (task, status, worker_id, started_at)"
            " VALUES ('sleep', %s, CASE WHEN %s::text <> 'new' THEN 'w' END, now()) RETURNING id",
            status,
            status,
        )
    before = conn.execute(STORY, (job,)).fetchone()
    message = f"job {job} is {status}: only a failed or cancelled job can be retried"
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match=message):
        conn.execute("SELECT notifyworker.retry(%s)", (job,))
    result = cli("retry", str(job), env={"DATABASE_URL": database_url})
    assert result.returncode == 1
    assert one_line_error(result) == f"notifyworker: error: {message}"
    assert result.stdout == ""
    assert conn.execute(STORY, (job,)).fetchone() == before


@pytest.mark.parametrize("command", ["retry", "job"])
def test_a_missing_job_is_one_line(
    database_url: str, conn: psycopg.Connection[Any], command: str
) -> None:
    assert scalar(conn, "SELECT notifyworker.retry(999999)") is None
    result = cli(command, "999999", env={"DATABASE_URL": database_url})
    assert result.returncode == 1
    assert one_line_error(result) == "notifyworker: error: there is no job 999999"


def test_retry_command_prints_the_status_afterwards(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    job = ended(conn, "cancelled")
    result = cli("retry", str(job), env={"DATABASE_URL": database_url})
    assert (result.returncode, result.stdout, result.stderr) == (0, "new\n", "")
    again = cli("retry", str(job), env={"DATABASE_URL": database_url})
    assert one_line_error(again).endswith(
        f"job {job} is new: only a failed or cancelled job can be retried"
    )


def test_two_retries_at_once_send_a_job_back_once(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    job = ended(conn, "failed")
    outcome: list[BaseException | str] = []

    def second() -> None:
        with psycopg.connect(database_url, autocommit=True) as other:
            try:
                outcome.append(scalar(other, "SELECT notifyworker.retry(%s)", job))
            except psycopg.Error as exc:
                outcome.append(exc)

    with conn.transaction():
        assert scalar(conn, "SELECT notifyworker.retry(%s)", job) == "new"
        racer = threading.Thread(target=second)
        racer.start()
        # The second waits on the row lock until the first commits.
        waiting = (
            "SELECT count(*) FROM pg_locks JOIN pg_stat_activity USING (pid)"
            " WHERE NOT granted AND datname = current_database()"
        )
        with psycopg.connect(database_url, autocommit=True) as watcher:
            for _ in range(500):
                if scalar(watcher, waiting):
                    break
                time.sleep(0.01)
            assert scalar(watcher, waiting) == 1
    racer.join(10)
    assert len(outcome) == 1
    assert isinstance(outcome[0], psycopg.errors.ObjectNotInPrerequisiteState)
    assert f"job {job} is new" in str(outcome[0])
    assert scalar(conn, "SELECT retries FROM notifyworker.jobs WHERE id = %s", job) == 1


# === jobs, filtered ===


def fill_for_filters(conn: psycopg.Connection[Any]) -> dict[str, int]:
    jobs = {
        "done_a": ended(conn, "done", task="a", error=None, object_id="img-1"),
        "failed_a": ended(conn, "failed", task="a", object_id="img-1"),
        "failed_b": ended(conn, "failed", task="b", object_id="img-2"),
        "cancelled_b": ended(conn, "cancelled", task="b"),
    }
    jobs["new_a"] = scalar(
        conn, "INSERT INTO notifyworker.jobs (task, object_id) VALUES ('a', 'img-1') RETURNING id"
    )
    jobs["running_b"] = scalar(
        conn,
        "INSERT INTO notifyworker.jobs (task, status, worker_id, started_at)"
        " VALUES ('b', 'running', 'w', now()) RETURNING id",
    )
    return jobs


def found(database_url: str, limit: int = 20, **filters: Any) -> list[int]:
    return [row.id for row in db.run_once(database_url, admin.find_jobs, limit, **filters).rows]


def test_jobs_filters_find_the_right_rows_newest_first(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    j = fill_for_filters(conn)
    everything = sorted(j.values(), reverse=True)
    assert found(database_url) == everything
    assert found(database_url, status="failed") == [j["failed_b"], j["failed_a"]]
    assert found(database_url, status="cancelled") == [j["cancelled_b"]]
    assert found(database_url, status="done") == [j["done_a"]]
    assert found(database_url, status="new") == [j["new_a"]]
    assert found(database_url, status="running") == [j["running_b"]]
    assert found(database_url, status="queued") == []
    assert found(database_url, task="b") == [j["running_b"], j["cancelled_b"], j["failed_b"]]
    assert found(database_url, object_id="img-1") == [j["new_a"], j["failed_a"], j["done_a"]]
    assert found(database_url, task="a", status="failed", object_id="img-1") == [j["failed_a"]]
    assert found(database_url, task="nope") == []
    assert found(database_url, queue="default") == everything
    assert found(database_url, queue="email") == []
    assert found(database_url, limit=2, task="b") == [j["running_b"], j["cancelled_b"]]


def test_jobs_filter_by_queue(
    database_url: str, conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    j = fill_for_filters(conn)
    email = [
        scalar(
            conn,
            "INSERT INTO notifyworker.jobs (task, queue, status, worker_id, started_at)"
            " VALUES ('a', 'email', %s, 'w', CASE WHEN %s = 'running' THEN now() END)"
            " RETURNING id",
            status,
            status,
        )
        for status in ("new", "running", "new")
    ]
    assert found(database_url, queue="email") == email[::-1]
    assert found(database_url, queue="email", status="new") == [email[2], email[0]]
    assert found(database_url, queue="email", status="running") == [email[1]]
    assert found(database_url, queue="default", status="new") == [j["new_a"]]
    assert found(database_url, queue="nowhere") == []
    # A queue alone has no index of its own: the latest jobs only, as a task.
    monkeypatch.setattr(admin, "SEARCH_WINDOW", 2)
    walked = db.run_once(database_url, admin.find_jobs, 20, queue="email")
    assert ([row.id for row in walked.rows], walked.window) == ([email[2], email[1]], 2)
    indexed = db.run_once(database_url, admin.find_jobs, 20, queue="email", status="new")
    assert ([row.id for row in indexed.rows], indexed.window) == ([email[2], email[0]], None)


def test_a_filter_no_index_serves_looks_at_the_latest_jobs_only_and_says_so(
    database_url: str, conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admin, "SEARCH_WINDOW", 5)
    old = ended(conn, "done", task="rare", error=None, object_id="x")
    newer = [ended(conn, "done", error=None) for _ in range(5)]
    walked = db.run_once(database_url, admin.find_jobs, 20, task="rare")
    assert (walked.rows, walked.window) == ([], 5)
    assert found(database_url, status="done") == newer[::-1]
    # An index bounds these: they find the old job whatever its age.
    assert found(database_url, object_id="x", task="rare") == [old]
    assert db.run_once(database_url, admin.find_jobs, 20, status="failed").window is None
    # A table smaller than the window is searched whole.
    monkeypatch.setattr(admin, "SEARCH_WINDOW", 50)
    whole = db.run_once(database_url, admin.find_jobs, 20, task="rare")
    assert ([row.id for row in whole.rows], whole.window) == ([old], None)


def test_jobs_command_filters_and_refuses_an_unknown_status(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    j = fill_for_filters(conn)
    env = {"DATABASE_URL": database_url}
    listed = cli("jobs", "--status", "failed", "--task", "b", "--queue", "default", env=env)
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in listed.stdout.splitlines()] == [f"id={j['failed_b']}"]
    assert listed.stderr == ""
    by_object = cli("jobs", "--object-id", "img-2", "--limit", "5", env=env)
    assert [line.split()[0] for line in by_object.stdout.splitlines()] == [f"id={j['failed_b']}"]
    assert cli("jobs", "--queue", "email", env=env).stdout == ""
    bad = cli("jobs", "--status", "finished", env=env)
    assert bad.returncode == 2
    assert "--status must be one of new, queued, running, done, failed, cancelled" in (
        one_line_error(bad)
    )


# === job ID ===


def test_job_command_tells_the_whole_story(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    job = scalar(
        conn,
        "INSERT INTO notifyworker.jobs (task, payload, object_id, max_attempts, timeout, status,"
        " attempts, worker_id, queued_at, started_at, finished_at, error, queue, priority,"
        " limit_key)"
        " VALUES ('resize', '{\"image_id\": 7}', 'img-7', 2, '3 seconds', 'failed', 2, 'w-1',"
        " now(), now(), now() + interval '1.5 seconds', 'ValueError: too big', 'images', -2,"
        " 't-1') RETURNING id",
    )
    scalar(conn, "SELECT notifyworker.retry(%s)", job)
    conn.execute(
        "UPDATE notifyworker.jobs SET status = 'done', attempts = 3, worker_id = 'w-2',"
        " queued_at = now(), started_at = now(), finished_at = now(), error = NULL,"
        " result = '{\"width\": 640}' WHERE id = %s",
        (job,),
    )
    shown = cli("job", str(job), env={"DATABASE_URL": database_url})
    assert shown.returncode == 0, shown.stderr
    lines = dict(line.split(": ", 1) for line in shown.stdout.splitlines())
    assert lines["job"] == str(job)
    assert lines["task"] == "resize"
    assert lines["object_id"] == "img-7"
    assert (lines["queue"], lines["priority"], lines["limit key"]) == ("images", "-2", "t-1")
    assert lines["status"] == "done"
    assert lines["attempts"] == "3 of 4"
    assert lines["worker"] == "w-2"
    assert lines["timeout"] == "3 s"
    assert lines["lost claims"] == "0"
    assert re.fullmatch(r"\S+ \S+ \(once after 2 attempts\)", lines["retried"])
    assert lines["error before retry"] == "ValueError: too big"
    assert lines["payload"] == '{"image_id": 7}'
    assert lines["result"] == '{"width": 640}'
    assert "error" not in lines
    for label in ("created", "run at", "queued", "started", "finished"):
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}", lines[label]), label
    assert "(pickup " in lines["started"]
    assert "(ran " in lines["finished"]


def test_job_command_shows_hostile_row_text_inert(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    job = scalar(
        conn,
        "INSERT INTO notifyworker.jobs (task, object_id, payload, status, finished_at, error)"
        " VALUES (%s, %s, %s, 'failed', now(), %s) RETURNING id",
        "red\x1b[31m",
        "[link=https://evil.example]x[/link]",
        Jsonb({"k": "\x1b]8;;http://x\x1b\\ \u202e"}),
        "abc\u202edef\nstatus: done [/oops]",
    )
    env = {"DATABASE_URL": database_url}
    plain = cli("job", str(job), env=env)
    assert plain.returncode == 0, plain.stderr
    assert "\x1b" not in plain.stdout
    assert "\u202e" not in plain.stdout
    # One line a field: the error's newline cannot forge a line of its own.
    assert "error: abc\\u202edef\\x0astatus: done [/oops]" in plain.stdout
    assert [line for line in plain.stdout.splitlines() if line.startswith("status:")] == [
        "status: failed"
    ]
    code, shown, err = cli_on_terminal("job", str(job), env=env)
    assert code == 0, err
    text = re.sub(r"\x1b\[[0-9;]*m", "", shown)  # rich's own styling
    assert "\x1b" not in text
    assert "\u202e" not in shown
    for literal in (
        "red\\x1b[31m",
        "[link=https://evil.example]x[/link]",
        "\\u001b]8;;http://x\\u001b\\\\ \\u202e",
        "abc\\u202edef",
        "status: done [/oops]",
    ):
        assert literal in text, literal


def test_retry_refuses_while_a_newer_job_holds_the_unique_key(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    """The key went to a new job when the old one failed: retry says which, changes nothing."""
    old = ended(conn, "failed")
    conn.execute("UPDATE notifyworker.jobs SET unique_key = 'report-7' WHERE id = %s", (old,))
    holder = scalar(conn, "SELECT notifyworker.enqueue('sleep', unique_key => 'report-7')")
    assert holder != old
    before = conn.execute(STORY, (old,)).fetchone()
    message = f"job {holder} holds unique key report-7: job {old} can be retried once it ends"
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match=message):
        conn.execute("SELECT notifyworker.retry(%s)", (old,))
    result = cli("retry", str(old), env={"DATABASE_URL": database_url})
    assert result.returncode == 1
    assert one_line_error(result) == f"notifyworker: error: {message}"
    assert conn.execute(STORY, (old,)).fetchone() == before
    conn.execute("SELECT notifyworker.cancel(%s)", (holder,))
    assert scalar(conn, "SELECT notifyworker.retry(%s)", old) == "new"
