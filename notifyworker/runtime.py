"""The event loop a worker runs on: trio by default, asyncio on request.

Every task of the worker is written against anyio, so one code base runs on
either loop. trio is the default (strict structured concurrency, and the
figures in docs/benchmarks.md); asyncio is for handlers that await asyncio
libraries (asyncpg, aiohttp, SQLAlchemy's asyncio engine, redis.asyncio).
An application with its own event loop embeds a worker instead
(`notifyworker.embedding`), and this module is not used.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar, TypeVarTuple, Unpack

import anyio

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

Backend = Literal["trio", "asyncio"]


def backend_options(backend: Backend) -> dict[str, Any]:
    """What anyio is told about the loop: nothing, on either.

    Not uvloop, even when installed: measured beside the standard asyncio
    loop (docs/benchmarks.md, issue 10) it drained and picked up no faster,
    since a worker's time goes to PostgreSQL round trips and Python, not to
    the loop's own I/O machinery.
    """
    return {}


def run(fn: Callable[[Unpack[Ts]], Awaitable[T]], *args: *Ts, backend: Backend = "trio") -> T:
    """Run `fn(*args)` on a new event loop of `backend` until it returns."""
    return anyio.run(fn, *args, backend=backend, backend_options=backend_options(backend))
