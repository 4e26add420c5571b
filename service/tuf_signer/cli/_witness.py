"""``tuf-signer witness``: run a tlog-witness for the audit log (c2sp.org/tlog-witness)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tuf_signer.errors import ConfigError


def cmd_witness_serve(args: argparse.Namespace) -> int:
    from tuf_signer.witness import load_witness_config, run_witness

    run_witness(load_witness_config(args.config))
    return 0


def cmd_witness_init(args: argparse.Namespace) -> int:
    from tuf_signer.audit._note import NoteFormatError, parse_verifier_key
    from tuf_signer.witness import DEFAULT_WITNESS_LISTEN, create_witness

    logs = []
    for text in args.log_vkey:
        try:
            origin = parse_verifier_key(text).name  # a log's key is named after its origin
        except NoteFormatError as e:
            raise ConfigError(f"--log-vkey: {e.reason}") from None
        logs.append((origin, text))
    listen = DEFAULT_WITNESS_LISTEN if args.listen is None else args.listen
    config, vkey = create_witness(Path(args.dir), args.name, listen, logs)
    print(f"wrote {config}", file=sys.stderr)
    print(vkey)
    return 0


def cmd_witness_verifier_key(args: argparse.Namespace) -> int:
    from tuf_signer.witness import WitnessKey, load_witness_config

    config = load_witness_config(args.config)
    print(WitnessKey.load(config.key_file, config.name).vkey.text())
    return 0


def register(sub: Any) -> None:
    """Add the ``witness`` command and its subcommands to ``sub``."""
    witness = sub.add_parser("witness", help="run a witness that cosigns the audit log")
    ws = witness.add_subparsers(dest="witness_command", required=True)

    p = ws.add_parser(
        "serve",
        help="serve add-checkpoint and the monitoring endpoint (c2sp.org/tlog-witness)",
    )
    p.add_argument("--config", required=True, help="witness.toml")
    p.set_defaults(func=cmd_witness_serve)

    p = ws.add_parser(
        "init",
        help="create a witness key and witness.toml; prints the witness's verifier key",
        description="Write DIR/witness.key (mode 0600) and DIR/witness.toml, trusting the "
        "logs whose Ed25519 verifier keys are given (each log's origin is its key's name). "
        "Prints the witness's cosignature/v1 verifier key, for the logs and clients to "
        "configure.",
    )
    p.add_argument("dir", help="directory for the witness's files (created if missing)")
    p.add_argument("--name", required=True, help="the witness's key name, e.g. witness.example/w1")
    p.add_argument(
        "--log-vkey",
        action="append",
        required=True,
        metavar="VKEY",
        help="a log's verifier key NAME+ID+KEY (repeat for more keys or logs)",
    )
    p.add_argument("--listen", help="HOST:PORT (default 127.0.0.1:7380)")
    p.set_defaults(func=cmd_witness_init)

    p = ws.add_parser("verifier-key", help="print the witness's cosignature/v1 verifier key")
    p.add_argument("--config", required=True, help="witness.toml")
    p.set_defaults(func=cmd_witness_verifier_key)
