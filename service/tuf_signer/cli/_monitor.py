"""``tuf-signer audit monitor``: is every signature of a held key in a live repository logged?

Reads a TUF repository over HTTP(S) and holds each signature by a key
tuf-signer holds against the transparency log (``tuf_signer.audit._monitor``):
offline from the store (``--config``: only its ``[audit]`` table) or through a
running server (``--server``; the caller needs ``read-keys`` and ``read-audit``).

Exit status: 0 every signature of a held key is logged and proven against a
witnessed checkpoint (or pending within ``--max-pending``); 1 at least one
finding; 2 the check could not run (the repository, the log or an option).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from tuf_signer._text import printable
from tuf_signer.cli._verify import add_key_arguments
from tuf_signer.errors import RequestError, TufSignerError

if TYPE_CHECKING:
    from tuf_signer.audit._monitor import MonitorReport, ProofGetter, Reader, RecordFinder
    from tuf_signer.audit._witnessed import LogKeys

log = logging.getLogger("tuf_signer.cli.monitor")

FINDINGS, CANNOT_CHECK = 1, 2
_SCHEMES = ("http", "https")


def _bins(text: str) -> int | None:
    if text == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not 'all' or a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value <= 10**9:
        raise argparse.ArgumentTypeError("must be between 0 and 10**9 seconds")
    return value


def register(aus: Any) -> None:
    """Add ``monitor`` to the ``audit`` subparsers ``aus``."""
    from tuf_signer.cli._main import _add_client_args

    p = aus.add_parser(
        "monitor",
        help="check that every signature of a held key in a live TUF repository is logged",
        description="Fetch a TUF repository's metadata (roots, timestamp, the snapshot it "
        "names, targets and all or a sample of the delegated roles, as python-tuf does) and, "
        "for every signature by a key tuf-signer holds, find its granted sign record and "
        "verify the record's inclusion proof against a checkpoint signed by the log's key "
        "and cosigned by the witnesses. A signature by a held key that is not in the log "
        "was made outside the service. Exit 0: all logged; 1: findings; 2: could not check.",
    )
    p.add_argument(
        "--repository",
        required=True,
        metavar="URL",
        help="the metadata URL (where timestamp.json is), http or https",
    )
    p.add_argument(
        "--config", help="read the store offline (its [audit] table only); else ask --server"
    )
    _add_client_args(p)
    add_key_arguments(p, required=True)
    p.add_argument(
        "--bins",
        type=_bins,
        default=None,
        metavar="all|N",
        help="the delegated roles to check: all (default) or a random sample of N",
    )
    p.add_argument(
        "--max-pending",
        type=_seconds,
        default=3600.0,
        metavar="SECONDS",
        help="a logged signature not yet in a witnessed checkpoint is pending, and a "
        "finding once its record is older than this (default 3600)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object (for cron)")
    p.set_defaults(func=cmd_audit_monitor)


def cmd_audit_monitor(args: argparse.Namespace) -> int:
    """Run ``audit monitor``; 0 all logged, 1 findings, 2 could not check."""
    try:
        report = _run(args)
    except TufSignerError as e:
        if args.json:
            print(json.dumps({"ok": False, "error": e.reason}, sort_keys=True))
        print(f"error: {printable(e.reason)}", file=sys.stderr)
        return CANNOT_CHECK
    if args.json:
        print(json.dumps(report.to_json(), sort_keys=True))
    else:
        print(printable(report.summary()))
        for f in (*report.findings, *report.pending):
            seq = f" record {f.seq}" if f.seq is not None else ""
            print(printable(f"{f.kind.value}: {f.file}{seq}: {f.reason}"))
    return 0 if report.ok else FINDINGS


def _run(args: argparse.Namespace) -> MonitorReport:
    from tuf_signer.audit._monitor import check_signatures, read_repository
    from tuf_signer.config import AuditConfig

    offline = args.config is not None
    if offline and args.server is not None:
        raise RequestError("give --config (read the store offline) or --server, not both")
    if offline:
        from tuf_signer.config import load_audit_config

        audit = load_audit_config(args.config)
    else:
        audit = AuditConfig()
    keys = _keys(args, audit)
    if offline and audit.log is None:
        raise RequestError(f"{args.config}: audit.origin is not set: the transparency log is off")
    reader = http_reader(args.repository, args.timeout)
    files, unread, listed = read_repository(reader, sample=args.bins, base=_base(args.repository))
    with _log(args, audit, keys) as (held, find, prove, witnessed):
        return check_signatures(
            files,
            held=held,
            find=find,
            prove=prove,
            keys=keys,
            witnessed=witnessed,
            now=datetime.now(UTC),
            max_pending=timedelta(seconds=args.max_pending),
            unread=unread,
            roles_listed=listed,
        )


def _keys(args: argparse.Namespace, audit: Any) -> LogKeys:
    from tuf_signer.cli._verify import _keys

    keys = _keys(args, audit)
    assert keys is not None  # --vkey or --vkey-file is required
    return keys


# --- the log: offline (the store) or a server --------------------------------------------

_Log = tuple[frozenset[str], "RecordFinder", "ProofGetter", int]


@contextmanager
def _log(args: argparse.Namespace, audit: Any, keys: LogKeys) -> Iterator[_Log]:
    if args.config is not None:
        with _store_log(audit, keys) as found:
            yield found
    else:
        with _server_log(args, keys) as found:
            yield found


@contextmanager
def _store_log(audit: Any, keys: LogKeys) -> Iterator[_Log]:
    from tuf_signer.audit import open_audit_store, record_leaf, tlog_proof
    from tuf_signer.audit._monitor import witnessed_size

    store = open_audit_store(audit, create=False)
    try:
        held = frozenset(v.keyid for k in store.list_keys() for v in store.list_versions(k.name))
        newest = store.latest_witnessed(keys.origin, keys.quorum)
        size = witnessed_size(newest.note if newest is not None else None, keys)

        def find(digest: str) -> Sequence[tuple[int, bytes]]:
            found = store.find_records(digest, granted_signs_only=True)
            return [(r.seq, record_leaf(r)) for r in found]

        def prove(seq: int) -> bytes | None:
            return None if seq > size else tlog_proof(store, keys.origin, seq, size)

        yield held, find, prove, size
    finally:
        store.close()


@contextmanager
def _server_log(args: argparse.Namespace, keys: LogKeys) -> Iterator[_Log]:
    from tuf_signer.audit._monitor import witnessed_size
    from tuf_signer.cli._main import _client
    from tuf_signer.errors import RemoteError

    with _client(args) as client:
        held = frozenset(v["keyid"] for k in client.public_keys() for v in k["versions"])
        try:
            # The newest with enough cosignatures: the newest of all may not be cosigned
            # yet, and would make every recent record look unwitnessed.
            note: bytes | None = client.checkpoint(witnessed_by=keys.quorum).checkpoint
        except RemoteError as e:
            if e.code != "FAILED_PRECONDITION":  # none yet: nothing is witnessed
                raise
            note = None
        # Its cosignatures are verified here: if they lack the quorum, nothing counts.
        size = witnessed_size(note, keys)

        def find(digest: str) -> Sequence[tuple[int, bytes]]:
            found = client.find_records(digest, granted_signs_only=True)
            return [(r.seq, r.leaf) for r in found]

        def prove(seq: int) -> bytes | None:
            return None if seq > size else bytes(client.prove_inclusion(seq, size))

        yield held, find, prove, size


# --- the repository over HTTP --------------------------------------------------------------


def _base(url: str) -> str:
    """The metadata URL, ending in ``/``.

    Raises:
        RequestError: it is not an http(s) URL.
    """
    from urllib import parse

    parsed = parse.urlsplit(url)
    if parsed.scheme not in _SCHEMES or not parsed.netloc:
        raise RequestError(f"--repository: {printable(url)!r} is not an http(s) URL")
    return url if url.endswith("/") else url + "/"


def http_reader(base_url: str, timeout: float) -> Reader:
    """A ``Reader`` of files under ``base_url``, with python-tuf's urllib3 fetcher.

    ``timeout`` bounds the connection and every gap between bytes; the caller's
    ``max_length`` bounds the size. Errors name the URL.

    Raises:
        RequestError: ``base_url`` is not an http(s) URL.
    """
    from tuf.api import exceptions
    from tuf.ngclient.urllib3_fetcher import Urllib3Fetcher

    from tuf_signer.audit._monitor import MonitorError, NotFoundInRepository

    base = _base(base_url)
    # urllib3 retries a failed connection; its warnings are not the command's output.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    fetcher = Urllib3Fetcher(socket_timeout=max(1, round(timeout)), app_user_agent="tuf-signer")

    def read(name: str, max_length: int) -> bytes:
        url = base + name
        try:
            return fetcher.download_bytes(url, max_length)
        except exceptions.DownloadHTTPError as e:
            if e.status_code in (403, 404):
                raise NotFoundInRepository(f"{url}: HTTP {e.status_code}") from None
            raise MonitorError(f"{url}: HTTP {e.status_code}") from None
        except exceptions.DownloadLengthMismatchError:
            raise MonitorError(f"{url}: larger than {max_length} bytes") from None
        except exceptions.SlowRetrievalError as e:
            # urllib3's NewConnectionError is a ConnectTimeoutError: a refused
            # connection comes here too, and is no timeout.
            if _refused(e):
                raise MonitorError(f"{url}: cannot fetch: {_cause(e)}") from None
            raise MonitorError(f"{url}: no answer within {timeout:g} s") from None
        except exceptions.DownloadError as e:
            raise MonitorError(f"{url}: cannot fetch: {_cause(e)}") from None

    return read


def _chain(e: BaseException) -> list[BaseException]:
    """``e`` and its causes; urllib3 keeps a failed connection in a MaxRetryError's ``reason``."""
    found: list[BaseException] = []
    current: BaseException | None = e
    while current is not None and current not in found:
        found.append(current)
        reason = getattr(current, "reason", None)
        current = reason if isinstance(reason, BaseException) else current.__cause__
    return found


def _refused(e: BaseException) -> bool:
    import urllib3

    return any(isinstance(c, urllib3.exceptions.NewConnectionError) for c in _chain(e))


def _cause(e: BaseException) -> str:
    inner = _chain(e)[-1]
    return str(inner) or type(inner).__name__


__all__ = ["cmd_audit_monitor", "http_reader", "register"]
