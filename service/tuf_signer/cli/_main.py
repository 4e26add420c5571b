"""The ``tuf-signer`` command.

Client commands (``sign``, ``keys``, ``role-state``) talk to a running server,
so what they do is on the record; ``audit`` commands read the store offline.
Only ``TufSignerError`` is caught here: it explains itself to the user.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tuf_signer.errors import RemoteError, RequestError, TufSignerError

log = logging.getLogger("tuf_signer.cli")


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def _client(args: argparse.Namespace) -> Any:
    from tuf_signer.client import Client

    return Client(args.server, ca=args.ca, cert=args.cert, key=args.tls_key, timeout=args.timeout)


def _read_input(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise RequestError(f"cannot read {path}: {e.strerror}") from e


# --- commands -------------------------------------------------------------------


def cmd_dev_init(args: argparse.Namespace) -> int:
    from tuf_signer.cli._devinit import dev_init

    print(dev_init(Path(args.dir), listen=args.listen))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from tuf_signer.config import check_listen, check_secrets, load_config
    from tuf_signer.server import serve
    from tuf_signer.server._workers import supervise, worker_index

    config = load_config(args.config)
    if config.server.workers > 1 and worker_index() is None:
        server = replace(config.server, listen=args.listen or config.server.listen)
        check_listen(server)
        check_secrets(config)
        return supervise(config.path, server.workers, args.listen, server.drain_seconds)
    asyncio.run(serve(config, listen=args.listen))
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    data = _read_input(args.file)
    metadata: dict[str, Any] | None = None
    if args.metadata:
        from securesystemslib.formats import encode_canonical

        try:
            metadata = json.loads(data)
            payload = str(encode_canonical(metadata["signed"])).encode("utf-8")
        except (ValueError, KeyError, TypeError) as e:
            raise RequestError(f"{args.file} is not TUF metadata with a 'signed' object") from e
    else:
        payload = data
    with _client(args) as client:
        result = client.sign(args.key, payload, role=args.role, expected_keyid=args.expected_keyid)
    if metadata is not None and args.in_place:
        sigs = [s for s in metadata.get("signatures", []) if s.get("keyid") != result.keyid]
        metadata["signatures"] = [*sigs, result.signature_dict()]
        Path(args.file).write_text(json.dumps(metadata, indent=1, sort_keys=True) + "\n")
    out = result.signature_dict()
    if args.verbose:
        out = {**result.__dict__}
    _print_json(out)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        keys = client.list_keys() if not args.public else client.public_keys()
    if args.json:
        _print_json(keys)
        return 0
    print(f"{'KEY':<16} {'VER':>3} {'STATE':<8} {'ALGORITHM':<13} KEYID")
    for key in keys:
        for v in key["versions"]:
            print(
                f"{key['name']:<16} {v['version']:>3} {v['state']:<8} "
                f"{key['algorithm']:<13} {v['keyid']}"
            )
    return 0


def _parse_role(text: str) -> tuple[str, int]:
    pattern, _, seconds = text.partition(":")
    if not seconds:
        return pattern, 86400
    if not seconds.isdigit():
        raise argparse.ArgumentTypeError(f"expected PATTERN[:SECONDS], got {text!r}")
    return pattern, int(seconds)


def cmd_keys_create(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_json(
            client.create_key(
                args.name,
                args.role,
                algorithm=args.algorithm,
                backend=args.backend,
                activate=args.activate,
            )
        )
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_json(client.rotate_key(args.name))
    return 0


def cmd_keys_activate(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_json(client.activate(args.name, args.version, args.expected_keyid))
    return 0


def cmd_keys_retire(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_json(client.retire(args.name, args.version))
    return 0


def cmd_role_state(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_json(client.role_state(args.key, args.role))
    return 0


def _open_store(config_path: str) -> Any:
    from tuf_signer.config import load_config, open_audit_store

    return open_audit_store(load_config(config_path).audit, create=False)


def _record_json(record: Any) -> dict[str, Any]:
    from tuf_signer.audit import event_to_dict

    return {
        "seq": record.seq,
        "prev_hash": record.prev_hash,
        "hash": record.hash,
        "event": event_to_dict(record.event),
    }


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from tuf_signer.audit import verify_store
    from tuf_signer.errors import AuditChainError

    store = _open_store(args.config)
    try:
        report = verify_store(store)
    except AuditChainError as e:
        print(f"FAILED: {e.reason}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(
        f"OK: {report.records} records, head seq {report.head_seq} hash {report.head_hash}, "
        f"{report.role_states} role states cross-checked"
    )
    return 0


def _format_record(record: Any) -> str:
    e = record.event
    what = f"{e.key_name}" + (f" v{e.key_version}" if e.key_version else "")
    if e.role:
        what += f" role={e.role} version={e.metadata_version}"
    reason = f" ({e.reason})" if e.reason else ""
    return (
        f"{record.seq:>6} {e.time} {e.identity:<12} {e.operation:<20} "
        f"{e.outcome.value:<8} {e.status:<19} {what}{reason}"
    )


def cmd_audit_tail(args: argparse.Namespace) -> int:
    store = _open_store(args.config)
    try:
        head, _ = store.head()
        start = max(1, head - args.lines + 1)
        while True:
            for record in store.records(start):
                print(json.dumps(_record_json(record)) if args.json else _format_record(record))
                start = record.seq + 1
            if not args.follow:
                return 0
            sys.stdout.flush()
            time.sleep(1.0)
    finally:
        store.close()


def cmd_audit_export(args: argparse.Namespace) -> int:
    store = _open_store(args.config)
    try:
        for record in store.records(args.start):
            print(json.dumps(_record_json(record), sort_keys=True))
    finally:
        store.close()
    return 0


def cmd_dev_payload(args: argparse.Namespace) -> int:
    """Print a minimal canonical timestamp/snapshot payload (for trying the service)."""
    from securesystemslib.formats import encode_canonical

    expires = (datetime.now(UTC) + timedelta(seconds=args.expires_in)).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    meta: dict[str, Any]
    if args.type == "timestamp":
        meta = {"snapshot.json": {"version": args.version}}
    else:
        meta = {"targets.json": {"version": args.version}}
    signed = {
        "_type": args.type,
        "spec_version": "1.0.31",
        "version": args.version,
        "expires": expires,
        "meta": meta,
    }
    sys.stdout.write(str(encode_canonical(signed)))
    return 0


# --- parser -----------------------------------------------------------------------


def _add_client_args(p: argparse.ArgumentParser, key_flag: bool = True) -> None:
    """Server and mutual-TLS options of every client command.

    ``--key`` is the client's TLS private key, except on commands where it
    already names a signing key (``sign``, ``role-state``): there the TLS key
    is ``--tls-key`` (accepted everywhere).
    """
    p.add_argument("--server", help="HOST:PORT (default: $TUF_SIGNER_SERVER or 127.0.0.1:50051)")
    p.add_argument("--ca", help="CA certificate of the server (default: $TUF_SIGNER_CA)")
    p.add_argument("--cert", help="client certificate (default: $TUF_SIGNER_CERT)")
    flags = ("--key", "--tls-key") if key_flag else ("--tls-key",)
    p.add_argument(*flags, dest="tls_key", help="client private key (default: $TUF_SIGNER_KEY)")
    p.add_argument("--timeout", type=float, default=30.0, help="per-call deadline, seconds")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for ``tuf-signer``."""
    parser = argparse.ArgumentParser(
        prog="tuf-signer",
        description="Sign TUF metadata with online keys kept in an HSM, on the record.",
    )
    parser.add_argument("-v", "--log-level", default="INFO", help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("dev-init", help="create a SoftHSM token, an 'online' key and a config")
    p.add_argument("dir", help="directory to create (e.g. .dev)")
    p.add_argument("--listen", default="127.0.0.1:50051", help="HOST:PORT for the dev server")
    p.set_defaults(func=cmd_dev_init)

    p = sub.add_parser("serve", help="run the signer")
    p.add_argument("--config", required=True, help="TOML config file")
    p.add_argument("--listen", help="HOST:PORT, overrides server.listen")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("sign", help="sign a canonical-JSON TUF 'signed' payload")
    _add_client_args(p, key_flag=False)
    p.add_argument("--key", required=True, help="key name")
    p.add_argument("--role", help="role name (optional for timestamp and snapshot)")
    p.add_argument("--expected-keyid", default="", help="refuse unless this keyid is ACTIVE")
    p.add_argument(
        "--metadata",
        action="store_true",
        help="FILE is a whole TUF metadata file; sign its canonical 'signed' object",
    )
    p.add_argument(
        "--in-place", action="store_true", help="with --metadata: add the signature to FILE"
    )
    p.add_argument("--verbose", action="store_true", help="also print version and audit seq")
    p.add_argument("file", help="payload file, or - for standard input")
    p.set_defaults(func=cmd_sign)

    keys = sub.add_parser("keys", help="list, create, rotate, activate, retire keys")
    ks = keys.add_subparsers(dest="keys_command", required=True)
    p = ks.add_parser("list", help="every key version with its state")
    _add_client_args(p)
    p.add_argument("--json", action="store_true", help="print JSON with TUF key dicts")
    p.add_argument("--public", action="store_true", help="use Signer.GetPublicKeys (read-only)")
    p.set_defaults(func=cmd_keys_list)
    p = ks.add_parser("create", help="create a key in the HSM with a role policy")
    _add_client_args(p)
    p.add_argument("name")
    p.add_argument(
        "--role",
        action="append",
        type=_parse_role,
        required=True,
        metavar="PATTERN[:SECONDS]",
        help="allowed role name or glob, with its maximum validity (default 86400 s)",
    )
    p.add_argument("--algorithm", default="ed25519", help="ed25519, ecdsa-p256 or rsa-3072-pss")
    p.add_argument("--backend", default="", help="backend name (default: keys.default_backend)")
    p.add_argument("--activate", action="store_true", help="make version 1 ACTIVE at once")
    p.set_defaults(func=cmd_keys_create)
    p = ks.add_parser("rotate", help="create a new PENDING version; prints its public key")
    _add_client_args(p)
    p.add_argument("name")
    p.set_defaults(func=cmd_keys_rotate)
    p = ks.add_parser("activate", help="make a version ACTIVE (the old one is RETIRED)")
    _add_client_args(p)
    p.add_argument("name")
    p.add_argument("version", type=int)
    p.add_argument("--expected-keyid", default="", help="refuse unless the version has it")
    p.set_defaults(func=cmd_keys_activate)
    p = ks.add_parser("retire", help="retire a version for good")
    _add_client_args(p)
    p.add_argument("name")
    p.add_argument("version", type=int)
    p.set_defaults(func=cmd_keys_retire)

    p = sub.add_parser("role-state", help="highest version signed per (key, role)")
    _add_client_args(p, key_flag=False)
    p.add_argument("--key", default="")
    p.add_argument("--role", default="")
    p.set_defaults(func=cmd_role_state)

    audit = sub.add_parser("audit", help="verify, tail or export the audit log (offline)")
    aus = audit.add_subparsers(dest="audit_command", required=True)
    p = aus.add_parser("verify", help="check the hash chain and the role state")
    p.add_argument("--config", required=True)
    p.set_defaults(func=cmd_audit_verify)
    p = aus.add_parser("tail", help="show the last records")
    p.add_argument("--config", required=True)
    p.add_argument("-n", "--lines", type=int, default=20)
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_audit_tail)
    p = aus.add_parser("export", help="every record as JSON lines")
    p.add_argument("--config", required=True)
    p.add_argument("--start", type=int, default=1, help="first seq")
    p.set_defaults(func=cmd_audit_export)

    p = sub.add_parser("dev-payload", help="print a sample canonical payload to try signing")
    p.add_argument("type", choices=["timestamp", "snapshot"])
    p.add_argument("--version", type=int, default=1)
    p.add_argument("--expires-in", type=int, default=3600, help="seconds from now")
    p.set_defaults(func=cmd_dev_payload)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tuf-signer`` console script."""
    args = build_parser().parse_args(argv)
    worker = os.environ.get("TUF_SIGNER_WORKER")
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s "
        + (f"[worker {worker}] " if worker else "")
        + "%(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args))
    except RemoteError as e:
        print(f"refused: {e.code}: {e.reason}", file=sys.stderr)
        return 1
    except TufSignerError as e:
        print(f"error: {e.reason}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
