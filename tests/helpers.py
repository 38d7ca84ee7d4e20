"""Shared test helpers: fast settings, a worker in a task group, a condition wait."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import BaseModel

from notifyworker.config import Settings
from notifyworker.embedding import worker_running
from notifyworker.tasks import Registry


def fast_settings(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": url,
        "rate": 0,
        "poll_interval": 600.0,  # tests that rely on polling say so
        "sweep_interval": 0.1,
        "heartbeat_interval": 0.2,
        "dead_worker_after": 2.0,
        "shutdown_grace": 5.0,
        "health_port": 0,  # any free port: many workers share the test machine
    }
    values.update(overrides)
    return Settings(**values)


# A worker in the background for the body, stopped gracefully after it: the embedding API.
running_worker = worker_running


async def eventually(check: Callable[[], bool], *, within: float = 10.0) -> None:
    """Wait until `check()` holds (a database condition has no event to await)."""
    with anyio.fail_after(within):
        while not check():
            await anyio.sleep(0.02)


def scalar(conn: psycopg.Connection[Any], query: str, *params: Any) -> Any:
    row = conn.execute(query.encode(), params or None).fetchone()
    assert row is not None
    return row[0]


def grant(conn: psycopg.Connection[Any], group: str, member: str) -> None:
    conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(member)))


def url_as(database_url: str, role: tuple[str, str]) -> str:
    """The test database's URL, logged in as `role` (name, password)."""
    parts = conninfo_to_dict(database_url)
    parts.update(user=role[0], password=role[1])
    return make_conninfo("", **parts)


class Nothing(BaseModel):
    pass


class Calls:
    """A registry of test tasks that remembers what ran and how it ended."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.cancelled: list[int] = []
        self.ran = anyio.Event()
        self.registry = Registry()
        self.registry.add("record", self._record)
        self.registry.add("hang", self._hang)
        self.registry.add("boom", self._boom)
        self.registry.add("nul", self._nul)

    async def _record(self, payload: Numbered) -> dict[str, int]:
        self.started.append(payload.n)
        self.ran.set()
        if payload.seconds:
            await anyio.sleep(payload.seconds)
        return {"n": payload.n}

    async def _hang(self, payload: Numbered) -> None:
        self.started.append(payload.n)
        self.ran.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            self.cancelled.append(payload.n)
            raise

    async def _nul(self, payload: Nothing) -> str:
        return "a NUL \u0000 that jsonb refuses"

    async def _boom(self, payload: Nothing) -> None:
        raise RuntimeError("the handler broke")


class Numbered(BaseModel):
    n: int
    seconds: float = 0.0
