"""One line in the operator's log per request decision on the record (issue 15).

Each line carries the request fields (``_logs.REQUEST_FIELDS``) and its
record's seq: refusals on logger ``tuf_signer.requests.refused`` (written by
the recorder), grants on ``tuf_signer.requests.granted`` (reported by their
callers: ``log_granted``, ``log_batch``). ``ops.request_log`` picks which are
written: the refusals by default. On the signing path, so each function costs
one ``isEnabledFor`` when its logger is off.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

from tuf_signer._logs import GRANTED_LOGGER, REFUSED_LOGGER
from tuf_signer.audit import Entry
from tuf_signer.errors import TufSignerError, shown
from tuf_signer.model import AuditEvent, recordable

granted_log = logging.getLogger(GRANTED_LOGGER)
refused_log = logging.getLogger(REFUSED_LOGGER)


def log_granted(event: AuditEvent, seq: int, role: str = "", version: int = 0) -> None:
    """The request line of a granted request: ``event``, as its record ``seq`` says.

    Args:
        event: the request's record (its identity, operation and key).
        seq: the record's seq.
        role: the role as resolved (a Sign may name none), else ``event.role``.
        version: the metadata version signed (0: not a Sign).
    """
    if not granted_log.isEnabledFor(logging.INFO):  # the signing hot path: ~free when off
        return
    role = role or event.role
    granted_log.info(
        "%s OK by %s: key %s, role %s%s, record %d",
        event.operation,
        event.identity,
        _field(event.key_name),
        _field(role),
        f" version {version}" if version else "",
        seq,
        extra=_request_fields(event, role, "OK", seq),
    )


def _field(value: str) -> str:
    """A client's string in a text line, quoted: a role ``x, record 9`` cannot fake a field."""
    return shown(value) if value else "-"


def _request_fields(event: AuditEvent, role: str, status: str, seq: int) -> dict[str, object]:
    """The JSON line's request fields that are known (an empty string or seq 0 is left out)."""
    fields: dict[str, object] = {
        "operation": event.operation,
        "identity": event.identity,
        "key": event.key_name,
        "role": role,
        "status": status,
        "audit_seq": seq,
    }
    return {name: value for name, value in fields.items() if value not in ("", 0, None)}


def log_refused(event: AuditEvent, error: TufSignerError, seq: int = 0) -> None:
    """The request line of a refusal on the record (``seq``; 0 when nothing was recorded)."""
    if not refused_log.isEnabledFor(logging.INFO):
        return
    extra = _request_fields(event, event.role, error.code, seq)
    refused_log.info(
        "%s refused %s by %s: key %s, role %s, %s: %s",
        event.operation,
        error.code,
        event.identity,
        _field(event.key_name),
        _field(event.role),
        f"record {seq}" if seq else "not recorded",
        recordable(error.reason, 512),
        extra=extra,
    )


def log_batch(
    batch: AuditEvent, entries: Sequence[Entry], results: Sequence[object], seqs: Sequence[int]
) -> None:
    """The one request line of a SignBatch: its items by status and their records.

    A refusal logger's line when any item was refused (so that ``ops.request_log
    = "refused"`` shows it), else a grant's.

    Args:
        batch: the call's event (identity, operation ``sign-batch``).
        entries: the items' records, in request order.
        results: each item's answer: a ``TufSignerError`` when refused.
        seqs: the items' record seqs (one transaction: consecutive).
    """
    if not seqs or not (
        granted_log.isEnabledFor(logging.INFO) or refused_log.isEnabledFor(logging.INFO)
    ):
        return  # the signing path: no tally of the items for a line nobody writes
    statuses = Counter(r.code if isinstance(r, TufSignerError) else "OK" for r in results)
    logger = granted_log if set(statuses) == {"OK"} else refused_log
    if not logger.isEnabledFor(logging.INFO):
        return
    keys = sorted({e.event.key_name for e in entries})
    extra: dict[str, object] = {
        "operation": batch.operation,
        "identity": batch.identity,
        "status": "OK",
        "statuses": dict(statuses),
        "first_audit_seq": seqs[0],
        "last_audit_seq": seqs[-1],
    }
    if len(keys) == 1:
        extra["key"] = keys[0]
    logger.info(
        "%s by %s: %d items, key %s: %s, records %d..%d",
        batch.operation,
        batch.identity,
        len(results),
        _field(keys[0]) if len(keys) == 1 else f"({len(keys)} keys)",
        ", ".join(f"{name} {n}" for name, n in sorted(statuses.items())),
        seqs[0],
        seqs[-1],
        extra=extra,
    )
