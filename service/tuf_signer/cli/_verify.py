"""``tuf-signer audit verify``: check the store, and hold it against signed checkpoints.

Runs with only the store and the verifier keys: it reads the ``[audit]``
table of the config (``load_audit_config``), needs no ``[backends]`` and
opens no HSM. See ``tuf_signer.audit._witnessed`` for what each check proves.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuf_signer._text import printable
from tuf_signer.errors import AuditChainError, RequestError, TufSignerError

if TYPE_CHECKING:  # the rest is imported when the command runs, not when the CLI starts
    from tuf_signer.audit._note import VerifierKey
    from tuf_signer.audit._witnessed import Anchor, CheckedCheckpoint, LogKeys, LogReport
    from tuf_signer.config import AuditConfig

_MAX_FILE = 2_000_000  # a checkpoint note is at most 1 MB (audit/_note.py); a vkey far less


def add_key_arguments(p: argparse.ArgumentParser, *, required: bool) -> None:
    """``--vkey``/``--vkey-file``, ``--witness-vkey`` and ``--quorum``: the keys a check trusts."""
    vkey = p.add_mutually_exclusive_group(required=required)
    vkey.add_argument("--vkey", metavar="VKEY", help="the log's verifier key (name+id+base64)")
    vkey.add_argument("--vkey-file", metavar="FILE", help="a file holding the log's verifier key")
    p.add_argument(
        "--witness-vkey",
        action="append",
        default=[],
        metavar="VKEY",
        help="a witness's verifier key (repeatable; default: the config's [[audit.witnesses]])",
    )
    p.add_argument(
        "--quorum",
        type=int,
        metavar="N",
        help="witness cosignatures each checkpoint needs (default: every --witness-vkey given, "
        "else audit.witness_quorum)",
    )


def register(aus: Any) -> None:
    """Add ``verify`` to the ``audit`` subparsers ``aus``."""
    p = aus.add_parser(
        "verify",
        help="check the record, its Merkle tree and role states, against signed checkpoints",
        description="Re-hash the audit record and check its hash chain, its Merkle tree and "
        "the role states (a full run), or only the records added since a trusted checkpoint "
        "(--since). With the log's verifier key, the store's newest checkpoint and every "
        "--checkpoint must verify, and the store must be a consistent extension of each: an "
        "older copy, a cut tail, an edit or a fork fails, naming what is wrong. Needs only "
        "the [audit] table of the config: no backend, no HSM.",
    )
    p.add_argument("--config", required=True, help="config file; only its [audit] table is read")
    add_key_arguments(p, required=False)
    p.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="FILE",
        help="an earlier checkpoint kept elsewhere (repeatable): the store must extend it",
    )
    p.add_argument(
        "--from-witnesses",
        action="store_true",
        help="also fetch each configured witness's latest checkpoint and hold the store to it",
    )
    p.add_argument(
        "--since",
        metavar="FILE",
        help="a trusted checkpoint: verify only the records added after it (live store ok)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_audit_verify)


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Run ``audit verify``; 0 when everything verified, 1 with ``FAILED: <reason>``."""
    from tuf_signer.audit import open_audit_store
    from tuf_signer.audit._witnessed import verify_log
    from tuf_signer.config import load_audit_config

    audit = load_audit_config(args.config)
    keys = _keys(args, audit)
    if keys is None and (args.checkpoint or args.since or args.from_witnesses):
        raise RequestError(
            "--checkpoint, --since and --from-witnesses need --vkey or --vkey-file "
            "(the log's verifier key, from `tuf-signer audit verifier-key`)"
        )
    anchors = [_file_anchor(path, "--checkpoint") for path in args.checkpoint]
    since = _file_anchor(args.since, "--since") if args.since else None
    try:
        if args.from_witnesses:
            assert keys is not None
            given = keys.witnesses if args.witness_vkey else None
            anchors += _witness_anchors(audit, keys.origin, given)
        store = open_audit_store(audit, create=False)
        try:
            # A quorum the auditor asked for must be met; the config's default is advice.
            asked = bool(args.witness_vkey) or args.quorum is not None
            report = verify_log(store, keys, anchors=anchors, since=since, require_witnessed=asked)
        finally:
            store.close()
    except AuditChainError as e:
        if args.json:
            kind = str(getattr(e, "kind", "record"))
            source = getattr(e, "source", None)
            _print({"ok": False, "failure": kind, "source": source, "reason": e.reason})
        print(f"FAILED: {printable(e.reason)}", file=sys.stderr)
        return 1
    if args.json:
        _print(_report_json(report))
    else:
        print(_report_line(report))
    return 0


# --- inputs ---------------------------------------------------------------------------------


def _read(path: str, what: str) -> bytes:
    try:
        with Path(path).open("rb") as f:
            data = f.read(_MAX_FILE + 1)
    except OSError as e:
        raise RequestError(f"{what}: cannot read {path}: {e.strerror}") from e
    if len(data) > _MAX_FILE:
        raise RequestError(f"{what}: {path} is larger than {_MAX_FILE} bytes")
    return data


def _parse_vkey(text: str, what: str) -> VerifierKey:
    from tuf_signer.audit._note import NoteError, parse_verifier_key

    try:
        return parse_verifier_key(text.strip())
    except NoteError as e:
        raise RequestError(f"{what}: {e.reason}") from None


