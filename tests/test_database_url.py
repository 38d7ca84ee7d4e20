"""No message the service writes holds the database password, or a piece of it.

The property: for a password drawn from letters, digits, punctuation (the
URL delimiters included), spaces and non-ASCII, written raw or
percent-encoded into a URL whose port nothing listens on, the one-line
message `config.load` or `db.run_once` ends with holds neither the password
nor any 4-character run of it, and neither does `db.redact`.
"""

from __future__ import annotations

import functools
import string
from urllib.parse import quote

from hypothesis import example, given, settings
from hypothesis import strategies as st

from notifyworker import config, db, dburl, schema
from notifyworker.errors import NotifyWorkerError

passwords = st.text(
    st.sampled_from(string.ascii_letters + string.digits + string.punctuation + " ")
    | st.characters(min_codepoint=0xA0, codec="utf-8"),
    min_size=1,
    max_size=20,
)


def url_with(password: str) -> str:
    return f"postgresql://user:{password}@127.0.0.1:1/db"


def failure(url: str) -> str:
    """The one-line message the CLI would print for this URL."""
    try:
        db.run_once(config.load(database_url=url).url(), schema.pending_migrations)
    except NotifyWorkerError as exc:
        return str(exc)
    raise AssertionError("something answered on port 1")


@functools.cache
def fixed() -> str:
    """What the messages say whatever the password: a fragment found here is no leak."""
    return failure(url_with("plain")) + failure(url_with("p@ss")) + db.redact(url_with("plain"))


def leaks(text: str, password: str) -> list[str]:
    pieces = {password} | {password[i : i + 4] for i in range(len(password) - 3)}
    return sorted(p for p in pieces if p in text and p not in fixed())


@settings(max_examples=40, deadline=None)
@given(passwords, st.booleans())
@example("ab/cdef", False)  # libpq would read "ab" as a port, "cdef@…" as the database
@example("x y@z%", True)
@example("\udcff", False)  # an undecodable byte in the environment
def test_no_message_holds_the_password_or_a_piece_of_it(password: str, encoded: bool) -> None:
    written = quote(password, safe="") if encoded else password
    url = url_with(written)
    message = failure(url)
    assert "\n" not in message
    for form in {password, written}:
        assert leaks(message, form) == []
        assert leaks(db.redact(url), form) == []


def test_the_password_is_found_whatever_it_holds() -> None:
    assert dburl.userinfo_password("postgresql://u:p@ss/w@host:5/db") == "p@ss/w"
    assert dburl.userinfo_password("postgresql://u@host/db?application_name=a") is None
    assert dburl.userinfo_password("host=h password=x") is None
    assert dburl.password_forms("postgresql://u:a%40b@h/db") == {"a%40b", "a@b"}
    assert "it's two" in dburl.password_forms("host=h password='it\\'s two' dbname=d")
    assert dburl.needs_encoding("a@b")
    assert dburl.needs_encoding("100%")
    assert not dburl.needs_encoding("a%40b:c!$&'()*+,;=é")
