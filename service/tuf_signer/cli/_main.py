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
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tuf_signer._logs import LOG_FORMATS, log_handler, use_log_format, use_request_log
from tuf_signer._text import printable
from tuf_signer.cli import _auditlog, _migrate, _monitor, _verify, _witness
from tuf_signer.errors import RemoteError, RequestError, TufSignerError

log = logging.getLogger("tuf_signer.cli")


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= 2**63 - 1:
        raise argparse.ArgumentTypeError("must be between 0 and 2**63-1")
    return value


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
    from tuf_signer.cli._devinit import DEFAULT_WITNESS_LISTEN, dev_init
    from tuf_signer.config import DEFAULT_LISTEN

    listen = DEFAULT_LISTEN if args.listen is None else args.listen
    witness = DEFAULT_WITNESS_LISTEN if args.witness_listen is None else args.witness_listen
    ops = args.ops_listen
    print(dev_init(Path(args.dir), listen=listen, witness_listen=witness, ops_listen=ops))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from tuf_signer.config import check_listen, check_secrets, load_config
    from tuf_signer.server import serve
    from tuf_signer.server._workers import secret_env_names, supervise, worker_index

    config = load_config(args.config)
    if args.log_format is None and config.ops.log_format != "text":
        use_log_format(config.ops.log_format, worker_index())  # ``[ops] log_format``
    use_request_log(config.ops.request_log)  # ``[ops] request_log``
    _warn_without_native_check()
    if config.server.workers > 1 and worker_index() is None:
        server = replace(config.server, listen=args.listen or config.server.listen)
        check_listen(server)
        check_secrets(config)
        return supervise(
            config.path,
            server.workers,
            args.listen,
            server.drain_seconds,
            secret_env=secret_env_names(config),
            address=server.listen,
            ops_address=config.ops.listen or None,
            worker_args=["--log-level", args.log_level]
            + (["--log-format", args.log_format] if args.log_format else []),
        )
    asyncio.run(serve(config, listen=args.listen))
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    if args.in_place and not args.metadata:
        # A bare payload has no `signatures` list to add to: writing the file would
        # replace the payload with something else, so refuse before signing.
        raise RequestError(
            "--in-place needs --metadata: only a whole TUF metadata file has a "
            "'signatures' list to add the signature to"
        )
    if args.in_place and args.file == "-":
        raise RequestError("--in-place needs a FILE, not standard input (-)")
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
    # Names and states come from the server: escaped, like every text output.
    print(f"{'KEY':<16} {'VER':>3} {'STATE':<8} {'ALGORITHM':<13} {'BINS':<10} KEYID")
    for key in keys:
        name, algorithm = printable(str(key["name"])), printable(str(key["algorithm"]))
        declared = key.get("bins")
        bins = printable(f"{declared['prefix']}:{declared['bit_length']}") if declared else "-"
        for v in key["versions"]:
            version, state = printable(str(v["version"])), printable(str(v["state"]))
            print(
                f"{name:<16} {version:>3} {state:<8} {algorithm:<13} {bins:<10} "
                f"{printable(str(v['keyid']))}"
            )
    return 0


def _parse_role(text: str) -> tuple[str, int]:
    pattern, _, seconds = text.partition(":")
    if not seconds:
        return pattern, 86400
    if not seconds.isdigit():
        raise argparse.ArgumentTypeError(f"expected PATTERN[:SECONDS], got {text!r}")
    return pattern, int(seconds)


def _parse_bins(text: str) -> str:
    """``--bins PREFIX:BIT_LENGTH``: the form here, the values on the server."""
    from tuf_signer.client._models import bins_declaration

    try:
        bins_declaration(text)
    except RequestError as e:
        raise argparse.ArgumentTypeError(e.reason) from e
    return text