def _keys(args: argparse.Namespace, audit: AuditConfig) -> LogKeys | None:
    """The trusted keys from the options, with the config's witnesses as the default."""
    from tuf_signer.audit._witnessed import LogKeys

    if args.vkey is not None:
        log_key = _parse_vkey(args.vkey, "--vkey")
    elif args.vkey_file is not None:
        try:
            text = _read(args.vkey_file, "--vkey-file").decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError(f"--vkey-file: {args.vkey_file} is not UTF-8 text") from None
        log_key = _parse_vkey(text, "--vkey-file")
    else:
        if args.witness_vkey or args.quorum is not None:
            raise RequestError("--witness-vkey and --quorum need --vkey or --vkey-file")
        return None
    log = audit.log
    if log is not None and log.origin != log_key.name:
        raise RequestError(
            f"--vkey is the key of {printable(log_key.name)!r} but audit.origin is "
            f"{printable(log.origin)!r}"
        )
    if args.witness_vkey:
        witnesses = tuple(_parse_vkey(v, "--witness-vkey") for v in args.witness_vkey)
        quorum = len(witnesses)
    elif log is not None:
        witnesses = tuple(_parse_vkey(w.vkey, f"audit.witnesses ({w.name})") for w in log.witnesses)
        quorum = log.witness_quorum
    else:
        witnesses, quorum = (), 0
    if args.quorum is not None:
        quorum = args.quorum
    try:
        return LogKeys(log_key, witnesses, quorum)
    except RequestError as e:
        raise RequestError(f"--witness-vkey / --quorum: {e.reason}") from None


def _file_anchor(path: str, what: str) -> Anchor:
    from tuf_signer.audit._witnessed import Anchor

    return Anchor(f"checkpoint {path}", _read(path, what))


def _witness_anchors(
    audit: AuditConfig, origin: str, given: tuple[VerifierKey, ...] | None = None
) -> list[Anchor]:
    """Each configured witness's latest checkpoint of ``origin`` (its monitoring endpoint).

    The config says where each witness is; with ``given`` (the auditor's
    ``--witness-vkey`` keys) only those keys are trusted, so a config copied
    from a compromised host cannot name a witness of its own making.

    Raises:
        RequestError: the config lists no witness, or (with ``given``) one
            whose key is not among them.
        AuditChainError: a witness cannot be reached, refuses, or has cosigned
            nothing of this log: a check asked for could not be made.
    """
    from tuf_signer.audit._witnessed import Anchor
    from tuf_signer.witness import fetch_checkpoint

    log = audit.log
    if log is None or not log.witnesses:
        raise RequestError("--from-witnesses: the config lists no [[audit.witnesses]]")
    anchors = []
    for w in log.witnesses:
        source = f"witness {w.name} ({w.url})"
        key = _parse_vkey(w.vkey, f"audit.witnesses ({w.name})")
        if given is not None and key not in given:
            raise RequestError(
                f"--from-witnesses: the config's {printable(source)} has the key "
                f"{printable(key.text())}, which is not among the --witness-vkey keys given"
            )
        try:
            note = fetch_checkpoint(w.url, origin, log.witness_timeout)
        except TufSignerError as e:
            raise AuditChainError(f"{source}: cannot fetch its checkpoint: {e.reason}") from None
        if note is None:
            raise AuditChainError(f"{source} has cosigned no checkpoint of {origin!r}")
        anchors.append(Anchor(source, note, key))
    return anchors


# --- output ---------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    from tuf_signer.audit._note import b64encode

    return b64encode(data)


def _checkpoint_text(c: CheckedCheckpoint) -> str:
    cosigned = f", cosigned by {', '.join(c.cosigners)}" if c.cosigners else ""
    return f"{c.source} (size {c.size}{cosigned})"


def _report_line(report: LogReport) -> str:
    """One line: the sizes and every checkpoint checked (all escaped)."""
    if report.store is not None:
        s = report.store
        parts = [
            f"OK: {s.records} records, head seq {s.head_seq} hash {s.head_hash}, "
            f"{s.role_states} role states cross-checked, tree root {_b64(report.root_hash)}"
        ]
    else:
        assert report.since is not None
        first = report.since.size + 1
        parts = [
            f"OK: {report.new_records} new records ({first}..{report.tree_size}) re-hashed on "
            f"{_checkpoint_text(report.since)}, tree root {_b64(report.root_hash)} "
            f"at size {report.tree_size}"
        ]
    if report.checkpoints:
        parts.append("held against " + ", ".join(_checkpoint_text(c) for c in report.checkpoints))
    parts += report.notes
    return printable("; ".join(parts))


def _checkpoint_json(c: CheckedCheckpoint) -> dict[str, Any]:
    return {
        "source": c.source,
        "size": c.size,
        "root_hash": _b64(c.root_hash),
        "cosigners": list(c.cosigners),
    }


def _report_json(report: LogReport) -> dict[str, Any]:
    s = report.store
    return {
        "ok": True,
        "mode": "full" if s is not None else "incremental",
        "tree_size": report.tree_size,
        "root_hash": _b64(report.root_hash),
        "records_read": report.new_records,
        "head_hash": s.head_hash if s is not None else None,
        "role_states": s.role_states if s is not None else None,
        "since": _checkpoint_json(report.since) if report.since is not None else None,
        "checkpoints": [_checkpoint_json(c) for c in report.checkpoints],
        "checkpoints_checked": report.checkpoints_checked,
        "notes": list(report.notes),
    }


def _print(data: dict[str, Any]) -> None:
    print(json.dumps(data, sort_keys=True))
