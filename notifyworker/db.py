"""The one seam to the database driver: psycopg 3, driven from trio.

psycopg's async API runs only on asyncio, so under trio every unit of work is
a plain function over a sync connection, run in a worker thread: one thread
hop per unit, never per statement. LISTEN needs no thread at all: the
listener waits for its socket to be readable and drains `notifies(timeout=0)`.

Driver exceptions become notifyworker's own here and nowhere else.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from collections.abc import Callable, Iterator
from typing import Any, Concatenate, LiteralString, ParamSpec, TypeVar

import psycopg
import psycopg.abc
import psycopg.errors
import psycopg_pool
import trio
from psycopg import pq
from psycopg.adapt import Transformer
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from notifyworker import dburl, errors
from notifyworker.sqlfiles import query

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

Row = dict[str, Any]

# How long a unit of work may wait for a pooled connection before it is
# reported as a lost database rather than queued forever.
POOL_TIMEOUT = 5.0
# libpq's own connect timeout, so a wrong host fails in seconds, not minutes.
CONNECT_TIMEOUT = 5
# Longest a statement on the event loop may take before its connection is
# declared lost (it runs shielded, so a stop waits at most this long).
DIRECT_STATEMENT_LIMIT = 5.0

_NAMED_PARAM = re.compile(r"%\((\w+)\)s")
# The channel the listener's self-check NOTIFYs itself on (listen_ping).
PING_CHANNEL = "notifyworker_ping"


def _numbered(name: str) -> tuple[bytes, list[str]]:
    """A named query in libpq's own form: $1, $2… and the parameter names in order."""
    text = query(name)
    params = list(dict.fromkeys(_NAMED_PARAM.findall(text)))
    numbered = _NAMED_PARAM.sub(lambda m: f"${params.index(m[1]) + 1}", text)
    return numbered.replace("%%", "%").encode(), params


def json_param(value: Any) -> Jsonb:
    """Wrap a value for a jsonb parameter."""
    return Jsonb(value)


def redact(url: str) -> str:
    """The URL as it may appear in a log line: neither the password nor a piece of it does."""
    try:
        parts = conninfo_to_dict(url)
    except (psycopg.ProgrammingError, UnicodeError):
        return "<unparseable DATABASE_URL>"
    parts.pop("password", None)
    # A URL libpq misread (an unencoded '@' or '/' in the password) has pieces
    # of the password in its other parts: a host, a port, a database name.
    return _scrub(" ".join(f"{key}={value}" for key, value in parts.items()), _password(url))


def _one_line(exc: BaseException, url: str | None = None) -> str:
    secrets = _password(url) if url else set()
    # Scrubbed before and after whitespace is folded: a password may hold spaces.
    text = _scrub(str(exc), secrets)
    return _scrub(" ".join(text.split()), secrets)


def _password(url: str) -> set[str]:
    """Every form of the URL's password: libpq's reading, and as written, encoded and decoded."""
    forms = dburl.password_forms(url)
    try:
        value = conninfo_to_dict(url).get("password")
    except (psycopg.ProgrammingError, UnicodeError):
        value = None
    if value:
        forms.add(str(value))
    return forms


# The shortest run of a password's characters that is never left in a message.
_FRAGMENT = 4


def _scrub(text: str, secrets: set[str]) -> str:
    """`text` with each secret, and every run of `_FRAGMENT` characters of one, as `***`."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    grams = {s[i : i + _FRAGMENT] for s in secrets for i in range(len(s) - _FRAGMENT + 1)}
    while grams:
        hidden = [False] * len(text)
        for i in range(len(text) - _FRAGMENT + 1):
            if text[i : i + _FRAGMENT] in grams:
                hidden[i : i + _FRAGMENT] = [True] * _FRAGMENT
        if not any(hidden):
            break
        # Each pass shortens the text (a run of 4 or more becomes 3), so this ends.
        kept: list[str] = []
        for i, char in enumerate(text):
            if not hidden[i]:
                kept.append(char)
            elif i == 0 or not hidden[i - 1]:
                kept.append("***")
        text = "".join(kept)
    return text


def translate(exc: psycopg.Error, url: str | None = None) -> errors.DatabaseError:
    """The project's exception for a driver exception, with a one-line message."""
    message = _one_line(exc, url)
    if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.InvalidSchemaName) and (
        "notifyworker" in message
    ):
        return errors.SchemaMissing()
    if isinstance(exc, _BUSY):
        return errors.DatabaseBusy(message)
    if isinstance(exc, psycopg.OperationalError) and _refused_for_good(message):
        return errors.AccessDenied(message)
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return errors.ConnectionLost(message)
    if isinstance(exc, psycopg.errors.IntegrityError):
        return errors.RowRejected(message)
    return errors.DatabaseError(message)