def cmd_keys_create(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_json(
            client.create_key(
                args.name,
                args.role,
                algorithm=args.algorithm,
                backend=args.backend,
                activate=args.activate,
                bins=args.bins,
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


def cmd_keys_reset_role(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_json(client.reset_role(args.name, args.role, args.version, args.reason))
    return 0


def cmd_keys_reset_roles(args: argparse.Namespace) -> int:
    with _client(args) as client:
        count, first, last = client.reset_roles(args.name, args.version, args.reason)
        _print_json({"roles": count, "first_audit_seq": first, "last_audit_seq": last})
    return 0


def cmd_keys_set_rules(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_json(client.set_key_rules(args.name, args.role, args.reason))
    return 0


def _warn_without_native_check() -> None:
    """Say at start-up when payloads are checked without a native check (~3x the CPU)."""
    from tuf_signer.policy import native_check_off

    if why := native_check_off():
        logging.getLogger("tuf_signer.policy").warning(
            "a native payload check is not in use (%s); its pure-Python reference checks "
            "every payload, ~3 times the CPU per PEP 458 bin (README Performance)",
            why,
        )


def cmd_keys_approve_delegations(args: argparse.Namespace) -> int:
    if (args.sha256 is None) == (args.metadata is None):
        raise RequestError("give the delegations digest or --metadata FILE, not both or neither")
    digest = args.sha256 or _delegations_digest_of(args.metadata)
    with _client(args) as client:
        seq = client.approve_delegations(args.name, args.role, digest, args.reason)
        _print_json({"audit_seq": seq, "delegations_sha256": digest})
    return 0


def _delegations_digest_of(path: Path) -> str:
    """The delegations digest of a targets metadata file (``ROLE.json``, signed or not).

    What the service compares (``policy.delegations_digest``), so an admin
    can approve a rotation's new delegations before the repository signs.
    """
    from tuf_signer.policy import delegations_digest

    try:
        document = json.loads(path.read_bytes())
    except OSError as e:
        raise RequestError(f"--metadata: cannot read {path}: {e.strerror}") from None
    except ValueError:
        raise RequestError(f"--metadata: {path} is not JSON") from None
    signed = document.get("signed", document) if isinstance(document, dict) else None
    if not isinstance(signed, dict) or signed.get("_type") != "targets":
        raise RequestError(f"--metadata: {path} is not targets metadata (_type 'targets')")
    return delegations_digest(signed)


def cmd_role_state(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_json(client.role_state(args.key, args.role))
    return 0


def _open_store(config_path: str) -> Any:
    from tuf_signer.audit import open_audit_store
    from tuf_signer.config import load_config

    return open_audit_store(load_config(config_path).audit, create=False)


def _record_json(record: Any) -> dict[str, Any]:
    from tuf_signer.audit import event_to_dict

    return {
        "seq": record.seq,
        "prev_hash": record.prev_hash,
        "hash": record.hash,
        "event": event_to_dict(record.event),
    }


def cmd_audit_create_key(args: argparse.Namespace) -> int:
    from tuf_signer.audit._note import NoteError, check_key_name
    from tuf_signer.config import load_config
    from tuf_signer.server._auditkey import create_audit_key
    from tuf_signer.server._wiring import start_backends

    config = load_config(args.config)
    name = args.backend or config.default_backend
    if name not in config.backends:
        raise RequestError(f"--backend: no backend named {name!r} in {args.config}")
    try:
        check_key_name(args.origin)
    except NoteError as e:
        raise RequestError(f"--origin: {e.reason}") from None

    async def create() -> tuple[str, Any]:
        backends = await start_backends(replace(config, backends={name: config.backends[name]}))
        try:
            return await create_audit_key(backends[name], args.origin)
        finally:
            for backend in backends.values():
                await backend.close()

    handle, key = asyncio.run(create())
    print("# Add to the [audit] table of the config, then restart the signer:")
    # JSON strings are TOML basic strings: an origin or name with " or \ stays valid.
    print(f"origin = {json.dumps(args.origin)}")
    print(f"key = {{ backend = {json.dumps(name)}, handle = {json.dumps(handle)} }}")
    print(f"# The log's verifier key, for witnesses and auditors:\n# {key.text()}")
    return 0


def _format_record(record: Any) -> str:
    """One record as one line of text: every field from the store escaped (finding 7).

    Key, role, identity and reason are what a client sent or caused; a stored
    escape sequence must not rewrite the operator's terminal.
    """
    e = record.event
    what = f"{e.key_name}" + (f" v{e.key_version}" if e.key_version else "")
    if e.role:
        what += f" role={e.role} version={e.metadata_version}"
    reason = f" ({e.reason})" if e.reason else ""
    if not reason and isinstance(e.detail.get("reason"), str):  # an admin's (reset-role)
        reason = f" (reason: {e.detail['reason']})"
    fields = (e.time, e.identity, e.operation, e.outcome.value, e.status, what + reason)
    time_, identity, operation, outcome, status, rest = (printable(str(f)) for f in fields)
    return (
        f"{record.seq:>6} {time_} {identity:<12} {operation:<20} {outcome:<8} {status:<19} {rest}"
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
    from tuf_signer.audit import record_leaf

    store = _open_store(args.config)
    try:
        for record in store.records(args.start):
            # One line per record: exactly the record's Merkle leaf (``record_leaf``).
            print(record_leaf(record).decode("ascii"))
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
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="text (default) or json, one object per line (serve: overrides ops.log_format)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "dev-init", help="create a SoftHSM token, an 'online' key, an audit key, a witness"
    )
    p.add_argument("dir", help="directory to create (e.g. .dev)")
    # No default here: dev-init takes server.listen's (tuf_signer.config.DEFAULT_LISTEN).
    p.add_argument("--listen", help="HOST:PORT for the dev server")
    p.add_argument("--witness-listen", help="HOST:PORT for the dev witness (127.0.0.1:7380)")
    p.add_argument(
        "--ops-listen",
        help="HOST:PORT for the dev signer's metrics and probes (default 127.0.0.1:9464 "
        "with the default --listen; else left commented out)",
    )
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

    keys = sub.add_parser(
        "keys",
        help="list, create, rotate, activate, retire keys; reset-role(s), set-rules, "
        "approve-delegations",
    )
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
        help="allowed role name, or a glob matching only the --bins (e.g. "
        "'bins-[0-3][0-9a-f][0-9a-f][0-9a-f]' for bins:14), with its maximum validity "
        "(default 86400 s)",
    )
    p.add_argument(
        "--bins",
        type=_parse_bins,
        metavar="PREFIX:BIT_LENGTH",
        help="the succinct hash-bin delegation this key signs, e.g. bins:14 (PEP 458): "
        "bins must then be exactly its bin names and hold only paths that hash into them",
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
    p = ks.add_parser(
        "reset-role",
        help="move a role's high-water mark (recovery from a version fast-forward)",
        description="Set the high-water mark of (NAME, ROLE) to --version: the next "
        "signature of the role must be above it (0 forgets the role). Recorded with "
        "your identity and --reason. Needed after a fast-forward to a huge version, or "
        "before signing a role that starts beyond the server's max_version_step.",
    )
    _add_client_args(p)
    p.add_argument("name")
    p.add_argument("role")
    p.add_argument("--version", type=_non_negative, required=True, help="the new mark")
    p.add_argument("--reason", required=True, help="why, for the audit record")
    p.set_defaults(func=cmd_keys_reset_role)
    p = ks.add_parser(
        "reset-roles",
        help="move every role mark of a key (a repository starting again: RSTUF re-bootstrap)",
    )
    _add_client_args(p)
    p.add_argument("name")
    p.add_argument("--version", type=_non_negative, default=0, help="the new marks (default 0)")
    p.add_argument("--reason", required=True, help="why, for the audit record")
    p.set_defaults(func=cmd_keys_reset_roles)
    p = ks.add_parser("set-rules", help="replace a key's role policy (recorded)")
    _add_client_args(p)
    p.add_argument("name")
    p.add_argument(
        "--role",
        action="append",
        type=_parse_role,
        required=True,
        metavar="PATTERN[:SECONDS]",
        help="as for keys create; the new rules replace all the old ones",
    )
    p.add_argument("--reason", required=True, help="why, for the audit record")
    p.set_defaults(func=cmd_keys_set_rules)
    p = ks.add_parser(
        "approve-delegations",
        help="let the next signature of a targets role carry changed delegations",
    )
    _add_client_args(p)
    p.add_argument("name")
    p.add_argument("role")
    p.add_argument("sha256", nargs="?", help="the delegations digest (a refused Sign names it)")
    p.add_argument(
        "--metadata",
        type=Path,
        help="or: the targets metadata to be signed (ROLE.json); its delegations' digest",
    )
    p.add_argument("--reason", required=True, help="why, for the audit record")
    p.set_defaults(func=cmd_keys_approve_delegations)

    p = sub.add_parser("role-state", help="highest version signed per (key, role)")
    _add_client_args(p, key_flag=False)
    p.add_argument("--key", default="")
    p.add_argument("--role", default="")
    p.set_defaults(func=cmd_role_state)

    audit = sub.add_parser("audit", help="verify, tail or export the audit log (offline)")
    aus = audit.add_subparsers(dest="audit_command", required=True)
    p = aus.add_parser(
        "create-key", help="make the audit key (Ed25519, in the HSM) that signs checkpoints"
    )
    p.add_argument("--config", required=True)
    p.add_argument("--origin", required=True, help="the log's origin line, e.g. example.org/audit")
    p.add_argument("--backend", help="the backend to hold it (default: keys.default_backend)")
    p.set_defaults(func=cmd_audit_create_key)
    _verify.register(aus)
    _monitor.register(aus)
    _migrate.register(aus)
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
    _auditlog.register(aus)

    p = sub.add_parser("dev-payload", help="print a sample canonical payload to try signing")
    p.add_argument("type", choices=["timestamp", "snapshot"])
    p.add_argument("--version", type=int, default=1)
    p.add_argument("--expires-in", type=int, default=3600, help="seconds from now")
    p.set_defaults(func=cmd_dev_payload)

    _witness.register(sub)
    return parser


def _plaintext_hint(args: argparse.Namespace, error: RemoteError) -> str | None:
    """Why a client without TLS settings could not connect, and where the settings are.

    A mutual-TLS server closes a plaintext connection during the handshake, which
    gRPC reports only as UNAVAILABLE ("Socket closed"); a server that is not
    there refuses the connection instead, and gets no hint.
    """
    from tuf_signer.client import TlsConfig
    from tuf_signer.client._tls import CA_ENV

    if error.code != "UNAVAILABLE" or not hasattr(args, "ca") or "refused" in error.reason:
        return None
    try:
        if TlsConfig.from_env(args.ca, args.cert, args.tls_key).secure:
            return None
    except TufSignerError:
        return None
    if "failed to connect" not in error.reason:
        return None  # the server answered: its HSM or store is unavailable
    return (
        f"hint: no TLS settings (--ca or ${CA_ENV}), so this client spoke plaintext, and "
        "a server with mutual TLS (the default) closes such connections; load a client's "
        "settings first, e.g. `set -a; . .dev/backend.env; set +a` (or admin.env), "
        "or pass --ca, --cert and --key"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tuf-signer`` console script."""
    args = build_parser().parse_args(argv)
    worker = os.environ.get("TUF_SIGNER_WORKER")
    # Log lines carry client strings (key names, roles, identities): escaped at the sink.
    handler = log_handler(
        args.log_format or "text", int(worker) if worker and worker.isdigit() else None
    )
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
    try:
        return int(args.func(args))
    except RemoteError as e:
        # The code and reason come from the server, which echoes client strings.
        print(f"refused: {printable(e.code)}: {printable(e.reason)}", file=sys.stderr)
        if hint := _plaintext_hint(args, e):
            print(hint, file=sys.stderr)
        return 1
    except TufSignerError as e:
        print(f"error: {printable(e.reason)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
