"""Untrusted text shown to a person: every character that a terminal would act on, escaped.

Key names, roles, identities and reasons come from clients or from the audit
store. Printed raw, a carriage return, ``ESC [2K`` or a bidi override can erase
or rewrite what an operator sees (``audit tail`` showing a forged granted
record), and a newline can forge a log line. ``printable`` is the one rendering
used by the CLI's text output and the server's log lines.
"""

from __future__ import annotations

import logging

__all__ = ["EscapingFormatter", "printable"]


def _escape(ch: str) -> str:
    if ch == "\\":
        return "\\\\"
    # repr() spells the character as Python would: \t \n \r, \x1b, \u202e, \U000e0001.
    return repr(ch)[1:-1]


def printable(value: str) -> str:
    """Render ``value`` for a terminal or a log line, with nothing a terminal interprets.

    Every character that ``str.isprintable`` rejects becomes a visible escape: the
    Unicode categories Cc (C0 and C1 controls, ESC, DEL), Cf (bidi overrides and
    isolates, zero-width characters), Cs (lone surrogates), Co, Cn, Zl, Zp and
    every space separator but U+0020. A backslash is doubled, so an escape in
    the output always stands for the character, never for text that looks
    like one.
    """
    if value.isprintable() and "\\" not in value:
        return value
    return "".join(ch if ch.isprintable() and ch != "\\" else _escape(ch) for ch in value)


class EscapingFormatter(logging.Formatter):
    """A log formatter that passes every message through ``printable``.

    Log messages interpolate client strings (key names, roles, identities); a
    newline in one would forge a log line, an escape sequence would act on the
    operator's terminal. Tracebacks keep their line breaks, each line escaped.
    """

    def format(self, record: logging.LogRecord) -> str:
        """Format ``record`` with its message escaped (the record itself is left as it was)."""
        saved = record.msg, record.args
        record.msg, record.args = printable(record.getMessage()), None
        try:
            return super().format(record)
        finally:
            record.msg, record.args = saved

    def formatException(self, ei: logging._SysExcInfoType) -> str:
        """The traceback, each of its lines escaped."""
        return "\n".join(printable(line) for line in super().formatException(ei).split("\n"))

    def formatStack(self, stack_info: str) -> str:
        """The stack, each of its lines escaped."""
        return "\n".join(printable(line) for line in super().formatStack(stack_info).split("\n"))
