"""What counts as a usable text, declared once: data validation quarantines rows that break these rules
and ``forgeline serve`` answers 422 for them, so a served model never scores a text it could not have
been trained on. Plain ``re`` only: serving images carry no pandas/pandera.
"""

from __future__ import annotations

import re

CONTROL_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
"""C0 control characters (NUL included) and DEL; tab, newline and carriage return are text."""
NOT_UTF8 = re.compile("[\ud800-\udfff\ufffd]")
"""Lone surrogates cannot be UTF-8; U+FFFD marks bytes an earlier decode could not read."""
LONE_SURROGATE = re.compile("[\ud800-\udfff]")

RULES = {
    "empty_text": "text is empty or whitespace only",
    "control_chars": "text holds control characters (NUL and other C0 bytes other than tab/newline)",
    "non_utf8": "text holds bytes that are not valid UTF-8 (or U+FFFD replacement characters)",
    "lone_surrogate": "text holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape without its pair), which is no character",
}
"""Reason code → what it means, as the validation report and serving errors word it."""


def text_problem(text: str) -> str | None:
    """The first rule ``text`` breaks (a key of RULES), or None."""
    if not text.strip():
        return "empty_text"
    if CONTROL_CHARS.search(text):
        return "control_chars"
    if LONE_SURROGATE.search(text):  # JSON's "\ud800" escape: the request was valid UTF-8, the text is not
        return "lone_surrogate"
    if NOT_UTF8.search(text):
        return "non_utf8"
    return None
