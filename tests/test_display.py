"""Row text is inert wherever an operator sees it: the job table, plain lines, a job's story,
log lines.

A property over arbitrary text in every displayed column: rendering never
raises, and with no colour system rich emits no escape of its own, so any
control character in the output could only have come from the row.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import unicodedata
from datetime import UTC, datetime, timedelta
from typing import Any, get_args

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from notifyworker import console, logs
from notifyworker.models import JobId, JobRow, JobStatus, JobStory
from notifyworker.safetext import visible

# Characters that matter to a terminal or to rich, mixed into arbitrary text so
# Hypothesis meets them often: markup brackets, ESC, CSI, bidi override, CR, NEL.
TRICKY = list("[]/=:\\@ \x1b\x9b\x07\x7f\u202e\u2066\r\n\t\x85\u2028")
texts = st.text(st.one_of(st.characters(), st.sampled_from(TRICKY)))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=6,
)
BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u2028\u2029")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def controls(text: str, allowed: str = "") -> list[str]:
    """Control characters in `text` (an independent check of what `visible` removes)."""
    return [c for c in text if c not in allowed and (unicodedata.category(c) == "Cc" or c in BIDI)]


@st.composite
def job_rows(draw: st.DrawFn) -> JobRow:
    payload: dict[str, Any] = draw(st.dictionaries(texts, json_values, max_size=3))
    if draw(st.booleans()):
        payload["seconds"] = draw(json_values)
    started = draw(st.none() | st.just(T0 + timedelta(milliseconds=3)))
    return JobRow(
        id=JobId(draw(st.integers(min_value=1, max_value=2**63 - 1))),
        task=draw(st.just("sleep") | texts.filter(bool)),
        object_id=draw(st.none() | texts),
        payload=payload,
        status=draw(st.sampled_from(get_args(JobStatus))),
        attempts=1,
        max_attempts=1,
        created_at=T0,
        queued_at=started,
        started_at=started,
        finished_at=None,
        cancelled_at=None,
        error=draw(st.none() | texts),
    )


@settings(max_examples=150, deadline=None)
@given(st.lists(job_rows(), min_size=1, max_size=3))
def test_any_row_text_renders_as_inert_text(rows: list[JobRow]) -> None:
    out = Console(file=io.StringIO(), force_terminal=True, color_system=None, width=240)
    out.print(console.job_table(rows, title="jobs"))
    rendered = out.file.getvalue()  # type: ignore[attr-defined]
    assert "\x1b" not in rendered
    assert controls(rendered, allowed="\n") == []
    for row in rows:
        line = console.plain_line(row)
        assert controls(line) == []  # one line per job, whatever the row holds


@st.composite
def job_stories(draw: st.DrawFn) -> JobStory:
    row = draw(job_rows())
    retried = draw(st.none() | st.just(T0 + timedelta(seconds=1)))
    return JobStory(
        **{field.name: getattr(row, field.name) for field in dataclasses.fields(row)},
        lost_claims=0,
        worker_id=draw(st.none() | texts),
        timeout=10.0,
        run_at=T0,
        retries=0 if retried is None else 1,
        retried_at=retried,
        attempts_before_retry=1,
        error_before_retry=draw(st.none() | texts),
        result=draw(json_values),
    )


@settings(max_examples=150, deadline=None)
@given(job_stories())
def test_any_story_renders_as_inert_text_one_field_a_line(job: JobStory) -> None:
    out = Console(file=io.StringIO(), force_terminal=True, color_system=None, width=240)
    out.print(console.story_table(job))
    rendered = out.file.getvalue()  # type: ignore[attr-defined]
    assert "\x1b" not in rendered
    assert controls(rendered, allowed="\n") == []
    plain = console.story_plain(job)
    assert controls(plain, allowed="\n") == []
    # Every line is a field of ours: no value can start a line of its own.
    labels = [label for label, _ in console.story(job)]
    assert [line.split(": ", 1)[0] for line in plain.split("\n")] == labels


def test_the_table_shows_markup_and_escapes_literally_and_keeps_status_styles() -> None:
    row = JobRow(
        id=JobId(7),
        task="evil\x1b[31mred\x1b]8;;http://x\x1b\\",
        object_id="[link=https://evil.example]x[/link] [/oops] :smile:",
        payload={},
        status="done",
        attempts=1,
        max_attempts=1,
        created_at=T0,
        queued_at=None,
        started_at=None,
        finished_at=None,
        cancelled_at=None,
        error="abc\u202edef",
    )
    out = Console(file=io.StringIO(), force_terminal=True, color_system="standard", width=300)
    # A sleep whose seconds are not a number: shown as JSON, not formatted with :g.
    odd_sleep = dataclasses.replace(row, id=JobId(8), task="sleep", payload={"seconds": "[/x]"})
    out.print(console.job_table([row, odd_sleep]))
    rendered = out.file.getvalue()  # type: ignore[attr-defined]
    assert "\x1b]8;" not in rendered  # no OSC 8 hyperlink
    assert "\x1b[32mdone" in rendered  # the status keeps its colour
    assert "[link=https://evil.example]x[/link] [/oops] :smile:" in rendered
    assert "evil\\x1b[31mred\\x1b]8;;http://x\\x1b\\" in rendered
    assert "abc\\u202edef" in rendered
    assert "\u202e" not in rendered
    assert '"[/x]"' in rendered


def test_visible_escapes_controls_and_leaves_other_text_alone() -> None:
    assert visible("a\x1bb\x9bc\x7fd\u202ee\nf") == "a\\x1bb\\x9bc\\x7fd\\u202ee\\x0af"
    assert visible("line\nnext\r", keep_newlines=True) == "line\nnext\\x0d"
    plain = "naïve [x] 日本 \\x1b"
    assert visible(plain) is plain


def test_text_log_lines_show_row_text_inert() -> None:
    record = logging.LogRecord(
        "notifyworker.consumer",
        logging.WARNING,
        __file__,
        1,
        "job %s %s failed: %s",
        (1, "t\x1b[2J", "[/oops]\nforged line \u202e"),
        None,
    )
    line = logs.text_formatter().format(record)
    assert controls(line) == []
    assert "t\\x1b[2J" in line
    assert "[/oops]\\x0aforged line \\u202e" in line


def test_the_terminal_log_handler_reads_no_markup_and_obeys_no_escape() -> None:
    out = Console(file=io.StringIO(), force_terminal=True, color_system=None, width=200)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    logs.configure("INFO", out, "text")
    try:
        logging.getLogger("notifyworker.test").warning(
            "job failed: %s", "[/oops] [link=https://evil.example]x[/link] \x1b]8;;http://x\x1b\\"
        )
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    rendered = out.file.getvalue()  # type: ignore[attr-defined]
    assert "\x1b" not in rendered
    assert "[/oops] [link=https://evil.example]x[/link] \\x1b]8;;http://x\\x1b\\" in rendered
