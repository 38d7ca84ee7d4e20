"""The dashboard over HTTP: its pages, bad input, the token, CSRF and a database that goes away.

The real server (hypercorn, on trio and on asyncio) against a real database;
the browser's view of the same is tests/test_dashboard_browser.py.
"""

from __future__ import annotations

import logging
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from notifyworker.config import DashboardSettings, load_dashboard
from notifyworker.dashboard import serve_dashboard
from notifyworker.dashboard.security import COOKIE
from notifyworker.errors import ConfigError
from tests.helpers import scalar

TOKEN = "a-token-of-the-test-0123456789"  # noqa: S105 - the test server's own


@asynccontextmanager
async def dashboard(url: str, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The dashboard on a free port, and a client of it (no redirects followed)."""
    board = DashboardSettings(port=0, **settings)
    async with anyio.create_task_group() as tasks:
        port = await tasks.start(serve_dashboard, url, board)
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            yield client
        tasks.cancel_scope.cancel()


async def logged_in(client: httpx.AsyncClient) -> str:
    """Log the client in with the token; the CSRF token its pages then carry."""
    origin = str(client.base_url).rstrip("/")
    answer = await client.post(
        "/login", data={"token": TOKEN, "next": "/"}, headers={"origin": origin}
    )
    assert answer.status_code == 303
    page = await client.get("/")
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
    assert found is not None
    return found[1]


def insert(conn: psycopg.Connection[Any], task: str = "sleep", **columns: Any) -> int:
    names = ["task", *columns]
    statement = sql.SQL("INSERT INTO notifyworker.jobs ({}) VALUES ({}) RETURNING id").format(
        sql.SQL(", ").join(map(sql.Identifier, names)),
        sql.SQL(", ").join(sql.Placeholder() * len(names)),
    )
    row = conn.execute(statement, [task, *columns.values()]).fetchone()
    assert row is not None
    return int(row[0])


async def test_the_pages_answer_and_show_the_jobs(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    job = insert(conn, "resize", object_id="image-7", queue="images")
    async with dashboard(database_url) as client:
        overview = await client.get("/")
        assert overview.status_code == 200
        assert 'data-queue="images"' in overview.text
        assert "read-only: no token configured" in overview.text
        listed = await client.get("/jobs", params={"queue": "images"})
        assert f'data-job="{job}"' in listed.text
        assert f'data-job="{job}"' in (await client.get("/jobs?object_id=image-7")).text
        assert f'data-job="{job}"' not in (await client.get("/jobs?status=done")).text
        one = await client.get(f"/jobs/{job}")
        assert one.status_code == 200
        assert "<strong>created</strong>" in one.text
        found = await client.get("/jobs", params={"id": str(job)})
        assert found.status_code == 303
        assert found.headers["location"] == f"/jobs/{job}"
        for page in ("/workers", "/schedules"):
            assert (await client.get(page)).status_code == 200
        live = await client.get("/", headers={"x-live": "1"})
        assert "<html" not in live.text
        assert 'data-queue="images"' in live.text
        assert "script-src 'self'" in live.headers["content-security-policy"]


async def test_pages_walk_back_by_keyset_without_counting(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    conn.execute("INSERT INTO notifyworker.jobs (task) SELECT 'sleep' FROM generate_series(1, 120)")
    async with dashboard(database_url) as client:
        seen: list[int] = []
        path: str | None = "/jobs?task=sleep"
        while path is not None:
            page = (await client.get(path)).text
            seen += [int(n) for n in re.findall(r'data-job="(\d+)"', page)]
            older = re.search(r'id="older" href="([^"]+)"', page)
            path = older[1].replace("&amp;", "&") if older else None
        assert seen == sorted(seen, reverse=True)
        assert len(seen) == len(set(seen)) == 120


async def test_bad_input_is_a_page_that_says_what_is_allowed(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with dashboard(database_url) as client:
        missing = await client.get("/jobs/987654")
        assert missing.status_code == 404
        assert "there is no job 987654" in missing.text
        bad = await client.get("/jobs?status=finished")
        assert bad.status_code == 400
        assert "new, queued, running, done, failed, cancelled" in bad.text
        assert (await client.get("/jobs/seven")).status_code == 400
        assert (await client.get("/jobs?before=-1")).status_code == 400
        assert (await client.get("/nowhere")).status_code == 404


async def test_actions_are_off_without_a_token(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    job = insert(conn)
    async with dashboard(database_url) as client:
        origin = str(client.base_url).rstrip("/")
        refused = await client.post(f"/jobs/{job}/cancel", headers={"origin": origin})
        assert refused.status_code == 403
        assert "actions are off" in refused.text
        assert "Cancel</button>" not in (await client.get(f"/jobs/{job}")).text
    assert scalar(conn, "SELECT status FROM notifyworker.jobs WHERE id = %s", job) == "new"


async def test_an_action_needs_the_token_the_csrf_token_and_the_same_origin(
    database_url: str, conn: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    job = insert(conn)
    async with dashboard(database_url, token=TOKEN) as client:
        origin = str(client.base_url).rstrip("/")
        # Not logged in: refused.
        anonymous = await client.post(f"/jobs/{job}/cancel", headers={"origin": origin})
        assert anonymous.status_code == 403
        # A wrong token: 403, and the log names the client, never the token.
        with caplog.at_level(logging.WARNING):
            wrong = await client.post(
                "/login", data={"token": "not-the-token-at-all"}, headers={"origin": origin}
            )
        assert wrong.status_code == 403
        assert "wrong token" in caplog.text
        assert "not-the-token-at-all" not in caplog.text
        csrf = await logged_in(client)
        assert client.cookies.get(COOKIE)
        # Logged in, but from another site, or without the form's CSRF token: refused.
        evil = await client.post(
            f"/jobs/{job}/cancel", data={"csrf": csrf}, headers={"origin": "http://evil.example"}
        )
        assert evil.status_code == 403
        no_origin = await client.post(f"/jobs/{job}/cancel", data={"csrf": csrf})
        assert no_origin.status_code == 403
        no_csrf = await client.post(f"/jobs/{job}/cancel", headers={"origin": origin})
        assert no_csrf.status_code == 403
        assert scalar(conn, "SELECT status FROM notifyworker.jobs WHERE id = %s", job) == "new"
        # Everything right: cancelled.
        done = await client.post(
            f"/jobs/{job}/cancel",
            data={"csrf": csrf, "next": f"/jobs/{job}"},
            headers={"origin": origin},
        )
        assert done.status_code == 303
        assert done.headers["location"] == f"/jobs/{job}"
        assert (
            scalar(conn, "SELECT status FROM notifyworker.jobs WHERE id = %s", job) == "cancelled"
        )
        # A script with the bearer token needs no cookie; a wrong bearer is a 403.
        async with httpx.AsyncClient(base_url=origin) as script:
            bearer = {"authorization": f"Bearer {TOKEN}"}
            assert (await script.post(f"/jobs/{job}/retry", headers=bearer)).status_code == 303
            wrong_bearer = {"authorization": "Bearer nope"}
            assert (
                await script.post(f"/jobs/{job}/cancel", headers=wrong_bearer)
            ).status_code == 403
        assert scalar(conn, "SELECT status FROM notifyworker.jobs WHERE id = %s", job) == "new"


async def test_queue_actions(database_url: str, conn: psycopg.Connection[Any]) -> None:
    async with dashboard(database_url, token=TOKEN) as client:
        origin = {"origin": str(client.base_url).rstrip("/")}
        csrf = await logged_in(client)
        paused = await client.post("/queues/mail/pause", data={"csrf": csrf}, headers=origin)
        assert paused.status_code == 303
        assert scalar(conn, "SELECT paused FROM notifyworker.queues WHERE name = 'mail'") is True
        await client.post("/queues/mail/rate", data={"csrf": csrf, "rate": "2.5"}, headers=origin)
        assert scalar(conn, "SELECT rate FROM notifyworker.queues WHERE name = 'mail'") == 2.5
        refused = await client.post(
            "/queues/mail/rate", data={"csrf": csrf, "rate": "-3"}, headers=origin
        )
        assert refused.status_code == 400
        await client.post("/queues/mail/resume", data={"csrf": csrf}, headers=origin)
        await client.post("/queues/mail/rate", data={"csrf": csrf, "rate": ""}, headers=origin)
        row = conn.execute("SELECT paused, rate FROM notifyworker.queues WHERE name = 'mail'")
        assert row.fetchone() == (False, None)


async def test_reading_may_need_the_token_too(database_url: str) -> None:
    async with dashboard(database_url, token=TOKEN, token_for_reads=True) as client:
        asked = await client.get("/jobs")
        assert asked.status_code == 303
        assert asked.headers["location"].startswith("/login?next=")
        assert (await client.get("/", headers={"x-live": "1"})).status_code == 403
        await logged_in(client)
        assert (await client.get("/jobs")).status_code == 200


def test_settings_refuse_a_short_token_without_quoting_it() -> None:
    with pytest.raises(ConfigError, match="at least 16 characters") as caught:
        load_dashboard(token="short-secret")  # noqa: S106 - refused, as it should be
    assert "short-secret" not in str(caught.value)
    with pytest.raises(ConfigError, match="token_for_reads needs"):
        load_dashboard(token_for_reads=True)
    with pytest.raises(ConfigError, match="port"):
        load_dashboard(port=70000)


@pytest.mark.backends("trio")
async def test_a_database_that_goes_away_is_a_page_that_says_so_and_recovers(
    database_url: str, conn: psycopg.Connection[Any], server_url: str
) -> None:
    name = str(conninfo_to_dict(database_url)["dbname"])
    job = insert(conn)
    async with dashboard(database_url, token=TOKEN) as client:
        assert (await client.get("/")).status_code == 200
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(
                    sql.Identifier(name)
                )
            )
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND application_name = 'notifyworker-pool'",
                [name],
            )
            gone = await client.get("/")
            assert gone.status_code == 503
            assert "The database is not answering" in gone.text
            # An action then is a page that says so too, not a server error.
            bearer = {"authorization": f"Bearer {TOKEN}"}
            acted = await client.post(f"/jobs/{job}/cancel", headers=bearer)
            assert acted.status_code == 503
            assert "the database is not answering" in acted.text
            admin.execute(
                sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(
                    sql.Identifier(name)
                )
            )
        # The server kept running; the pool reconnects by itself.
        with anyio.fail_after(60):
            while (await client.get("/")).status_code != 200:
                await anyio.sleep(0.2)


def test_the_command_refuses_a_bad_or_busy_port_in_one_line(database_url: str) -> None:
    command = [sys.executable, "-m", "notifyworker", "dashboard", "--database-url", database_url]
    bad = subprocess.run([*command, "--port", "70000"], capture_output=True, text=True, check=False)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "notifyworker: error: invalid settings: port: Input should be less than or equal to 65535"
    ]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        busy = subprocess.run(
            [*command, "--port", port], capture_output=True, text=True, check=False
        )
    assert busy.returncode == 2
    last = busy.stderr.strip().splitlines()[-1]
    assert last.startswith(f"notifyworker: error: the dashboard cannot listen on 127.0.0.1:{port}")