# Statements PostgreSQL cancelled on a live connection: nothing was written,
# and the same statement may well succeed next time.
_BUSY = (
    psycopg.errors.QueryCanceled,
    psycopg.errors.LockNotAvailable,
    psycopg.errors.DeadlockDetected,
    psycopg.errors.SerializationFailure,
)


# What libpq says when the server answered but will not have us: retrying
# cannot help, so the caller stops with the message instead of backing off.
_FOR_GOOD = (
    "password authentication failed",
    "no password supplied",
    "authentication failed",
    "no pg_hba.conf entry",
    "does not exist",  # the database or the role
    "permission denied",
    "invalid connection option",
    "invalid dsn",
    "invalid integer value",
    "invalid sslmode",
)


def _refused_for_good(message: str) -> bool:
    lowered = message.lower()
    return any(phrase in lowered for phrase in _FOR_GOOD)


@contextlib.contextmanager
def _translated(url: str | None) -> Iterator[None]:
    try:
        yield
    except psycopg_pool.PoolTimeout:
        raise errors.ConnectionLost(
            f"no database connection could be had within {POOL_TIMEOUT:g}s"
        ) from None
    except psycopg.Error as exc:
        raise translate(exc, url) from None


class Session:
    """One connection for the length of a unit of work, with named statements."""

    def __init__(self, conn: psycopg.Connection[Row]) -> None:
        self._conn = conn

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
    with _translated(url):
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


def _configure(conn: psycopg.Connection[Row]) -> None:
    """The service's session settings (see `session_settings`), whatever the defaults."""
    conn.execute(query("session_settings"))


def run_once(
    url: str, fn: Callable[Concatenate[Session, P], T], *args: P.args, **kwargs: P.kwargs
) -> T:
    """Run one unit of work on a fresh connection (blocking): CLI commands use this."""
    conn = connect(url)
    try:
        with _translated(url):
            return fn(Session(conn), *args, **kwargs)
    finally:
        conn.close()


