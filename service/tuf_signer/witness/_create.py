"""``create_witness``: a new witness key and ``witness.toml`` in one directory."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Sequence
from pathlib import Path

from tuf_signer._files import PUBLIC, SECRET, write_new
from tuf_signer.config._reader import field_default
from tuf_signer.errors import ConfigError
from tuf_signer.witness._config import WitnessServerConfig, parse_witness_config
from tuf_signer.witness._key import WitnessKey

CONFIG_NAME = "witness.toml"
KEY_NAME = "witness.key"
STATE_NAME = "witness.db"

_CONFIG = """\
# A c2sp.org/tlog-witness for the tuf-signer audit log, written by `tuf-signer witness init`.
# Endpoints: POST /add-checkpoint and GET /<sha256 hex of the origin>/checkpoint.
# Relative paths are relative to this file. Plain HTTP is fine on any address:
# the protocol authenticates nothing but the log's signature on each checkpoint.

[witness]
name = {name}
listen = {listen}
key_file = {key_file}       # Ed25519 private key (PEM PKCS#8); refused unless mode 0600
state = {state}          # SQLite: the latest cosigned checkpoint of each log
max_body_bytes = {max_body_bytes}       # bytes; a larger request is answered 413, unread
max_connections = {max_connections}         # connections served at once; one more is answered 503
timeout_seconds = {timeout_seconds:g}         # seconds to send a whole request (and to stay idle)
# tls_cert = "witness.crt"   # serve HTTPS (PEM chain), with:
# tls_key = "witness-tls.key"  # mode 0600
"""

_LOG = """
[[logs]]
origin = {origin}
# The log's Ed25519 verifier keys, each named after the origin.
vkeys = [{vkeys}]
"""


def _toml_string(value: str) -> str:
    """``value`` as a TOML basic string (JSON's escapes are TOML's; DEL must be escaped too)."""
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def create_witness(
    directory: Path, name: str, listen: str, logs: Sequence[tuple[str, str]]
) -> tuple[Path, str]:
    """Write a new witness key and its config into ``directory`` (created if missing).

    Args:
        directory: where ``witness.toml`` and ``witness.key`` (mode 0600) go;
            the state ``witness.db`` is created there on first start.
        name: the witness's key name (e.g. ``witness.example/w1``).
        listen: ``HOST:PORT`` to serve on.
        logs: (origin, log vkey) pairs; several vkeys of one origin make one log.

    Returns:
        The config's path and the witness's cosignature/v1 verifier key
        ``name+hex(key ID)+base64(0x04 || public key)``.

    Raises:
        ConfigError: a setting is invalid (naming it, before anything is
            written), or a file exists already or cannot be written.
    """
    origins: dict[str, list[str]] = {}
    for origin, vkey in logs:
        origins.setdefault(origin, []).append(vkey)
    text = _CONFIG.format(
        name=_toml_string(name),
        listen=_toml_string(listen),
        key_file=_toml_string(KEY_NAME),
        state=_toml_string(STATE_NAME),
        max_body_bytes=field_default(WitnessServerConfig, "max_body_bytes"),
        max_connections=field_default(WitnessServerConfig, "max_connections"),
        timeout_seconds=field_default(WitnessServerConfig, "timeout_seconds"),
    ) + "".join(
        _LOG.format(origin=_toml_string(origin), vkeys=", ".join(map(_toml_string, vkeys)))
        for origin, vkeys in origins.items()
    )
    directory = directory.absolute()
    config_path = directory / CONFIG_NAME
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError("witness init: a setting is not valid Unicode text") from None
    # Everything is checked before anything is written.
    try:
        parse_witness_config(tomllib.loads(text), config_path)
    except tomllib.TOMLDecodeError as e:  # a bug in _toml_string, not in the settings
        raise ConfigError(f"witness init: cannot write the settings as TOML: {e}") from e
    key = WitnessKey.generate(name)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create {directory}: {e.strerror}") from e
    write_new(directory / KEY_NAME, key.pem(), SECRET)
    try:
        write_new(config_path, data, PUBLIC)
    except ConfigError:
        (directory / KEY_NAME).unlink()  # no key without its config
        raise
    return config_path, key.vkey.text()
