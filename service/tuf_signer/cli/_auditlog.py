"""``tuf-signer audit checkpoint|verifier-key|prove|consistency``: the transparency log's proofs.

Each command reads either the store offline (``--config FILE``; ``verifier-key``
also starts the audit key's backend, and no other) or a running server
(``--server`` and the TLS options of every client command; the caller needs
``read-audit``). Each prints exactly one artefact on stdout and nothing else,
so that it can go to a file and to any independent verifier:

- ``checkpoint [--size N]``: the signed checkpoint note (c2sp.org/tlog-checkpoint)
  with the witnesses' cosignature lines, verbatim;
- ``verifier-key``: the log's verifier key (c2sp.org/signed-note), one line;
- ``prove --seq N [--size N]``: the record's c2sp.org/tlog-proof@v1 text;
- ``consistency --from SIZE [--to SIZE]``: the RFC 6962 consistency proof, one
  base64 hash per line (the proof lines of c2sp.org/tlog-witness), an empty
  line, then the checkpoint note of the larger size (``format_consistency``).

What a server sends is parsed strictly before it is printed: a malformed text
is refused, never written to the terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from tuf_signer.errors import ConfigError, RequestError

if TYPE_CHECKING:
    from tuf_signer.audit import AuditStore
    from tuf_signer.config import Config, LogConfig

T = TypeVar("T")

_NEWEST = "default, or 0: the newest checkpoint"
_FORMAT = (
    "Prints the proof hashes base64, one per line (the proof lines of c2sp.org/tlog-witness's "
    "add-checkpoint), then an empty line, then the checkpoint note of the larger size "
    "verbatim, with its cosignatures. With --from equal to that size there is no hash: "
    "the output starts with the empty line."
)


def register(aus: Any) -> None:
    """Add the transparency-log subcommands to the ``audit`` subparsers ``aus``."""
    from tuf_signer.cli._main import _non_negative

    p = aus.add_parser(
        "checkpoint",
        help="print the log's signed checkpoint, with its cosignatures",
        description="Print the signed checkpoint note (c2sp.org/tlog-checkpoint) exactly "
        "as stored, with the witnesses' cosignature lines, and nothing else.",
    )
    _source_args(p)
    p.add_argument(
        "--size", type=_non_negative, default=0, metavar="SIZE", help=f"a tree size ({_NEWEST})"
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="through a server: have it sign a checkpoint of its tree now, then print that",
    )
    p.set_defaults(func=cmd_checkpoint)

    p = aus.add_parser(
        "verifier-key",
        help="print the log's verifier key (checks checkpoints)",
        description="Print the audit key's verifier key line (c2sp.org/signed-note). "
        "Offline it is read from the audit key's backend (the HSM); from a server it is "
        "the server's word: compare it with a copy you trust.",
    )
    _source_args(p)
    p.set_defaults(func=cmd_verifier_key)

    p = aus.add_parser(
        "prove",
        help="print a record's inclusion proof (c2sp.org/tlog-proof@v1)",
        description="Print the inclusion proof of record --seq against a signed checkpoint, "
        "as a c2sp.org/tlog-proof@v1 text, and nothing else. The record's leaf is its "
        "line of `tuf-signer audit export`.",
    )
    _source_args(p)
    p.add_argument(
        "--seq", type=_non_negative, required=True, metavar="SEQ", help="the record (from 1)"
    )
    p.add_argument(
        "--size",
        type=_non_negative,
        default=0,
        metavar="SIZE",
        help=f"a checkpoint's size ({_NEWEST})",
    )
    p.set_defaults(func=cmd_prove)

    p = aus.add_parser(
        "consistency",
        help="print the consistency proof from an earlier tree size to a checkpoint",
        description="Print the RFC 6962 consistency proof from tree size --from to a "
        "signed checkpoint. " + _FORMAT,
    )
    _source_args(p)
    p.add_argument(
        "--from",
        dest="from_size",
        type=_non_negative,
        required=True,
        metavar="SIZE",
        help="the earlier tree size, e.g. of a checkpoint you hold (from 1)",
    )
    p.add_argument(
        "--to",
        dest="to_size",
        type=_non_negative,
        default=0,
        metavar="SIZE",
        help=f"a checkpoint's size ({_NEWEST})",
    )
    p.set_defaults(func=cmd_consistency)


def _source_args(p: argparse.ArgumentParser) -> None:
    from tuf_signer.cli._main import _add_client_args

    p.add_argument("--config", help="read the store offline (TOML config); else ask --server")
    _add_client_args(p)


# --- commands ----------------------------------------------------------------------------


def cmd_checkpoint(args: argparse.Namespace) -> int:
    from tuf_signer.audit import find_checkpoint

    if _offline(args):
        if args.fresh:
            raise RequestError("--fresh: needs a running server (--server), which holds the key")
        note = _with_store(
            args, lambda store, origin: find_checkpoint(store, origin, args.size or None).note
        )
    else:
        with _client(args) as client:
            note = client.checkpoint(args.size, fresh=args.fresh).checkpoint
        _parse_note(note)
    _write(note)
    return 0


def cmd_verifier_key(args: argparse.Namespace) -> int:
    if _offline(args):
        text = _offline_verifier_key(args.config)
    else:
        from tuf_signer.audit._note import NoteError, parse_verifier_key

        with _client(args) as client:
            text = client.checkpoint().verifier_key
        try:
            parsed = parse_verifier_key(text)
        except NoteError as e:
            raise RequestError(f"the server sent a malformed verifier key: {e.reason}") from None
        if parsed.text() != text:
            raise RequestError("the server sent a verifier key that is not in canonical form")
    _write(text.encode() + b"\n")
    return 0


def cmd_prove(args: argparse.Namespace) -> int:
    from tuf_signer.audit import tlog_proof

    if _offline(args):
        proof = _with_store(
            args, lambda store, origin: tlog_proof(store, origin, args.seq, args.size or None)
        )
    else:
        from tuf_signer.audit._checkpoint import parse_tlog_proof
        from tuf_signer.audit._note import NoteError

        with _client(args) as client:
            proof = client.prove_inclusion(args.seq, args.size)
        try:
            parse_tlog_proof(proof)
        except NoteError as e:
            raise RequestError(f"the server sent a malformed proof: {e.reason}") from None
    _write(proof)
    return 0


def cmd_consistency(args: argparse.Namespace) -> int:
    from tuf_signer.audit import Consistency, consistency, format_consistency, parse_consistency
    from tuf_signer.audit._note import NoteError

    if _offline(args):
        proof = _with_store(
            args,
            lambda store, origin: consistency(store, origin, args.from_size, args.to_size or None),
        )
    else:
        with _client(args) as client:
            got = client.prove_consistency(args.from_size, args.to_size)
        proof = Consistency(got.hashes, got.checkpoint)
        try:
            parse_consistency(format_consistency(proof))
        except NoteError as e:
            raise RequestError(f"the server sent a malformed proof: {e.reason}") from None
    _write(format_consistency(proof))
    return 0


# --- offline and remote ------------------------------------------------------------------


def _offline(args: argparse.Namespace) -> bool:
    """True for ``--config`` (the store), False for a server.

    Raises:
        RequestError: both were named.
    """
    if args.config is None:
        return False
    if args.server is not None:
        raise RequestError("give --config (read the store offline) or --server, not both")
    return True


def _log_config(path: str) -> tuple[Config, LogConfig]:
    """The config at ``path`` and its ``[audit]`` log settings.

    Raises:
        ConfigError: the config is invalid, or the log is off in it.
    """
    from tuf_signer.config import load_config

    config = load_config(path)
    if config.audit.log is None:
        raise ConfigError(
            f"{path}: audit.origin and audit.key are not set: the transparency log is off"
        )
    return config, config.audit.log


def _with_store(args: argparse.Namespace, read: Callable[[AuditStore, str], T]) -> T:
    """``read(store, origin)`` over the store of ``--config``, closed after."""
    from tuf_signer.cli._main import _open_store

    _, log = _log_config(args.config)
    store = _open_store(args.config)
    try:
        return read(store, log.origin)
    finally:
        store.close()


def _offline_verifier_key(path: str) -> str:
    """The audit key's verifier key, read from its backend (only that one is started)."""
    from tuf_signer.server._auditkey import audit_verifier_key
    from tuf_signer.server._wiring import start_backends

    config, log = _log_config(path)
    only = replace(config, backends={log.key_backend: config.backends[log.key_backend]})

    async def read() -> str:
        backends = await start_backends(only)
        try:
            return (await audit_verifier_key(backends[log.key_backend], log)).text()
        finally:
            for backend in backends.values():
                await backend.close()

    return asyncio.run(read())


def _client(args: argparse.Namespace) -> Any:
    from tuf_signer.cli._main import _client

    return _client(args)


def _parse_note(note: bytes) -> None:
    """Refuse a checkpoint note from a server unless it parses (before it is printed)."""
    from tuf_signer.audit._checkpoint import note_checkpoint
    from tuf_signer.audit._note import NoteError

    try:
        note_checkpoint(note)
    except NoteError as e:
        raise RequestError(f"the server sent a malformed checkpoint: {e.reason}") from None


def _write(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
