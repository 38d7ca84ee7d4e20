"""Who may read the dashboard and who may act through it.

Actions (cancel, retry, pause, rate) are off unless a token is configured.
With one, a browser logs in once by typing it: the dashboard answers with a
session cookie (HttpOnly, SameSite=Strict) that is a random nonce and its
HMAC under the token, so the server keeps no sessions and changing the token
ends them all. Every action then needs, besides the cookie, the form's CSRF
token (the HMAC of the nonce for another purpose, so another site cannot know
it) and an Origin (or Referer) of the dashboard itself. A script may instead
send `Authorization: Bearer TOKEN`, which no browser adds across sites.
Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from urllib.parse import urlsplit

from starlette.requests import Request

from notifyworker.errors import Forbidden

log = logging.getLogger(__name__)

COOKIE = "notifyworker_dashboard"
# A session lasts this long; then the token is asked for again.
SESSION_SECONDS = 12 * 3600


class Guard:
    """The dashboard's access rules, for one token (None: actions off)."""

    def __init__(self, token: str | None, *, reads_need_token: bool = False) -> None:
        self._key = None if token is None else token.encode()
        self.reads_need_token = reads_need_token and token is not None

    @property
    def actions_on(self) -> bool:
        return self._key is not None

    def token_matches(self, given: str) -> bool:
        return self._key is not None and hmac.compare_digest(given.encode(), self._key)

    def new_session(self) -> str:
        """A session cookie's value: issue time and nonce, and their MAC."""
        nonce = f"{int(time.time())}.{secrets.token_urlsafe(18)}"
        return f"{nonce}.{self._mac('session', nonce)}"

    def session(self, request: Request) -> str | None:
        """The nonce of the request's valid, unexpired session; None: it has none."""
        value = request.cookies.get(COOKIE, "")
        nonce, _, mac = value.rpartition(".")
        issued = nonce.partition(".")[0]
        if self._key is None or not issued.isdigit():
            return None
        if not hmac.compare_digest(mac, self._mac("session", nonce)):
            return None
        return nonce if time.time() - int(issued) < SESSION_SECONDS else None

    def csrf_token(self, nonce: str) -> str:
        return self._mac("csrf", nonce)

    def may_read(self, request: Request) -> bool:
        return not self.reads_need_token or self._bearer_ok(request) or bool(self.session(request))

    def check_action(self, request: Request, form_csrf: str | None) -> None:
        """Raise Forbidden unless this request may act; the reason names no secret."""
        if self._key is None:
            raise Forbidden("actions are off: set NOTIFYWORKER_DASHBOARD_TOKEN to turn them on")
        if self._bearer_ok(request):
            return
        check_same_origin(request)
        nonce = self.session(request)
        if nonce is None:
            raise Forbidden("log in with the dashboard token first")
        if form_csrf is None or not hmac.compare_digest(form_csrf, self.csrf_token(nonce)):
            raise Forbidden("the form's CSRF token is missing or wrong: reload the page")

    def _bearer_ok(self, request: Request) -> bool:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            return False
        if self.token_matches(given.strip()):
            return True
        refuse_wrong_token(request)
        return False  # not reached

    def _mac(self, purpose: str, nonce: str) -> str:
        assert self._key is not None
        return hmac.new(self._key, f"{purpose}:{nonce}".encode(), hashlib.sha256).hexdigest()


def refuse_wrong_token(request: Request) -> None:
    """Log a wrong token (never the token itself) and refuse the request."""
    client = request.client.host if request.client else "unknown"
    log.warning("dashboard: a wrong token from %s for %s", client, request.url.path)
    raise Forbidden("wrong token")


def check_same_origin(request: Request) -> None:
    """Refuse a state-changing request a page of another origin sent.

    Browsers send Origin with every POST; Referer is the fallback for the
    few that leave it out. Neither: refused, since a form must come from a page.
    """
    here = f"{request.url.scheme}://{request.headers.get('host', '')}"
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        referer = request.headers.get("referer")
        if referer is None:
            raise Forbidden("the request names no origin: send it from the dashboard's own page")
        parts = urlsplit(referer)
        origin = f"{parts.scheme}://{parts.netloc}"
    if origin != here:
        raise Forbidden("the request comes from another site")
