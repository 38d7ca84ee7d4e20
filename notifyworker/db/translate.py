"""Driver exceptions become notifyworker's own here, and nowhere else.

Every message is one line and holds neither the URL's password nor any piece
of it (libpq echoes a misread URL back as a host, a port or a database name).
A connection driven on the event loop (the listener, the claim) fails in one
more way than a pooled one, by a socket error or a missed deadline, and
`lost` is the one rule for all of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg
import psycopg.errors
from psycopg.conninfo import conninfo_to_dict

from notifyworker import dburl, errors

# How a connection driven on the event loop fails: the driver's error, the
# socket's, or the event loop's deadline. `lost` says what each means.
SOCKET_FAILURES = (psycopg.Error, OSError, TimeoutError)

# The shortest run of a password's characters that is never left in a message.
_FRAGMENT = 4

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


def translate(exc: psycopg.Error, url: str | None = None) -> errors.DatabaseError:
    """The project's exception for a driver exception, with a one-line message."""
    message = _one_line(exc, url)
    if isinstance(exc, psycopg.errors.ObjectNotInPrerequisiteState) and exc.diag.message_primary:
        # A refusal our own functions raise (retry()): their message is the whole
        # story, without PL/pgSQL's CONTEXT line after it.
        secrets = _password(url) if url else set()
        message = _scrub(" ".join(exc.diag.message_primary.split()), secrets)
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


@contextlib.contextmanager
def translated(url: str | None) -> Iterator[None]:
    """Driver exceptions raised inside become the project's, via `translate`."""
    try:
        yield
    except psycopg.Error as exc:
        raise translate(exc, url) from None


def lost(
    exc: psycopg.Error | OSError | TimeoutError, url: str, deadline: str
) -> errors.DatabaseError:
    """What a failure on a connection driven on the event loop means; the caller closes it.

    One rule for the listener's self-check and the direct statement: a driver
    error is translated as on any other connection (so a cancelled statement
    is still DatabaseBusy), a missed deadline is ConnectionLost saying which
    (`deadline`), and a socket error is ConnectionLost with its own one line.
    """
    if isinstance(exc, psycopg.Error):
        return translate(exc, url)
    if isinstance(exc, TimeoutError):
        return errors.ConnectionLost(deadline)
    return errors.ConnectionLost(_one_line(exc, url))


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


def _refused_for_good(message: str) -> bool:
    lowered = message.lower()
    return any(phrase in lowered for phrase in _FOR_GOOD)
