"""``witness.toml``: the witness's settings, parsed at the edge into frozen dataclasses.

Relative paths are relative to the file's own directory. Every error names the
setting at fault. Example (what ``tuf-signer witness init`` writes)::

    [witness]
    name = "witness.example/w1"      # the key name on every cosignature
    listen = "127.0.0.1:7380"        # HOST:PORT
    key_file = "witness.key"         # Ed25519 private key (PEM PKCS#8), mode 0600
    state = "witness.db"             # SQLite: the latest cosigned checkpoint per log

    [[logs]]
    origin = "tuf-signer.dev/audit"
    vkeys = ["tuf-signer.dev/audit+abcd1234+AQ..."]

Plain HTTP is allowed on any address: c2sp.org/tlog-witness authenticates
nothing but the log's signature on the checkpoint, and a cosignature is
checked by whoever receives it. ``tls_cert`` and ``tls_key`` serve HTTPS.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuf_signer._net import split_host_port
from tuf_signer.audit._note import (
    ED25519,
    NoteFormatError,
    VerifierKey,
    check_key_name,
    parse_verifier_key,
)
from tuf_signer.config._reader import Table
from tuf_signer.errors import ConfigError, shown

DEFAULT_WITNESS_LISTEN = "127.0.0.1:7380"
MIN_BODY_BYTES = 1024
MAX_BODY_BYTES = 1024 * 1024  # a signed note may be up to 1,000,000 bytes (audit/_note.py)
MAX_CONNECTIONS = 4096


@dataclass(frozen=True)
class TrustedLog:
    """One log the witness cosigns.

    Attributes:
        origin: the log's origin line (c2sp.org/tlog-checkpoint), its identity.
        keys: its Ed25519 (type 0x01) verifier keys, each named after the origin;
            a checkpoint needs a valid signature by at least one of them.
    """

    origin: str
    keys: tuple[VerifierKey, ...]


@dataclass(frozen=True)
class WitnessServerConfig:
    """The witness settings (``[witness]`` and ``[[logs]]``).

    Attributes:
        path: the config file, absolute.
        name: the witness's key name (signed-note rules: no space, no ``+``);
            every cosignature line carries it.
        key_file: its Ed25519 private key, PEM PKCS#8; a secret: mode 0600 or stricter.
        state: the SQLite file with the latest cosigned checkpoint of each log.
        logs: the logs it cosigns, origins all distinct.
        listen: ``HOST:PORT`` to serve on; port 0 picks a free port.
        tls_cert: a PEM certificate chain: serve HTTPS (with ``tls_key``).
        tls_key: its private key; a secret: mode 0600 or stricter.
        max_body_bytes: the largest add-checkpoint body, in bytes; a larger
            declared Content-Length is answered 413 without being read.
        max_connections: client connections served at once, one thread each;
            one more is answered 503 and closed.
        timeout_seconds: seconds a client has to send one whole request (and
            that an idle keep-alive connection stays open).
    """

    path: Path
    name: str
    key_file: Path
    state: Path
    logs: tuple[TrustedLog, ...]
    listen: str = DEFAULT_WITNESS_LISTEN
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_body_bytes: int = 65536
    max_connections: int = 64
    timeout_seconds: float = 10.0


def load_witness_config(path: Path | str) -> WitnessServerConfig:
    """Read and validate a ``witness.toml``.

    Raises:
        ConfigError: the file cannot be read, is not TOML, or a setting is wrong.
    """
    path = Path(path).resolve()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"config: cannot read {path}: {e.strerror}") from e
    except UnicodeDecodeError:
        raise ConfigError(f"config: {path} is not UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config: {path} is not valid TOML: {e}") from e
    return parse_witness_config(data, path)


def parse_witness_config(data: Mapping[str, Any], path: Path) -> WitnessServerConfig:
    """Turn parsed TOML into a validated ``WitnessServerConfig``.

    Raises:
        ConfigError: naming the first wrong, missing or contradictory setting.
    """
    base = path.parent
    Table(data, "").check_known({"witness", "logs"})
    t = Table(Table(data, "").table("witness"), "witness.", WitnessServerConfig)
    t.check_known(
        {
            "name",
            "listen",
            "key_file",
            "state",
            "tls_cert",
            "tls_key",
            "max_body_bytes",
            "max_connections",
            "timeout_seconds",
        }
    )
    name = t.get("name", str)
    try:
        check_key_name(name)
    except NoteFormatError as e:
        raise ConfigError(f"witness.name: {e.reason}") from None
    listen = t.get("listen", str)
    split_host_port(listen, "witness.listen")
    tls_cert, tls_key = t.get("tls_cert", str), t.get("tls_key", str)
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("witness.tls_cert / witness.tls_key: set both of them, or neither")
    max_body_bytes = t.get("max_body_bytes", int)
    if not MIN_BODY_BYTES <= max_body_bytes <= MAX_BODY_BYTES:
        raise ConfigError(
            f"witness.max_body_bytes: must be between {MIN_BODY_BYTES} and {MAX_BODY_BYTES}, "
            f"got {max_body_bytes}"
        )
    max_connections = t.get("max_connections", int)
    if not 1 <= max_connections <= MAX_CONNECTIONS:
        raise ConfigError(
            f"witness.max_connections: must be between 1 and {MAX_CONNECTIONS}, "
            f"got {max_connections}"
        )
    timeout = t.number("timeout_seconds")
    if not 0 < timeout <= 3600:
        raise ConfigError(
            f"witness.timeout_seconds: must be above 0 and at most 3600, got {timeout:g}"
        )
    return WitnessServerConfig(
        path=path,
        name=name,
        key_file=base / t.get("key_file", str),
        state=base / t.get("state", str),
        logs=_logs(data.get("logs")),
        listen=listen,
        tls_cert=None if tls_cert is None else base / tls_cert,
        tls_key=None if tls_key is None else base / tls_key,
        max_body_bytes=max_body_bytes,
        max_connections=max_connections,
        timeout_seconds=timeout,
    )


def _logs(value: object) -> tuple[TrustedLog, ...]:
    if value is None:
        raise ConfigError("logs: at least one [[logs]] table is required")
    if not isinstance(value, list) or not all(isinstance(entry, dict) for entry in value):
        raise ConfigError("logs: expected [[logs]] tables")
    if not value:
        raise ConfigError("logs: at least one [[logs]] table is required")
    logs: dict[str, TrustedLog] = {}
    for i, entry in enumerate(value):
        log = _log(Table(entry, f"logs[{i}].", TrustedLog))
        if log.origin in logs:
            raise ConfigError(f"logs[{i}].origin: {shown(log.origin)} is listed twice")
        logs[log.origin] = log
    return tuple(logs.values())


def _log(t: Table) -> TrustedLog:
    t.check_known({"origin", "vkeys"})
    origin = t.get("origin", str)
    try:
        # A log's key is named after its origin (tlog-checkpoint "Signatures"),
        # so the origin must be a valid key name too.
        check_key_name(origin)
    except NoteFormatError as e:
        raise ConfigError(f"{t.where}origin: {e.reason}") from None
    texts = t.get("vkeys", list, field="keys")
    if not texts:
        raise ConfigError(f"{t.where}vkeys: at least one verifier key is required")
    keys: list[VerifierKey] = []
    for j, text in enumerate(texts):
        where = f"{t.where}vkeys[{j}]"
        if not isinstance(text, str):
            raise ConfigError(f"{where}: expected a string, got {type(text).__name__}")
        try:
            key = parse_verifier_key(text)
        except NoteFormatError as e:
            raise ConfigError(f"{where}: {e.reason}") from None
        if key.sig_type != ED25519:
            raise ConfigError(
                f"{where}: a log key must be Ed25519 (type 0x01), not type 0x{key.sig_type:02x}"
            )
        if key.name != origin:
            raise ConfigError(
                f"{where}: the key is named {shown(key.name)}, not after the origin {shown(origin)}"
            )
        if key in keys:
            raise ConfigError(f"{where}: listed twice")
        keys.append(key)
    return TrustedLog(origin, tuple(keys))
