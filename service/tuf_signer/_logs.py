"""The operator's log: text (escaped) or JSON, one object per line (issue 15).

``--log-format json`` (or ``ops.log_format = "json"``) writes each record as
one JSON object: ``time`` (RFC 3339 UTC), ``level``, ``logger``, ``message``,
``worker`` when supervised, and the request fields a log call passes in
``extra`` when it knows them: ``identity``, ``key``, ``role``, ``status``,
``audit_seq``, ``operation``, and for a SignBatch ``statuses`` (items by
status), ``first_audit_seq`` and ``last_audit_seq``. JSON escapes every
control character, so a client string in a message cannot forge a line.
Log messages never hold a PIN or key material (errors.py,
``loggable_cause``); this formatter adds nothing that is not in the record's
message or its whitelisted fields, and an exception is logged as its
traceback's frames only (no exception text, which a library may have filled
with a secret).
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from datetime import UTC, datetime

from tuf_signer._text import EscapingFormatter

LOG_FORMATS = ("text", "json")
# The request fields a log call may pass in ``extra`` (and nothing else is copied):
# strings and integers, and ``statuses`` a mapping of status name to count.
REQUEST_FIELDS = (
    "identity",
    "key",
    "role",
    "status",
    "audit_seq",
    "operation",
    "statuses",
    "first_audit_seq",
    "last_audit_seq",
)
# The loggers of the request lines (one per Sign, SignBatch and KeyAdmin
# decision, and per refusal on the record): ``ops.request_log`` says which of
# the two write at INFO; ``--log-level WARNING`` silences both.
REQUEST_LOGGER = "tuf_signer.requests"
GRANTED_LOGGER = REQUEST_LOGGER + ".granted"
REFUSED_LOGGER = REQUEST_LOGGER + ".refused"
# ``ops.request_log``: every decision, the refusals only (the default), or none.
REQUEST_LOG_CHOICES = ("all", "refused", "none")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line.

    Args:
        worker: the supervised worker's number, or None.
    """

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self._worker = worker

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self._worker is not None:
            out["worker"] = self._worker
        for name in REQUEST_FIELDS:
            value = record.__dict__.get(name)
            if isinstance(value, str | int) and not isinstance(value, bool):
                out[name] = value
            elif isinstance(value, dict) and all(
                isinstance(k, str) and type(v) is int for k, v in value.items()
            ):
                out[name] = dict(value)
        if record.exc_info and record.exc_info[2] is not None:
            # Frames only: an exception's text may quote what it failed on.
            exc_type = record.exc_info[0]
            out["exception"] = (
                (exc_type.__name__ if exc_type else "")
                + "\n"
                + "".join(traceback.format_tb(record.exc_info[2]))
            )
        return json.dumps(out, ensure_ascii=True, separators=(",", ":"))


def log_handler(log_format: str, worker: int | None = None) -> logging.Handler:
    """A stderr handler writing ``text`` (escaped) or ``json`` lines.

    Raises:
        ValueError: an unknown format.
    """
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(worker))
    elif log_format == "text":
        # Log lines carry client strings (key names, roles, identities): escaped at the sink.
        handler.setFormatter(
            EscapingFormatter(
                "%(asctime)s %(levelname)s "
                + (f"[worker {worker}] " if worker is not None else "")
                + "%(name)s: %(message)s"
            )
        )
    else:
        raise ValueError(f"log format: expected one of {', '.join(LOG_FORMATS)}")
    return handler


def use_log_format(log_format: str, worker: int | None = None) -> None:
    """Replace the root logger's handlers with one of ``log_format``."""
    root = logging.getLogger()
    handler = log_handler(log_format, worker)
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)


def use_request_log(choice: str) -> None:
    """Which request lines are written (``ops.request_log``): ``all``, ``refused`` or ``none``.

    Raises:
        ValueError: an unknown choice.
    """
    if choice not in REQUEST_LOG_CHOICES:
        raise ValueError(f"request log: expected one of {', '.join(REQUEST_LOG_CHOICES)}")
    on = logging.NOTSET  # the root logger's level (INFO unless --log-level says otherwise)
    logging.getLogger(GRANTED_LOGGER).setLevel(on if choice == "all" else logging.WARNING)
    logging.getLogger(REFUSED_LOGGER).setLevel(on if choice != "none" else logging.WARNING)
