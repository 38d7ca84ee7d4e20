"""The dashboard's pages and actions, as Starlette endpoints.

Every page is rendered whole on the server; the page's script asks for the
same URL every second with `X-Live: 1` and swaps in the answer's live part.
A database that does not answer is a page that says so (503), refreshed like
any other, so the dashboard recovers by itself when the database returns.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from notifyworker import admin
from notifyworker.dashboard import reads
from notifyworker.dashboard.security import (
    COOKIE,
    SESSION_SECONDS,
    Guard,
    check_same_origin,
    refuse_wrong_token,
)
from notifyworker.dashboard.timeline import timeline
from notifyworker.db import Database
from notifyworker.errors import BadRequest, DatabaseError, Forbidden, RowRejected
from notifyworker.models import JobId

log = logging.getLogger(__name__)

# A form's body is a few fields: anything larger is not ours.
MAX_FORM_BYTES = 4096
# Longest text filter taken from a query string (task and queue names are at most 200).
MAX_FILTER_LENGTH = 200
ERROR_TITLES = {400: "Bad request", 403: "Refused", 404: "Not found", 503: "No database"}


class Views:
    """The endpoints, over one pool and one set of access rules."""

    def __init__(self, db: Database, guard: Guard, templates: Jinja2Templates) -> None:
        self.db = db
        self.guard = guard
        self.templates = templates

    # === Pages ===

    async def overview(self, request: Request) -> Response:
        return await self._page(request, "overview", "Overview", reads.overview)

    async def jobs(self, request: Request) -> Response:
        query = request.query_params
        filters = reads.JobFilters(
            status=_status(query.get("status")),
            task=_text(query.get("task")),
            queue=_text(query.get("queue")),
            object_id=_text(query.get("object_id")),
        )
        if found := _text(query.get("id")):
            return RedirectResponse(f"/jobs/{_job_id(found)}", status_code=303)
        before = _job_id(query["before"]) if query.get("before") else reads.NEWEST
        extra = {"filters": filters, "statuses": reads.STATUSES, "before": before}
        extra["next_query"] = lambda next_before: urlencode(
            {k: v for k, v in filters.params().items() if v is not None} | {"before": next_before}
        )
        return await self._page(request, "jobs", "Jobs", reads.jobs_page, filters, before, **extra)

    async def job(self, request: Request) -> Response:
        job_id = _job_id(request.path_params["job_id"])
        return await self._page(request, "job", f"Job {job_id}", reads.job, job_id, job_id=job_id)

    async def workers(self, request: Request) -> Response:
        return await self._page(request, "workers", "Workers", reads.workers)

    async def schedules(self, request: Request) -> Response:
        return await self._page(request, "schedules", "Schedules", admin.list_schedules)

    async def login_page(self, request: Request) -> Response:
        return self._render(request, "login", "Log in", {"next": _next(request)})

    # === Session ===

    async def login(self, request: Request) -> Response:
        check_same_origin(request)
        form = await _form(request)
        if not self.guard.actions_on:
            raise Forbidden("there is no token to log in with: set NOTIFYWORKER_DASHBOARD_TOKEN")
        if not self.guard.token_matches(form.get("token", "")):
            refuse_wrong_token(request)
        response = RedirectResponse(_safe_next(form.get("next")), status_code=303)
        response.set_cookie(
            COOKIE,
            self.guard.new_session(),
            max_age=SESSION_SECONDS,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def logout(self, request: Request) -> Response:
        form = await _form(request)
        self.guard.check_action(request, form.get("csrf"))
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    # === Actions ===

    async def cancel(self, request: Request) -> Response:
        job_id = _job_id(request.path_params["job_id"])
        form = await self._action(request)
        if await self.db.run(admin.cancel, job_id) is None:
            return self._missing(request, job_id)
        log.info("dashboard: job %d cancelled", job_id)
        return RedirectResponse(_safe_next(form.get("next")), status_code=303)

    async def retry(self, request: Request) -> Response:
        job_id = _job_id(request.path_params["job_id"])
        form = await self._action(request)
        found = await self.db.run(admin.retry, job_id)
        if found is None:
            return self._missing(request, job_id)
        was, retried = found
        if not retried:
            problem = f"job {job_id} is {was}: only a failed or cancelled job can be retried"
            return self._render(request, "error", "Not retried", {"problem": problem}, 409)
        log.info("dashboard: job %d retried", job_id)
        return RedirectResponse(_safe_next(form.get("next")), status_code=303)

    async def pause(self, request: Request) -> Response:
        return await self._pause(request, paused=True)

    async def resume(self, request: Request) -> Response:
        return await self._pause(request, paused=False)

    async def rate(self, request: Request) -> Response:
        name = request.path_params["name"]
        form = await self._action(request)
        text = form.get("rate", "").strip()
        try:
            rate = None if text == "" else float(text)
        except ValueError:
            raise BadRequest(f"the rate {text!r} is not a number") from None
        try:
            await self.db.run(reads.set_queue_rate, name, rate)
        except RowRejected as exc:
            raise BadRequest(f"the rate {text} is refused: {exc}") from None
        log.info(
            "dashboard: queue %s rate set to %s",
            name,
            "each worker's own" if rate is None else rate,
        )
        return RedirectResponse(_safe_next(form.get("next")), status_code=303)

    async def _pause(self, request: Request, *, paused: bool) -> Response:
        name = request.path_params["name"]
        form = await self._action(request)
        try:
            await self.db.run(reads.pause_queue, name, paused)
        except RowRejected as exc:
            raise BadRequest(f"the queue name is refused: {exc}") from None
        log.info("dashboard: queue %s %s", name, "paused" if paused else "resumed")
        return RedirectResponse(_safe_next(form.get("next")), status_code=303)

    async def _action(self, request: Request) -> dict[str, str]:
        form = await _form(request)
        self.guard.check_action(request, form.get("csrf"))
        return form

    # === Rendering ===

    async def _page(
        self,
        request: Request,
        page: str,
        title: str,
        read: Callable[..., Any],
        *args: Any,
        **extra: Any,
    ) -> Response:
        if not self.guard.may_read(request):
            if request.headers.get("x-live"):
                raise Forbidden("log in with the dashboard token first")
            return RedirectResponse(f"/login?{urlencode({'next': _here(request)})}", 303)
        try:
            data = await self.db.run(read, *args)
        except DatabaseError as exc:
            return self._render(request, page, title, {"data": None, "db_error": str(exc)}, 503)
        if page == "job":
            if data is None:
                return self._missing(request, extra["job_id"])
            extra["steps"] = timeline(data)
        return self._render(request, page, title, {"data": data, **extra})

    def _missing(self, request: Request, job_id: JobId) -> Response:
        problem = f"there is no job {job_id}"
        return self._render(request, "error", "No such job", {"problem": problem}, 404)

    def render_error(self, request: Request, status: int, problem: str) -> Response:
        title = ERROR_TITLES.get(status, "Error")
        return self._render(request, "error", title, {"problem": problem}, status)

    def _render(
        self, request: Request, page: str, title: str, context: dict[str, Any], status: int = 200
    ) -> Response:
        nonce = self.guard.session(request)
        live = bool(request.headers.get("x-live"))
        return self.templates.TemplateResponse(
            request,
            f"{page}.html" if live else "base.html",
            {
                "page": page,
                "title": title,
                "actions_on": self.guard.actions_on,
                "csrf": None if nonce is None else self.guard.csrf_token(nonce),
                "here": _here(request),
                **context,
            },
            status_code=status,
            headers={"cache-control": "no-store"},
        )


async def _form(request: Request) -> dict[str, str]:
    """A urlencoded form's fields (the first value of each); refused when too large."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise BadRequest("the form is too large")
    try:
        fields = parse_qs(body.decode(), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("the form cannot be read") from None
    return {name: values[0] for name, values in fields.items()}


def _status(value: str | None) -> str | None:
    if not value:
        return None
    if value not in reads.STATUSES:
        raise BadRequest(
            f"{value!r} is not a status: the status filter takes one of "
            + ", ".join(reads.STATUSES)
        )
    return value


def _text(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    if len(value) > MAX_FILTER_LENGTH:
        raise BadRequest(f"a filter is at most {MAX_FILTER_LENGTH} characters")
    return value.strip()


def _job_id(value: str) -> JobId:
    text = value.strip().removeprefix("#")
    if not text.isascii() or not text.isdigit() or not 0 < int(text) < reads.NEWEST:
        raise BadRequest(f"{value!r} is not a job id: a job id is a positive whole number")
    return JobId(int(text))


def _here(request: Request) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def _next(request: Request) -> str:
    return _safe_next(request.query_params.get("next"))


def _safe_next(value: str | None) -> str:
    """Where to go after a form: a path of this site only, never another host."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value
