"""``tuf-signer dev-init DIR``: a complete local signer in one directory.

DIR gets a SoftHSM token (config, token files, PIN files with mode 0600), a
development PKI under ``tls/`` (a CA, the server's certificate, and client
certificates for ``backend`` and ``admin``), ``backend.env`` and ``admin.env``
that turn the CLI into either client, ``tuf-signer-client.toml`` (the backend's
Signer plugin settings, for ``ONLINE_KEY_DIR=DIR``), a config file with mutual TLS and an
access policy, an audit database, and an Ed25519 key ``online`` allowed to
sign ``timestamp``, ``snapshot`` and PEP 458's hashed bins (it declares
``bins:14``: ``bins-0000`` … ``bins-3fff``) for at most one day each (PEP 458).
For development only: the PIN and the CA key sit beside the token.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from dataclasses import replace
from pathlib import Path

from tuf_signer._files import PUBLIC, SECRET, make_private_dir, write_new
from tuf_signer.audit._note import VerifierKey
from tuf_signer.cli._devcerts import DEV_IDENTITY_PREFIX, DevCa
from tuf_signer.client import CA_ENV, CERT_ENV, KEY_ENV, SERVER_ENV, SETTINGS_FILE_NAME
from tuf_signer.config import DEFAULT_LISTEN, LimitsConfig, LogConfig, ServerConfig
from tuf_signer.config._settings import OpsConfig
from tuf_signer.errors import ConfigError
from tuf_signer.witness import create_witness

CONFIG_NAME = "tuf-signer.toml"
TOKEN_LABEL = "tuf-signer"  # noqa: S105 - a label, not a secret
DEV_KEY = "online"
DEV_ORIGIN = "tuf-signer.dev/audit"
DEV_WITNESS = "tuf-signer.dev/witness"
DEFAULT_WITNESS_LISTEN = "127.0.0.1:7380"
# The dev signer's ops listener (metrics and probes, plaintext, loopback).
DEFAULT_OPS_LISTEN = "127.0.0.1:9464"

_CONFIG = """\
# tuf-signer development config, written by `tuf-signer dev-init`.
# Relative paths are relative to this file. See README "Configuration".

[server]
listen = "{listen}"
max_payload_bytes = {server.max_payload_bytes}  # bytes; a 16,384-bin snapshot is MB-sized
drain_seconds = {server.drain_seconds:g}           # seconds SIGTERM waits for in-flight calls
call_deadline_seconds = {server.call_deadline:g}   # the longest any call may run

[server.tls]                 # mutual TLS: clients need a certificate from client_ca
cert = "tls/server.crt"
key = "tls/server.key"
client_ca = "tls/ca.crt"
# allow_cn_identity = false  # name a client by its subject CN (cn:...) without SAN
# require_single_uri = false # a client certificate must carry exactly one SAN URI
# crl = "tls/ca.crl"         # revoked clients: a CRL signed by client_ca (PEM or DER)
# deny_list = "tls/deny.txt" # revoked clients: serials or SHA-256 fingerprints (hex)

[limits]                     # per client identity
max_concurrent = {limits.max_concurrent}         # calls in flight
rate = {limits.rate:g}                  # calls per second, sustained
burst = {limits.burst}                # calls at once above the rate

# Deny by default: each client identity gets a rule. Identities are typed by the
# certificate field they come from: uri: (SAN URI), dns: (SAN DNS name), cn:
# (subject CN, only with [server.tls] allow_cn_identity = true).
[[authz.rules]]
identity = "uri:{prefix}backend"
operations = ["sign", "read-keys"]
keys = ["{key}"]
roles = ["timestamp", "snapshot", "bins-*"]

[[authz.rules]]
identity = "uri:{prefix}admin"
operations = ["key-admin", "read-keys", "read-audit"]

