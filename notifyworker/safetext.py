"""Text from a job row, made inert before an operator's terminal sees it.

Applications write `task`, `object_id`, `payload`, `error` and `result`; a
terminal obeys what it is sent. An ESC starts a colour, a cursor move or an
OSC 8 hyperlink, a CR or a newline forges a line, U+202E reverses what
follows. `visible()` turns each such character into an escape (`\\x1b`,
`\\u202e`) so it is shown, not obeyed; rich markup is kept inert separately,
by handing rich `Text` objects instead of strings.
"""

from __future__ import annotations

import unicodedata

# Bidirectional controls (embeddings, overrides, isolates, marks) and the
# Unicode line and paragraph separators: they reorder or break what a
# terminal shows, though they are not in the Cc category.
_FORMATTING = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u2028\u2029"
)


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def is_control(char: str) -> bool:
    """C0, DEL, C1 (category Cc) or a bidi/line-breaking format character."""
    return char in _FORMATTING or unicodedata.category(char) == "Cc"


def visible(text: str, *, keep_newlines: bool = False) -> str:
    """`text` with every control character shown as an escape, e.g. ESC as `\\x1b`.

    `keep_newlines` leaves "\\n" alone, for multi-line text such as a traceback.
    """
    if not any(map(is_control, text)):
        return text  # the common case, without building a new string
    return "".join(
        char if (keep_newlines and char == "\n") or not is_control(char) else _escape(char)
        for char in text
    )
