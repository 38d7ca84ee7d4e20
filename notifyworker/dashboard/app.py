"""The dashboard's ASGI app, and the server that runs it on the service's event loop.

Starlette and Jinja2: Starlette is written on anyio, so the same app runs
under hypercorn's trio server (the default) and its asyncio one, like the
worker; Jinja2 renders plain HTML with autoescaping on, so a payload or an
error is always text. The page's one small script is a static file, and the
Content-Security-Policy allows no other (no inline script, no other origin).
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from notifyworker.config import DashboardSettings
from notifyworker.dashboard.security import Guard
from notifyworker.dashboard.views import Views
from notifyworker.db import Database
from notifyworker.errors import BadRequest, DatabaseError, Forbidden
from notifyworker.health import serve

HERE = Path(__file__).parent
# Connections the dashboard holds: a page reads on one; a few people at once share them.
POOL_SIZE = 4
# Sent with every answer: no script but our file, no framing, no sniffing.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
        " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
}


def make_app(db: Database, guard: Guard) -> Starlette:
    templates = Jinja2Templates(directory=HERE / "templates")
    env = templates.env
    env.autoescape = True  # every template, whatever its name
    env.filters.update(pretty_json=_pretty_json, when=_when, ago=_ago, number=_number)
    views = Views(db, guard, templates)

    async def refused(request: Request, exc: Exception) -> Response:
        return views.render_error(request, 403, str(exc))

    async def bad(request: Request, exc: Exception) -> Response:
        return views.render_error(request, 400, str(exc))

    async def not_found(request: Request, exc: Exception) -> Response:
        return views.render_error(request, 404, f"there is no page {request.url.path}")

    async def no_database(request: Request, exc: Exception) -> Response:
        # An action while the database is away (a page says so by itself); it may not
        # have reached the table: the page, once the database answers, shows whether it did.
        return views.render_error(request, 503, f"the database is not answering: {exc}")

    routes = [
        Route("/", views.overview),
        Route("/jobs", views.jobs),
        Route("/jobs/{job_id}", views.job),
        Route("/jobs/{job_id}/cancel", views.cancel, methods=["POST"]),
        Route("/jobs/{job_id}/retry", views.retry, methods=["POST"]),
        Route("/queues/{name}/pause", views.pause, methods=["POST"]),
        Route("/queues/{name}/resume", views.resume, methods=["POST"]),
        Route("/queues/{name}/rate", views.rate, methods=["POST"]),
        Route("/workers", views.workers),
        Route("/schedules", views.schedules),
        Route("/login", views.login_page, methods=["GET"]),
        Route("/login", views.login, methods=["POST"]),
        Route("/logout", views.logout, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(BaseHTTPMiddleware, dispatch=_headers)],
        exception_handlers={
            Forbidden: refused,
            BadRequest: bad,
            DatabaseError: no_database,
            404: not_found,
        },
    )


async def serve_dashboard(
    url: str,
    settings: DashboardSettings,
    *,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the dashboard until cancelled; report started, with the bound port."""
    db = Database(url, size=POOL_SIZE, setup=("dashboard_session",))
    await db.open()
    try:
        token = settings.token.get_secret_value() if settings.token else None
        app = make_app(db, Guard(token, reads_need_token=settings.token_for_reads))
        await serve(
            app,  # type: ignore[arg-type]  # Starlette's ASGI types are its own
            settings.host,
            settings.port,
            what="dashboard",
            name="the dashboard",
            hint="--port or NOTIFYWORKER_DASHBOARD_PORT sets another port, 0 any free one",
            paths="actions " + ("on" if token else "off: no NOTIFYWORKER_DASHBOARD_TOKEN"),
            task_status=task_status,
        )
    finally:
        with anyio.CancelScope(shield=True):
            await db.close()


async def _headers(request: Request, call_next: RequestResponseEndpoint) -> Response:
    response = await call_next(request)
    response.headers.update(SECURITY_HEADERS)
    return response


def _pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def _when(value: datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _ago(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _number(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"
