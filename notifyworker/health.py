"""/livez, /readyz and /metrics over HTTP, for Kubernetes' probes and Prometheus.

A raw ASGI app (three paths need no framework) served by hypercorn (its trio
or asyncio server, whichever loop runs the worker) inside the worker's own
task group: it answers from the event loop it vouches for, and stops with
the worker. No probe ever waits on the database:
readiness reads state the worker keeps anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import anyio
import anyio.abc
import hypercorn.asyncio
import hypercorn.trio
import sniffio
from hypercorn.config import Config, Sockets
from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGISendCallable,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Scope,
)
from prometheus_client import CollectorRegistry, make_asgi_app

from notifyworker.errors import ConfigError

log = logging.getLogger(__name__)

# A part's readiness check: given the event loop's clock and how long a part may be
# silent, why the worker cannot do its work, or None when it can.
Check = Callable[[float, float], str | None]


class Answering(Protocol):
    """What readiness reads of the database: when a unit of work last reached it."""

    @property
    def last_success(self) -> float: ...


class Readiness:
    """Why this worker should get no traffic now (/readyz says it), or None.

    Never a query of its own: each part says, from state it keeps anyway,
    whether it can do its work, so a hung database cannot hang the probe.
    The worker moves the phase (starting, ready, stopping); stopping is not
    ready, so traffic moves on while jobs drain.
    """

    def __init__(self, within: float) -> None:
        # How long a part may go without progress before the worker is not ready.
        self.within = within
        # Why the worker is not running yet; None once it runs.
        self.phase: str | None = "starting"
        # Set once a stop is asked, whatever the phase: traffic moves on while jobs drain.
        self.stopping = False
        self._checks: list[Check] = []

    def watch(self, *checks: Check) -> None:
        """Add parts' checks, asked in order; the first reason found is the answer."""
        self._checks.extend(checks)

    def __call__(self) -> str | None:
        if self.stopping:
            return "stopping"
        if self.phase is not None:
            return self.phase
        now = anyio.current_time()
        for check in self._checks:
            if reason := check(now, self.within):
                return reason
        return None


def silent(db: Answering) -> Check:
    """The database check: not ready once no unit of work has reached it for `within`."""

    def check(now: float, within: float) -> str | None:
        silence = now - db.last_success
        return f"the database has not answered for {silence:.1f}s" if silence > within else None

    return check


def make_app(readiness: Callable[[], str | None], registry: CollectorRegistry) -> ASGIFramework:
    """The ASGI app: liveness, readiness with a one-line reason, and the registry's metrics."""
    metrics = make_asgi_app(registry)

    async def app(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # a websocket: refused by returning without accepting
        path = scope["path"]
        if path == "/metrics":
            # prometheus_client's own app negotiates OpenMetrics and gzip.
            await metrics(scope, receive, send)
            return
        if path == "/livez":
            # Answering at all is the proof: this runs on the worker's event loop.
            status, text = 200, "alive"
        elif path == "/readyz":
            reason = readiness()
            status, text = (200, "ready") if reason is None else (503, reason)
        else:
            status, text = 404, "not found: try /livez, /readyz or /metrics"
        await _respond(send, status, text)

    return app


async def _respond(send: ASGISendCallable, status: int, text: str) -> None:
    body = f"{text}\n".encode()
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ],
        "trailers": False,
    }
    await send(start)
    end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
    await send(end)


async def _lifespan(receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
    """Nothing to set up or tear down; answering keeps hypercorn from warning."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


class _PreBound(Config):
    """hypercorn's config, with the sockets bound before it serves them.

    Binding first makes a busy port one clear error, raised before the
    worker reports started; keeping the sockets lets us close them however
    the server ends (hypercorn leaves that to its listeners).
    """

    sockets: Sockets | None = None

    def create_sockets(self) -> Sockets:
        if self.sockets is None:
            self.sockets = super().create_sockets()
        return self.sockets

    def close(self) -> None:
        if self.sockets is not None:
            for sock in (*self.sockets.secure_sockets, *self.sockets.insecure_sockets):
                sock.close()


async def serve(
    app: ASGIFramework,
    host: str,
    port: int,
    *,
    what: str = "health and metrics",
    name: str = "the health endpoints",
    hint: str = "NOTIFYWORKER_HEALTH_PORT sets another port, 0 any free one, off none",
    paths: str = "/livez, /readyz, /metrics",
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` until cancelled; report started, with the bound port, once it listens.

    `what`, `name`, `hint` and `paths` name the server in its log line and its
    error (the dashboard is served the same way).
    """
    config = _PreBound()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None  # a line per probe, every few seconds, says nothing
    # hypercorn's own lines ("Running on …") go through logging like ours.
    config.errorlog = logging.getLogger("hypercorn.error")
    config.include_server_header = False
    # A probe answers in microseconds: a stop need not wait hypercorn's default 3 s for one.
    config.graceful_timeout = 0.5
    try:
        sockets = config.create_sockets()
    except OSError as exc:
        raise ConfigError(
            f"{name} cannot listen on {host}:{port}: {exc.strerror or exc} ({hint})"
        ) from None
    try:
        # Listening now, not once hypercorn gets to it: a client told "started" may
        # connect at once, and waits in the backlog until the server accepts.
        for sock in sockets.insecure_sockets:
            sock.listen(config.backlog)
        bound = sockets.insecure_sockets[0].getsockname()[1]
        stop = anyio.Event()
        async with anyio.create_task_group() as server:
            server.start_soon(_serve_until, app, config, stop)
            where = f"[{host}]" if ":" in host else host
            log.info("%s on http://%s:%d (%s)", what, where, bound, paths)
            task_status.started(bound)
            try:
                await anyio.sleep_forever()
            finally:
                stop.set()
    finally:
        config.close()


async def _serve_until(app: ASGIFramework, config: _PreBound, stop: anyio.Event) -> None:
    """hypercorn's server for the running event loop, until `stop` is set.

    Shielded, and ended by its own shutdown trigger rather than by
    cancellation: hypercorn's asyncio server closes its sockets and tasks in
    `finally` blocks that a repeated cancel would cut short. Passing a
    trigger also keeps hypercorn from installing signal handlers, which
    belong to the application that embeds the worker.
    """
    with anyio.CancelScope(shield=True):
        if sniffio.current_async_library() == "trio":
            await hypercorn.trio.serve(app, config, shutdown_trigger=stop.wait)
        else:
            await hypercorn.asyncio.serve(app, config, shutdown_trigger=stop.wait)