[audit]
store = "sqlite"
path = "audit.db"
# The transparency log (README "The audit log"): the audit key signs a checkpoint
# of the record every checkpoint_interval_seconds while records arrive, and the
# witnesses below cosign it. The audit key is Ed25519, in the HSM, and signs
# nothing but checkpoints.
origin = "{origin}"
key = {{ backend = "softhsm", handle = "{audit_handle}" }}
checkpoint_interval_seconds = {log.checkpoint_interval:g}
# Fail closed: refuse to sign while the witnesses are this far behind, so that
# nobody on this host can silence the log and keep signing. Start the witness
# first (tuf-signer witness serve --config witness.toml), then uncomment:
# max_unwitnessed_records = 1000
# max_unwitnessed_seconds = 60

[[audit.witnesses]]          # tuf-signer witness serve --config witness.toml
url = "http://{witness_listen}"
vkey = "{witness_vkey}"

[backends.softhsm]
type = "pkcs11"
module = "{module}"
token_label = "{token}"
pin_file = "hsm.pin"         # the PIN never goes in this file
env = {{ SOFTHSM2_CONF = "softhsm2.conf" }}

[keys]
default_backend = "softhsm"

# Operations (README "Metrics and probes"): /metrics, /healthz, /readyz and the
# gRPC health service, in plaintext, for Prometheus and kubelet. Loopback only,
# unless allow_non_loopback = true.
[ops]
{ops_comment}listen = "{ops_listen}"
expiry_margin_seconds = {ops.expiry_margin_seconds:g}  # warn when a role expires this soon
# log_format = "json"        # one JSON object per line (or: serve --log-format json)
"""


def _write_secret(path: Path, value: str) -> None:
    write_new(path, value + "\n", SECRET)


def _new_directory(directory: Path) -> Path:
    """Create ``directory`` (mode 0700), or adopt it if it is empty and ours; returns it absolute.

    dev-init writes the CA key and the PINs there, so a directory someone else
    prepared (world-writable, holding a planted symlink or a readable
    ``tls/ca.key``) is refused rather than trusted (issue 10, finding 11).

    Raises:
        ConfigError: naming ``directory`` and why it cannot be used.
    """
    # absolute(), not resolve(): DIR itself must not be a symlink, so do not follow it.
    directory = directory.absolute()
    try:
        make_private_dir(directory, empty_ok=True)
    except ConfigError as e:
        raise ConfigError(
            f"dev-init: {e.reason}; dev-init needs a new directory or an empty one of yours"
        ) from e
    return directory.resolve()


def dev_init(
    directory: Path,
    listen: str = DEFAULT_LISTEN,
    witness_listen: str = DEFAULT_WITNESS_LISTEN,
    ops_listen: str | None = None,
) -> Path:
    """Create the development signer in ``directory``; returns the config path.

    Besides the signer, an audit key in the token and a witness for its log
    (``witness.toml``, its key and state beside it) listening on ``witness_listen``.

    ``ops_listen`` is the ops listener's address; by default
    ``DEFAULT_OPS_LISTEN`` when ``listen`` is the default, and written
    commented out otherwise (a signer on another port must not take the
    default ops port of another one).

    ``directory`` must be new, or empty and owned by this user (it becomes
    0700). Every file is created new (``O_EXCL|O_NOFOLLOW``) with an explicit
    mode: 0600 for PINs and keys, 0644 for certificates, env and config files.

    Raises:
        ConfigError: ``directory`` exists and is not empty, not ours or a
            symlink; a file to be written exists; or SoftHSM is missing.
        TufSignerError: the token or the key could not be created.
    """
    from tuf_signer.testing.softhsm import init_token, softhsm_module_path, write_softhsm_config

    module = softhsm_module_path()
    directory = _new_directory(directory)
    config_path = directory / CONFIG_NAME
    conf = write_softhsm_config(directory)
    pin, so_pin = secrets.token_hex(16), secrets.token_hex(16)
    _write_secret(directory / "hsm.pin", pin)
    _write_secret(directory / "hsm.so-pin", so_pin)
    init_token(conf, TOKEN_LABEL, pin, so_pin)
    audit_handle, audit_key = asyncio.run(_create_audit_key(module, conf, pin))
    _, witness_vkey = create_witness(
        directory, DEV_WITNESS, witness_listen, [(DEV_ORIGIN, audit_key.text())]
    )
    make_private_dir(directory / "tls")
    ca = DevCa(directory / "tls")
    ca.issue("server", server=True)
    for client in ("backend", "admin"):
        issued = ca.issue(client, server=False)
        write_new(
            directory / f"{client}.env",
            f"# `set -a; . {directory / client}.env; set +a` makes the CLI the {client} client.\n"
            f"{SERVER_ENV}={listen}\n"
            f"{CA_ENV}={ca.cert}\n"
            f"{CERT_ENV}={issued.cert}\n"
            f"{KEY_ENV}={issued.key}\n",
            PUBLIC,
        )
        if client == "backend":
            # The Signer plugin's settings for a repository that passes only
            # ONLINE_KEY_DIR=DIR (RSTUF): paths relative to this file.
            write_new(
                directory / SETTINGS_FILE_NAME,
                f"# The {client} client, for tufsigner:///{DEV_KEY} URIs with "
                f"ONLINE_KEY_DIR={directory}.\n"
                f'server = "{listen}"\n'
                f'ca = "{ca.cert.relative_to(directory)}"\n'
                f'cert = "{issued.cert.relative_to(directory)}"\n'
                f'key = "{issued.key.relative_to(directory)}"\n',
                PUBLIC,
            )
    write_new(
        config_path,
        _CONFIG.format(
            listen=listen,
            # The defaults, written out for the reader to change.
            server=ServerConfig(),
            limits=LimitsConfig(),
            module=module,
            token=TOKEN_LABEL,
            prefix=DEV_IDENTITY_PREFIX,
            key=DEV_KEY,
            origin=DEV_ORIGIN,
            audit_handle=audit_handle,
            log=LogConfig(origin=DEV_ORIGIN, key_backend="softhsm", key_handle=audit_handle),
            witness_listen=witness_listen,
            witness_vkey=witness_vkey,
            ops=OpsConfig(),
            ops_listen=ops_listen or DEFAULT_OPS_LISTEN,
            ops_comment="" if ops_listen or listen == DEFAULT_LISTEN else "# ",
        ),
        PUBLIC,
    )
    asyncio.run(_create_dev_key(config_path))
    return config_path


async def _create_audit_key(module: Path, conf: Path, pin: str) -> tuple[str, VerifierKey]:
    """The dev log's audit key, made in the new token before the config names it."""
    from tuf_signer.keys import Pkcs11Backend
    from tuf_signer.server._auditkey import create_audit_key

    # dev-init owns this token: point SoftHSM at it whatever the caller's
    # environment says (the config's backends.softhsm.env says the same).
    os.environ["SOFTHSM2_CONF"] = str(conf)
    backend = Pkcs11Backend("softhsm", module, TOKEN_LABEL, lambda: pin)
    await backend.start()
    try:
        return await create_audit_key(backend, DEV_ORIGIN)
    finally:
        await backend.close()


async def _create_dev_key(config_path: Path) -> None:
    from tuf_signer.config import load_config
    from tuf_signer.model import Algorithm
    from tuf_signer.policy import PEP458_BINS, PEP458_ONLINE_RULES
    from tuf_signer.server._guard import Guard
    from tuf_signer.server._wiring import start_parts

    config = load_config(config_path)
    # The log starts with the signer (its witness is not running yet).
    config = replace(config, audit=replace(config.audit, log=None))
    parts = await start_parts(config, guard=Guard.unrestricted())
    try:
        await parts.service.create_key(
            "dev-init",
            DEV_KEY,
            Algorithm.ED25519,
            PEP458_ONLINE_RULES,
            activate=True,
            bins=PEP458_BINS,  # PEP 458's 16,384 bins: "bins-0000".."bins-3fff"
        )
    finally:
        await parts.close()