class Database:
    """A connection pool whose units of work run in worker threads.

    The pool reconnects by itself after the server goes away; a unit that hits
    a dropped connection raises ConnectionLost and the caller decides to retry.
    """

    def __init__(self, url: str, *, size: int) -> None:
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
                configure=_configure,
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
        self._threads = trio.CapacityLimiter(size)
        # When a unit of work last succeeded (trio's clock): readiness reads it
        # instead of sending a query of its own that could hang the probe.
        self.last_success = -math.inf

    async def open(self) -> None:
        """Connect once up front, so a wrong URL fails now with libpq's own reason."""
        conn = await trio.to_thread.run_sync(connect, self.url, "pool")
        conn.close()
        await trio.to_thread.run_sync(self._pool.open)
        self.last_success = trio.current_time()

    async def close(self) -> None:
        await trio.to_thread.run_sync(self._pool.close)

    async def run(
        self, fn: Callable[Concatenate[Session, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run fn(session, …) in a worker thread: one hop for the whole unit.

        Not cancellable once started: a statement sent to PostgreSQL always
        gets its answer read, so the caller never guesses what happened.
        """
        result = await trio.to_thread.run_sync(
            self._run_sync, fn, args, kwargs, limiter=self._threads
        )
        self.last_success = trio.current_time()
        return result

    def _run_sync(self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
        with _translated(self.url), self._pool.connection() as conn:
            return fn(Session(conn), *args, **kwargs)


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
        self._conn = await trio.to_thread.run_sync(self._connect_sync, channels)
        self.connects += 1

    def _connect_sync(self, channels: tuple[str, ...]) -> psycopg.Connection[Row]:
        conn = connect(self.url, "listener")
        with _translated(self.url):
            for name in channels:
                conn.execute(query(name))
        return conn

    def drain(self) -> list[tuple[str, str]]:
        """Notifications already received (channel, payload); never blocks."""
        conn = self._require()
        with _translated(self.url):
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
            await trio.lowlevel.wait_readable(self._require().fileno())
            got = self.drain()
        return got

    async def self_check(self, token: str, limit: float) -> list[tuple[str, str]]:
        """NOTIFY ourselves on the ping channel and await the echo within `limit` seconds.

        Sent through libpq's non-blocking API so trio can bound the wait: a
        half-open connection accepts the query and never answers, and only a
        deadline tells. Returns the other notifications that arrived meanwhile.
        """
        conn = self._require()
        try:
            with trio.fail_after(limit):
                await self._ping(conn, token)
                return await self._echo(conn, token)
        except trio.TooSlowError:
            self.close()
            raise errors.ConnectionLost(
                f"the listener's NOTIFY self-check got no answer within {limit:g}s "
                "(half-open connection?)"
            ) from None
        except (psycopg.Error, OSError) as exc:
            self.close()
            if isinstance(exc, psycopg.Error):
                raise translate(exc, self.url) from None
            raise errors.ConnectionLost(_one_line(exc, self.url)) from None

    @staticmethod
    async def _ping(conn: psycopg.Connection[Row], token: str) -> None:
        pg = conn.pgconn
        sql, _ = _numbered("listener_ping")
        pg.send_query_params(sql, [token.encode()])
        await _flushed(pg)
        while await _next_result(conn) is not None:
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
            await trio.lowlevel.wait_readable(conn.fileno())

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _require(self) -> psycopg.Connection[Row]:
        if self._conn is None or self._conn.closed:
            raise errors.ConnectionLost("the listener connection is closed")
        return self._conn


class DirectStatement:
    """One named statement on a dedicated connection, run on the event loop.

    The hot path's statement (the claim) skips the thread hop: it is sent
    through libpq's non-blocking API (`conn.pgconn`), trio waits on the socket,
    and psycopg's own loaders turn the result into Python values. The
    statement is prepared once per connection; `setup` names statements run
    once after connecting (session settings).
    """

    def __init__(self, url: str, name: str, setup: tuple[str, ...] = ()) -> None:
        self.url = url
        self._setup = setup
        self._sql, self._params = _numbered(name)
        self._statement = f"notifyworker_{name}".encode()
        self._conn: psycopg.Connection[Row] | None = None
        self._loader: psycopg.abc.Transformer | None = None

    async def run(self, **params: Any) -> list[Row]:
        """Execute with `params`; rows as dicts. ConnectionLost when it fails."""
        if self._conn is None:
            self._conn = await trio.to_thread.run_sync(self._connect_sync)
            self._loader = Transformer(self._conn)
        values = [None if params[p] is None else str(params[p]).encode() for p in self._params]
        # One scope, shielded and bounded: a cancel scope costs tens of microseconds,
        # and this is the pickup path.
        deadline = trio.current_time() + DIRECT_STATEMENT_LIMIT
        try:
            with trio.CancelScope(shield=True, deadline=deadline) as limit:
                rows = await self._execute(values)
            if limit.cancelled_caught:
                raise trio.TooSlowError
        except (psycopg.Error, trio.TooSlowError, OSError) as exc:
            self.close()
            if isinstance(exc, psycopg.Error):
                raise translate(exc, self.url) from None
            raise errors.ConnectionLost(_one_line(exc, self.url) or "statement timed out") from None
        return rows

    async def _execute(self, values: list[bytes | None]) -> list[Row]:
        assert self._conn is not None
        assert self._loader is not None
        pg = self._conn.pgconn
        pg.send_query_prepared(self._statement, values)
        await _flushed(pg)
        rows: list[Row] = []
        while True:
            result = await _next_result(self._conn)
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
        with _translated(self.url):
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


async def _flushed(pg: psycopg.pq.abc.PGconn) -> None:
    """Wait until libpq has sent the whole query (non-blocking mode)."""
    while pg.flush():
        await trio.lowlevel.wait_writable(pg.socket)


async def _next_result(conn: psycopg.Connection[Row]) -> psycopg.pq.abc.PGresult | None:
    """The next result of the query in flight, waiting on the socket; None when all are read."""
    pg = conn.pgconn
    while pg.is_busy():
        await trio.lowlevel.wait_readable(pg.socket)
        pg.consume_input()
    result = pg.get_result()
    if result is not None and result.status == pq.ExecStatus.FATAL_ERROR:
        raise psycopg.errors.error_from_result(result, encoding=conn.info.encoding)
    return result
