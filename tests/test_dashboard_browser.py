"""The dashboard as a person uses it: in Chromium, driven by Playwright.

The machine's Chromium (/usr/bin/chromium, from the package manager; .ci/run
installs it), never a downloaded browser. Without it these tests fail, unless
NOTIFYWORKER_SKIP_BROWSER=1 says to skip them. Each test runs the real
dashboard and a worker in a background thread on trio, against its own
database; the screenshots in the README are made here.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from anyio.from_thread import start_blocking_portal
from pydantic import BaseModel

from notifyworker.config import DashboardSettings
from notifyworker.dashboard import serve_dashboard
from notifyworker.tasks import Registry
from tests.helpers import fast_settings, running_worker, scalar

if os.environ.get("NOTIFYWORKER_SKIP_BROWSER") == "1":
    pytest.skip(
        "NOTIFYWORKER_SKIP_BROWSER=1: the browser tests are skipped", allow_module_level=True
    )

from playwright.sync_api import Browser, Dialog, Page, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
TOKEN = "the-browser-test-token-0123456789"  # noqa: S105 - the test server's own
DOCS = Path(__file__).resolve().parent.parent / "docs"
HOSTILE = "<script>alert('script')</script> <img src=x onerror=\"alert('img')\"> \"quotes\" 'too'"


class Seconds(BaseModel):
    seconds: float = 0.0


class Anything(BaseModel):
    model_config = {"extra": "allow"}


def tasks() -> Registry:
    """Handlers a person would watch: one that works a while, one that hangs, one that
    fails on its first attempt only."""
    registry = Registry()
    failed_once: set[str] = set()

    async def work(payload: Seconds) -> dict[str, float]:
        import anyio

        await anyio.sleep(payload.seconds)
        return {"slept": payload.seconds}

    async def hang(payload: Anything) -> None:
        import anyio

        await anyio.sleep_forever()

    async def flaky(payload: Anything) -> str:
        key = json.dumps(payload.model_dump(), sort_keys=True)
        if key not in failed_once:
            failed_once.add(key)
            raise RuntimeError("the first attempt breaks")
        return "fine the second time"

    registry.add("work", work)
    registry.add("hang", hang)
    registry.add("flaky", flaky)
    return registry


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install it (apt-get install chromium, as .ci/run does),"
            " or set NOTIFYWORKER_SKIP_BROWSER=1 to skip the browser tests"
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()


@contextmanager
def served(url: str, **board: Any) -> Iterator[str]:
    """The dashboard (on a free port) and a worker, on trio in a background thread."""
    with start_blocking_portal("trio") as portal, ExitStack() as stack:
        future, port = portal.start_task(serve_dashboard, url, DashboardSettings(port=0, **board))
        stack.callback(future.cancel)
        settings = fast_settings(url, poll_interval=0.5)
        stack.enter_context(portal.wrap_async_context_manager(running_worker(settings, tasks())))
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    opened.set_default_timeout(10_000)
    yield opened
    context.close()


def until(check: Callable[[], bool], within: float = 10.0) -> None:
    """Wait for a database condition (it has no event to await)."""
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        time.sleep(0.05)


def status(conn: psycopg.Connection[Any], job: int) -> str:
    return str(scalar(conn, "SELECT status FROM notifyworker.jobs WHERE id = %s", job))


def insert(conn: psycopg.Connection[Any], task: str, payload: dict[str, Any], **more: Any) -> int:
    queue = more.get("queue", "default")
    return int(
        scalar(
            conn,
            "INSERT INTO notifyworker.jobs (task, payload, queue) VALUES (%s, %s, %s) RETURNING id",
            task,
            json.dumps(payload),
            queue,
        )
    )


def log_in(page: Page, base: str) -> None:
    page.goto(f"{base}/login?next=/")
    page.fill("input[name=token]", TOKEN)
    page.click("#login")
    page.wait_for_selector("text=Log out")


def test_a_job_appears_and_moves_on_without_a_reload(
    browser: Browser, page: Page, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    with served(database_url, token=TOKEN) as base:
        page.goto(base)
        assert page.inner_text("h1") == "Overview"
        page.goto(f"{base}/jobs")
        page.evaluate("window.notReloaded = true")
        job = insert(conn, "work", {"seconds": 2.5})
        # Within 2 s of the INSERT, without a reload; then it runs, then it is done.
        page.wait_for_selector(f'tr[data-job="{job}"]', timeout=2000)
        page.wait_for_selector(f'tr[data-job="{job}"] td.status.running', timeout=5000)
        page.wait_for_selector(f'tr[data-job="{job}"] td.status.done', timeout=10_000)
        assert page.evaluate("window.notReloaded") is True
        # The overview, with a little history, for the README.
        for n in range(6):
            insert(conn, "work", {"seconds": 0.1 * n}, queue="mail" if n % 2 else "default")
        insert(conn, "flaky", {"n": 1})
        insert(conn, "work", {"seconds": 60}, queue="mail")
        conn.execute(
            "INSERT INTO notifyworker.jobs (task, run_at)"
            " VALUES ('work', now() + interval '1 hour')"
        )
        conn.execute(
            "INSERT INTO notifyworker.queues (name, rate, paused) VALUES ('reports', 5, true)"
        )
        finished = "SELECT count(*) FROM notifyworker.jobs WHERE status IN ('done', 'failed')"
        until(lambda: scalar(conn, finished) == 8)
        log_in(page, base)
        page.wait_for_selector('tr[data-queue="mail"]')
        page.screenshot(path=str(DOCS / "dashboard-overview.png"), full_page=True)


def test_cancel_a_running_job_and_retry_a_failed_one_from_the_page(
    page: Page, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    with served(database_url, token=TOKEN) as base:
        log_in(page, base)
        hanging = insert(conn, "hang", {"n": 1})
        page.goto(f"{base}/jobs/{hanging}")
        page.wait_for_selector("#status.running")
        page.click("#cancel")
        until(lambda: status(conn, hanging) == "cancelled")
        page.wait_for_selector("#status.cancelled")

        flaky = insert(conn, "flaky", {"n": 2})
        until(lambda: status(conn, flaky) == "failed")
        page.goto(f"{base}/jobs/{flaky}")
        page.wait_for_selector("#status.failed")
        page.click("#retry")
        until(lambda: status(conn, flaky) == "done")
        assert scalar(conn, "SELECT attempts FROM notifyworker.jobs WHERE id = %s", flaky) == 2
        page.wait_for_selector("#status.done")
        assert "retried" in page.inner_text("#timeline")
        page.screenshot(path=str(DOCS / "dashboard-job.png"), full_page=True)


def test_pausing_a_queue_stops_its_jobs_from_starting(
    page: Page, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    conn.execute("INSERT INTO notifyworker.queues (name) VALUES ('mail')")
    with served(database_url, token=TOKEN) as base:
        log_in(page, base)
        page.click('tr[data-queue="mail"] button:text("Pause")')
        until(lambda: scalar(conn, "SELECT paused FROM notifyworker.queues WHERE name = 'mail'"))
        page.wait_for_selector('tr[data-queue="mail"] td.state:text("paused")')
        held = insert(conn, "work", {}, queue="mail")
        # A job of another queue, inserted after it, runs to the end: the worker
        # claimed since, and left the paused queue's job alone.
        other = insert(conn, "work", {}, queue="default")
        until(lambda: status(conn, other) == "done")
        assert status(conn, held) == "new"
        page.click('tr[data-queue="mail"] button:text("Resume")')
        until(lambda: status(conn, held) == "done")


def test_hostile_payloads_and_errors_are_shown_as_text(
    page: Page, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    job = int(
        scalar(
            conn,
            "INSERT INTO notifyworker.jobs (task, payload, status, error, object_id, finished_at)"
            " VALUES ('work', %s, 'failed', %s, %s, now()) RETURNING id",
            json.dumps({"html": HOSTILE, HOSTILE: "as a key too"}),
            HOSTILE,
            "obj\"'<b>",
        )
    )
    dialogs: list[str] = []
    problems: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    with served(database_url) as base:
        for path in ("/jobs?status=failed", f"/jobs/{job}"):
            page.goto(base + path)
            # One live refresh too: the swapped-in HTML is as inert as the first.
            with page.expect_response(lambda r: r.request.headers.get("x-live") == "1"):
                pass
        # As JSON text: its quotes escaped the JSON way, its tags as they are.
        assert json.dumps(HOSTILE) in page.inner_text("#payload")
        assert page.inner_text("#error") == HOSTILE
        assert page.locator("main script, main img").count() == 0
        page.goto(f"{base}/jobs?status=failed")
        with page.expect_response(lambda r: r.request.headers.get("x-live") == "1"):
            pass
        assert HOSTILE[:60] in page.inner_text(f'tr[data-job="{job}"] td.error')
    assert dialogs == []
    assert problems == []


def test_an_action_without_the_token_or_from_another_site_changes_nothing(
    page: Page, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    with served(database_url, token=TOKEN) as base:
        job = insert(conn, "hang", {"n": 3})
        until(lambda: status(conn, job) == "running")
        page.goto(f"{base}/jobs/{job}")
        assert page.locator("#cancel").count() == 0  # no token: no button
        anonymous = page.request.post(f"{base}/jobs/{job}/cancel", form={"next": "/"})
        assert anonymous.status == 403
        # Logged in here, then lured to another site whose page posts the form.
        log_in(page, base)
        page.goto(f"{base}/jobs/{job}")
        csrf = page.get_attribute("input[name=csrf]", "value")
        lure = (
            f'<form id="f" method="post" action="{base}/jobs/{job}/cancel">'
            f'<input name="csrf" value="{csrf}"></form>'
            "<script>document.getElementById('f').submit()</script>"
        )
        page.route(
            "http://evil.test/", lambda route: route.fulfill(body=lure, content_type="text/html")
        )
        with page.expect_response(f"{base}/jobs/{job}/cancel") as answer:
            page.goto("http://evil.test/")
        assert answer.value.status == 403
        assert status(conn, job) == "running"
