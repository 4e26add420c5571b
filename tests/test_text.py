"""``printable`` and the escaping log formatter (issue 10, finding 7)."""

from __future__ import annotations

import logging
import sys

import pytest

from tuf_signer._text import EscapingFormatter, printable

# Every category finding 7 names, and what must pass through untouched.
PRINTABLE: dict[str, tuple[str, str]] = {
    "f7-text-plain": ("bins-0c1 timestamp", "bins-0c1 timestamp"),
    "f7-text-letters-kept": ("Zürich 東京 ñ", "Zürich 東京 ñ"),
    "f7-text-cc-c0": ("a\x00b\x07c\td", "a\\x00b\\x07c\\td"),
    "f7-text-cc-esc-del": ("\x1b[2K\x7f", "\\x1b[2K\\x7f"),
    "f7-text-cc-c1": ("\x85\x9b\x9d", "\\x85\\x9b\\x9d"),
    "f7-text-cf-bidi": ("\u202a\u202e\u2066\u2069\u200e", "\\u202a\\u202e\\u2066\\u2069\\u200e"),
    "f7-text-cf-tag": ("\U000e0041", "\\U000e0041"),
    "f7-text-cs-surrogate": ("\udc80", "\\udc80"),
    "f7-text-co-private": ("\ue000", "\\ue000"),
    "f7-text-cn-unassigned": ("\U0010fffe", "\\U0010fffe"),
    "f7-text-zl-zp": ("\u2028\u2029", "\\u2028\\u2029"),
    "f7-text-zs-not-space": ("a\u00a0b\u3000c", "a\\xa0b\\u3000c"),
    "f7-text-backslash": ("C:\\x1b", "C:\\\\x1b"),
}


@pytest.mark.parametrize(("value", "expected"), list(PRINTABLE.values()), ids=list(PRINTABLE))
def test_printable(value: str, expected: str) -> None:
    out = printable(value)
    assert out == expected
    assert out.isprintable()


def test_log_lines_escape_client_strings() -> None:
    formatter = EscapingFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord(
        "tuf_signer.server", logging.WARNING, __file__, 1, "could not disable %s v%d",
        ("x\n2026 INFO forged\x1b[2K", 2), None,
    )  # fmt: skip
    assert formatter.format(record) == "WARNING could not disable x\\n2026 INFO forged\\x1b[2K v2"
    assert record.getMessage().startswith("could not disable x\n")  # the record is untouched
    try:
        raise ValueError("bad key \x1b]0;owned\x07")
    except ValueError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "boom", (), sys.exc_info())
    text = formatter.format(record)
    assert "\\x1b]0;owned\\x07" in text and "\x1b" not in text
    assert text.count("\n") >= 2  # a traceback keeps its lines
