"""The claim's path with no thread: one statement through libpq's non-blocking API.

A thread hop costs more than the claim itself, so the hot path's statement is
sent with `conn.pgconn`, the event loop waits on the socket (`anyio.wait_readable`,
on trio and asyncio alike), and psycopg's own loaders turn the result into
Python values. The helpers below (a named query in
libpq's $n form, flushing, reading the next result) serve the listener's
self-check too, which sends its NOTIFY the same way.
"""

from __future__ import annotations

import re
from typing import Any

import anyio
import anyio.to_thread
import psycopg
import psycopg.abc
import psycopg.errors
from psycopg import pq
from psycopg.adapt import PyFormat, Transformer

from notifyworker.db.pool import Row, connect
from notifyworker.db.translate import SOCKET_FAILURES, lost, translated
from notifyworker.sqlfiles import query

# Longest a statement on the event loop may take before its connection is
# declared lost (it runs shielded, so a stop waits at most this long).
DIRECT_STATEMENT_LIMIT = 5.0

_NAMED_PARAM = re.compile(r"%\((\w+)\)s")


class DirectStatement:
    """One named statement on a dedicated connection, run on the event loop.

    The statement is prepared once per connection; `setup` names statements
    run once after connecting (session settings).
    """

    def __init__(self, url: str, name: str, setup: tuple[str, ...] = ()) -> None:
        self.url = url
        self._setup = setup
        self._sql, self._params = numbered(name)
        self._statement = f"notifyworker_{name}".encode()
        self._conn: psycopg.Connection[Row] | None = None
        self._loader: psycopg.abc.Transformer | None = None

    def _text(self, value: Any) -> bytes | None:
        """A parameter in PostgreSQL's text form: a list as an array, quoted by psycopg."""
        if value is None:
            return None
        if isinstance(value, list | tuple):
            assert self._loader is not None
            items = list(value)
            return bytes(self._loader.get_dumper(items, PyFormat.TEXT).dump(items) or b"")
        return str(value).encode()

    async def run(self, **params: Any) -> list[Row]:
        """Execute with `params`; rows as dicts. ConnectionLost when it fails."""
        if self._conn is None:
            self._conn = await anyio.to_thread.run_sync(self._connect_sync)
            self._loader = Transformer(self._conn)
        values = [self._text(params[p]) for p in self._params]
        # One scope, shielded and bounded: a cancel scope costs tens of microseconds,
        # and this is the pickup path.
        deadline = anyio.current_time() + DIRECT_STATEMENT_LIMIT
        try:
            with anyio.CancelScope(shield=True, deadline=deadline) as limit:
                rows = await self._execute(values)
            if limit.cancelled_caught:
                raise TimeoutError
        except SOCKET_FAILURES as exc:
            self.close()
            raise lost(exc, self.url, "statement timed out") from None
        return rows

    async def _execute(self, values: list[bytes | None]) -> list[Row]:
        assert self._conn is not None
        assert self._loader is not None
        pg = self._conn.pgconn
        pg.send_query_prepared(self._statement, values)
        await flushed(pg)
        rows: list[Row] = []
        while True:
            result = await next_result(self._conn)
            if result is None:
                return rows
            if result.status != pq.ExecStatus.TUPLES_OK:
                continue
            names = [(result.fname(i) or b"").decode() for i in range(result.nfields)]
            self._loader.set_pgresult(result)
            rows.extend(
                dict(zip(names, values, strict=True))
                for values in self._loader.load_rows(0, result.ntuples, tuple)
            )

    def _connect_sync(self) -> psycopg.Connection[Row]:
        conn = connect(self.url, self._statement.decode().removeprefix("notifyworker_"))
        with translated(self.url):
            for name in self._setup:
                conn.execute(query(name))
            result = conn.pgconn.prepare(self._statement, self._sql)
            if result.status != pq.ExecStatus.COMMAND_OK:
                raise psycopg.errors.error_from_result(result, encoding=conn.info.encoding)
        return conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
            self._loader = None


def numbered(name: str) -> tuple[bytes, list[str]]:
    """A named query in libpq's own form: $1, $2… and the parameter names in order."""
    text = query(name)
    params = list(dict.fromkeys(_NAMED_PARAM.findall(text)))
    sql = _NAMED_PARAM.sub(lambda m: f"${params.index(m[1]) + 1}", text)
    return sql.replace("%%", "%").encode(), params


async def flushed(pg: psycopg.pq.abc.PGconn) -> None:
    """Wait until libpq has sent the whole query (non-blocking mode)."""
    while pg.flush():
        await anyio.wait_writable(pg.socket)


async def next_result(conn: psycopg.Connection[Row]) -> psycopg.pq.abc.PGresult | None:
    """The next result of the query in flight, waiting on the socket; None when all are read."""
    pg = conn.pgconn
    while pg.is_busy():
        await anyio.wait_readable(pg.socket)
        pg.consume_input()
    result = pg.get_result()
    if result is not None and result.status == pq.ExecStatus.FATAL_ERROR:
        raise psycopg.errors.error_from_result(result, encoding=conn.info.encoding)
    return result
