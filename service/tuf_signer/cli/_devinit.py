"""``tuf-signer dev-init DIR``: a complete local signer in one directory.

DIR gets a SoftHSM token (config, token files, PIN files with mode 0600), a
development PKI under ``tls/`` (a CA, the server's certificate, and client
certificates for ``backend`` and ``admin``), ``backend.env`` and ``admin.env``
that turn the CLI into either client, a config file with mutual TLS and an
access policy, an audit database, and an Ed25519 key ``online`` allowed to
sign ``timestamp``, ``snapshot`` and ``bins-*`` for at most one day each
(PEP 458). For development only: the PIN and the CA key sit beside the token.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path

from tuf_signer.cli._devcerts import DEV_IDENTITY_PREFIX, DevCa
from tuf_signer.client import CA_ENV, CERT_ENV, KEY_ENV, SERVER_ENV
from tuf_signer.errors import ConfigError

CONFIG_NAME = "tuf-signer.toml"
TOKEN_LABEL = "tuf-signer"  # noqa: S105 - a label, not a secret
DEV_KEY = "online"

_CONFIG = """\
# tuf-signer development config, written by `tuf-signer dev-init`.
# Relative paths are relative to this file. See README "Configuration".

[server]
listen = "{listen}"
max_payload_bytes = 8388608  # bytes; a 16,384-bin snapshot is MB-sized
drain_seconds = 10           # seconds SIGTERM waits for in-flight calls
call_deadline_seconds = 30   # the longest any call may run

[server.tls]                 # mutual TLS: clients need a certificate from client_ca
cert = "tls/server.crt"
key = "tls/server.key"
client_ca = "tls/ca.crt"

[limits]                     # per client identity
max_concurrent = 256         # calls in flight
rate = 5000                  # calls per second, sustained
burst = 10000                # calls at once above the rate

# Deny by default: each client identity (its certificate's SAN URI) gets a rule.
[[authz.rules]]
identity = "{prefix}backend"
operations = ["sign", "read-keys"]
keys = ["{key}"]
roles = ["timestamp", "snapshot", "bins-*"]

[[authz.rules]]
identity = "{prefix}admin"
operations = ["key-admin", "read-keys", "read-audit"]

[audit]
store = "sqlite"
path = "audit.db"

[backends.softhsm]
type = "pkcs11"
module = "{module}"
token_label = "{token}"
pin_file = "hsm.pin"         # the PIN never goes in this file
env = {{ SOFTHSM2_CONF = "softhsm2.conf" }}

[keys]
default_backend = "softhsm"
"""


def _write_secret(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")


def dev_init(directory: Path, listen: str = "127.0.0.1:50051") -> Path:
    """Create the development signer in ``directory``; returns the config path.

    Raises:
        ConfigError: ``directory`` already holds a config, or SoftHSM is missing.
        TufSignerError: the token or the key could not be created.
    """
    from tuf_signer.keys import init_token, softhsm_module_path, write_softhsm_config

    directory = directory.resolve()
    config_path = directory / CONFIG_NAME
    if config_path.exists():
        raise ConfigError(
            f"dev-init: {config_path} exists already; remove {directory} to start over"
        )
    module = softhsm_module_path()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    conf = write_softhsm_config(directory)
    pin, so_pin = secrets.token_hex(16), secrets.token_hex(16)
    _write_secret(directory / "hsm.pin", pin)
    _write_secret(directory / "hsm.so-pin", so_pin)
    init_token(conf, TOKEN_LABEL, pin, so_pin)
    ca = DevCa(directory / "tls")
    ca.issue("server", server=True)
    for client in ("backend", "admin"):
        issued = ca.issue(client, server=False)
        (directory / f"{client}.env").write_text(
            f"# `set -a; . {directory / client}.env; set +a` makes the CLI the {client} client.\n"
            f"{SERVER_ENV}={listen}\n"
            f"{CA_ENV}={ca.cert}\n"
            f"{CERT_ENV}={issued.cert}\n"
            f"{KEY_ENV}={issued.key}\n"
        )
    config_path.write_text(
        _CONFIG.format(
            listen=listen,
            module=module,
            token=TOKEN_LABEL,
            prefix=DEV_IDENTITY_PREFIX,
            key=DEV_KEY,
        )
    )
    asyncio.run(_create_dev_key(config_path))
    return config_path


async def _create_dev_key(config_path: Path) -> None:
    from tuf_signer.config import load_config, open_audit_store
    from tuf_signer.model import Algorithm
    from tuf_signer.policy import PEP458_ONLINE_RULES
    from tuf_signer.server import SigningService, start_backends
    from tuf_signer.server._guard import Guard

    config = load_config(config_path)
    store = open_audit_store(config.audit)
    backends = await start_backends(config)
    service = SigningService(
        store,
        backends,
        config.default_backend,
        config.server.max_payload_bytes,
        guard=Guard.unrestricted(),
    )
    try:
        await service.create_key(
            "dev-init", DEV_KEY, Algorithm.ED25519, PEP458_ONLINE_RULES, activate=True
        )
    finally:
        service.close()
        for backend in backends.values():
            await backend.close()
        store.close()
