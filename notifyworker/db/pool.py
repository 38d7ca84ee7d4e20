"""Connections in worker threads: one thread hop per unit of work, never per statement.

psycopg's async API runs only on asyncio, so on either loop every unit of work is
a plain function over a sync connection (a `Session`), run in a worker thread
on a pooled connection (`Database`) or, for the CLI, on a fresh one
(`run_once`). Every connection the service opens goes through `connect` or
the pool's `configure`, so each has the session settings it depends on.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from typing import Any, Concatenate, LiteralString, ParamSpec, TypeVar

import anyio
import anyio.to_thread
import psycopg
import psycopg_pool
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from notifyworker import errors
from notifyworker.db.translate import translated
from notifyworker.sqlfiles import query

P = ParamSpec("P")
T = TypeVar("T")

Row = dict[str, Any]

# How long a unit of work may wait for a pooled connection before it is
# reported as a lost database rather than queued forever.
POOL_TIMEOUT = 5.0
# libpq's own connect timeout, so a wrong host fails in seconds, not minutes.
CONNECT_TIMEOUT = 5


def json_param(value: Any) -> Jsonb:
    """Wrap a value for a jsonb parameter."""
    return Jsonb(value)


class Session:
    """One connection for the length of a unit of work, with named statements."""

    def __init__(self, conn: psycopg.Connection[Row]) -> None:
        self._conn = conn

    @property
    def connection(self) -> psycopg.Connection[Row]:
        """The connection itself, for the producer API (the CLI's enqueue goes through it)."""
        return self._conn

    def rows(self, name: str, /, **params: Any) -> list[Row]:
        cur = self._conn.execute(query(name), params or None)
        return cur.fetchall() if cur.description else []

    def one(self, name: str, /, **params: Any) -> Row | None:
        cur = self._conn.execute(query(name), params or None)
        return cur.fetchone() if cur.description else None

    def execute(self, name: str, /, **params: Any) -> int:
        return self._conn.execute(query(name), params or None).rowcount

    def script(self, sql: LiteralString) -> None:
        """Run a whole migration file (several statements, no parameters)."""
        self._conn.execute(sql)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with self._conn.transaction():
            yield


def connect(url: str, role: str = "cli") -> psycopg.Connection[Row]:
    """A plain autocommit connection (blocking), errors translated.

    `role` names the connection in pg_stat_activity (notifyworker-listener, …),
    so an operator can tell the service's connections apart. The service's
    own connections (any role but "cli") set what they depend on first.
    """
    with translated(url):
        conn = psycopg.Connection.connect(
            url,
            autocommit=True,
            row_factory=dict_row,
            connect_timeout=CONNECT_TIMEOUT,
            application_name=f"notifyworker-{role}",
        )
        if role != "cli":
            try:
                _configure(conn)
            except BaseException:
                conn.close()
                raise
        return conn


def _configure(conn: psycopg.Connection[Row], setup: tuple[str, ...] = ()) -> None:
    """The service's session settings (see `session_settings`), whatever the defaults,
    then the named statements a pool's user adds (the dashboard's, say)."""
    conn.execute(query("session_settings"))
    for name in setup:
        conn.execute(query(name))


def run_once(
    url: str, fn: Callable[Concatenate[Session, P], T], *args: P.args, **kwargs: P.kwargs
) -> T:
    """Run one unit of work on a fresh connection (blocking): CLI commands use this."""
    conn = connect(url)
    try:
        with translated(url):
            return fn(Session(conn), *args, **kwargs)
    finally:
        conn.close()


class Database:
    """A connection pool whose units of work run in worker threads.

    The pool reconnects by itself after the server goes away; a unit that hits
    a dropped connection raises ConnectionLost and the caller decides to retry.
    """

    def __init__(self, url: str, *, size: int, setup: tuple[str, ...] = ()) -> None:
        self.url = url
        self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[Row]] = (
            psycopg_pool.ConnectionPool(
                url,
                # All connections up front: a pool growing on demand made the
                # first busy second pay for connection set-up in pickup latency.
                min_size=size,
                max_size=size,
                open=False,
                timeout=POOL_TIMEOUT,
                configure=functools.partial(_configure, setup=setup),
                kwargs={
                    "autocommit": True,
                    "row_factory": dict_row,
                    "connect_timeout": CONNECT_TIMEOUT,
                    "application_name": "notifyworker-pool",
                },
                name="notifyworker",
            )
        )
        # One thread per pooled connection: more would only wait on the pool.
        self._threads = anyio.CapacityLimiter(size)
        # When a unit of work last succeeded (the event loop's clock): readiness reads it
        # instead of sending a query of its own that could hang the probe.
        self.last_success = -math.inf

    async def open(self) -> None:
        """Connect once up front, so a wrong URL fails now with libpq's own reason."""
        conn = await anyio.to_thread.run_sync(connect, self.url, "pool")
        conn.close()
        await anyio.to_thread.run_sync(self._pool.open)
        self.last_success = anyio.current_time()

    async def close(self) -> None:
        await anyio.to_thread.run_sync(self._pool.close)

    async def run(
        self, fn: Callable[Concatenate[Session, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run fn(session, …) in a worker thread: one hop for the whole unit.

        Not cancellable once started: a statement sent to PostgreSQL always
        gets its answer read, so the caller never guesses what happened.
        """
        result = await anyio.to_thread.run_sync(
            self._run_sync, fn, args, kwargs, limiter=self._threads
        )
        self.last_success = anyio.current_time()
        return result

    def _run_sync(self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
        with translated(self.url):
            try:
                with self._pool.connection() as conn:
                    return fn(Session(conn), *args, **kwargs)
            # A PoolTimeout is an OperationalError too: caught first, with its own words.
            except psycopg_pool.PoolTimeout:
                raise errors.ConnectionLost(
                    f"no database connection could be had within {POOL_TIMEOUT:g}s"
                ) from None
