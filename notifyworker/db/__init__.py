"""The one seam to the database driver: psycopg 3, driven from trio or asyncio.

Nothing outside this package imports psycopg (an import-linter contract), and
driver exceptions become notifyworker's own here and nowhere else. Callers
import from here; the rooms inside are:

    translate  driver exception -> notifyworker.errors, one line, no password
    pool       connect, Session, run_once, Database: one thread hop per unit of work
    listen     ListenConnection: LISTEN on the socket, the NOTIFY self-check
    direct     DirectStatement: the claim on the event loop, through libpq's
               non-blocking API
    producer   enqueue on the application's own connection, in its transaction
"""

from notifyworker.db.direct import DirectStatement
from notifyworker.db.listen import ListenConnection
from notifyworker.db.pool import Database, Row, Session, json_param, run_once
from notifyworker.db.producer import (
    AsyncConnection,
    Connection,
    Job,
    enqueue,
    enqueue_one,
    enqueue_one_async,
)
from notifyworker.db.translate import redact

__all__ = [
    "AsyncConnection",
    "Connection",
    "Database",
    "DirectStatement",
    "Job",
    "ListenConnection",
    "Row",
    "Session",
    "enqueue",
    "enqueue_one",
    "enqueue_one_async",
    "json_param",
    "redact",
    "run_once",
]
