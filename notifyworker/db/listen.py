"""The listener's connection: LISTEN with no thread, and a check that it still hears.

A dedicated autocommit connection LISTENs; the event loop waits for its socket to be
readable and the listener drains `notifies(timeout=0)`. A half-open
connection would wait forever without a word, so the listener NOTIFYs itself
now and then (the self-check) and treats a missing echo as a lost connection.
"""

from __future__ import annotations

import anyio
import anyio.to_thread
import psycopg

from notifyworker import errors
from notifyworker.db.direct import flushed, next_result, numbered
from notifyworker.db.pool import Row, connect
from notifyworker.db.translate import SOCKET_FAILURES, lost, translated
from notifyworker.sqlfiles import query

# The channel the listener's self-check NOTIFYs itself on (listen_ping).
PING_CHANNEL = "notifyworker_ping"


class ListenConnection:
    """A dedicated autocommit connection that LISTENs, waited on with no thread."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.Connection[Row] | None = None
        # Successful connects so far: every one after the first is a reconnect.
        self.connects = 0

    @property
    def listening(self) -> bool:
        """Connected, with every LISTEN issued (as far as this side knows)."""
        return self._conn is not None and not self._conn.closed

    async def connect(self, channels: tuple[str, ...]) -> None:
        """Connect and LISTEN on each named query (`listen_jobs`, …)."""
        self._conn = await anyio.to_thread.run_sync(self._connect_sync, channels)
        self.connects += 1

    def _connect_sync(self, channels: tuple[str, ...]) -> psycopg.Connection[Row]:
        conn = connect(self.url, "listener")
        with translated(self.url):
            for name in channels:
                conn.execute(query(name))
        return conn

    def drain(self) -> list[tuple[str, str]]:
        """Notifications already received (channel, payload); never blocks."""
        conn = self._require()
        with translated(self.url):
            got = [(n.channel, n.payload) for n in conn.notifies(timeout=0)]
            # psycopg reads libpq's queue only after the socket turns readable;
            # notifications that came in with the self-check's answer are
            # already in that queue, so read it directly too.
            encoding = conn.info.encoding
            while pgn := conn.pgconn.notifies():
                got.append((pgn.relname.decode(encoding), pgn.extra.decode(encoding)))
            return got

    async def wait(self) -> list[tuple[str, str]]:
        """The next notifications; the caller bounds the wait with a cancel scope."""
        got = self.drain()
        while not got:
            await anyio.wait_readable(self._require().fileno())
            got = self.drain()
        return got

    async def self_check(self, token: str, limit: float) -> list[tuple[str, str]]:
        """NOTIFY ourselves on the ping channel and await the echo within `limit` seconds.

        Sent through libpq's non-blocking API so the loop can bound the wait: a
        half-open connection accepts the query and never answers, and only a
        deadline tells. Returns the other notifications that arrived meanwhile.
        """
        conn = self._require()
        try:
            with anyio.fail_after(limit):
                await self._ping(conn, token)
                return await self._echo(conn, token)
        except SOCKET_FAILURES as exc:
            self.close()
            raise lost(
                exc,
                self.url,
                f"the listener's NOTIFY self-check got no answer within {limit:g}s "
                "(half-open connection?)",
            ) from None

    @staticmethod
    async def _ping(conn: psycopg.Connection[Row], token: str) -> None:
        pg = conn.pgconn
        sql, _ = numbered("listener_ping")
        pg.send_query_params(sql, [token.encode()])
        await flushed(pg)
        while await next_result(conn) is not None:
            pass

    async def _echo(self, conn: psycopg.Connection[Row], token: str) -> list[tuple[str, str]]:
        others: list[tuple[str, str]] = []
        while True:
            echoed = False
            for channel, payload in self.drain():
                if channel == PING_CHANNEL and payload == token:
                    echoed = True
                else:
                    others.append((channel, payload))
            if echoed:
                return others
            await anyio.wait_readable(conn.fileno())

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _require(self) -> psycopg.Connection[Row]:
        if self._conn is None or self._conn.closed:
            raise errors.ConnectionLost("the listener connection is closed")
        return self._conn
