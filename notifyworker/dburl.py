"""What can be told about a DATABASE_URL without the driver: where its password is.

libpq ends a URL's userinfo at the first '@' or '/', so a password holding an
unencoded '@', '/', '?' or '#' is misread, and pieces of it come back in
libpq's errors as a host, a port or a database name. Such a URL is refused
before any connection (config), and every form of the password found here is
what notifyworker.db scrubs from the messages it writes.

A password is read as the text between the first ':' after '://' and the
LAST '@' of the URL: the one reading that holds whatever the password
contains. Key=value conninfo strings ("host=… password=…") are not URLs;
libpq reads them.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

URL_PREFIXES = ("postgresql://", "postgres://")
# Characters a URL's userinfo cannot hold as they are (RFC 3986 gen-delims but ':').
_DELIMITERS = frozenset("@/?#[]")
# '%' must start an escape: a lone one is itself to be written %25.
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_QUERY_PASSWORD = re.compile(r"[?&]password=([^&#]*)")
_KEYWORD_PASSWORD = re.compile(r"(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")


def is_url(conninfo: str) -> bool:
    return conninfo.startswith(URL_PREFIXES)


def userinfo_password(url: str) -> str | None:
    """The password as written in a URL's userinfo (still percent-encoded), if any."""
    if not is_url(url):
        return None
    rest = url.split("://", 1)[1]
    userinfo, at, _ = rest.rpartition("@")
    if not at:
        return None
    _, colon, password = userinfo.partition(":")
    return password if colon and password else None


def needs_encoding(password: str) -> bool:
    """Whether the password has characters a URL's userinfo must percent-encode."""
    return bool(_BAD_PERCENT.search(password)) or any(
        char in _DELIMITERS or char.isspace() or not char.isprintable() for char in password
    )


def password_forms(conninfo: str) -> set[str]:
    """Every form of the password in a URL or conninfo string: as written, and decoded."""
    written: list[str] = []
    if is_url(conninfo):
        if password := userinfo_password(conninfo):
            written.append(password)
        written.extend(_QUERY_PASSWORD.findall(conninfo))
    else:
        for value in _KEYWORD_PASSWORD.findall(conninfo):
            written.append(value)
            if value.startswith("'"):
                written.append(re.sub(r"\\(.)", r"\1", value[1:-1]))
    forms = set(written)
    if is_url(conninfo):
        forms.update(unquote(value, errors="replace") for value in written)
    forms.discard("")
    return forms


def has_password(conninfo: str) -> bool:
    return bool(password_forms(conninfo))
