"""Configuration: one TOML file, parsed at the edge into frozen dataclasses.

Relative paths in the file are relative to the file's own directory. Secrets
(the HSM PIN) are never in the file: it names a file or an environment
variable that holds them. Every error names the setting at fault.

Example (what ``tuf-signer dev-init`` writes)::

    [server]
    listen = "127.0.0.1:50051"
    insecure = true              # plaintext; only allowed on a loopback address

    [audit]
    store = "sqlite"
    path = "audit.db"

    [backends.softhsm]
    type = "pkcs11"
    module = "/usr/lib/softhsm/libsofthsm2.so"
    token_label = "tuf-signer"
    pin_file = "hsm.pin"
    env = { SOFTHSM2_CONF = "softhsm2.conf" }

    [keys]
    default_backend = "softhsm"
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuf_signer.errors import ConfigError

DEFAULT_LISTEN = "127.0.0.1:50051"
# A 16,384-bin snapshot lists every bin and is MB-sized (PEP 458); leave room.
DEFAULT_MAX_PAYLOAD_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class ServerConfig:
    """The gRPC listener.

    Attributes:
        listen: ``HOST:PORT``; port 0 picks a free port.
        insecure: plaintext without TLS; refused unless HOST is loopback.
        max_payload_bytes: largest Sign payload accepted, in bytes.
        drain_seconds: how long SIGTERM waits for in-flight calls, in seconds.
        health_interval: seconds between backend and store health probes.
    """

    listen: str = DEFAULT_LISTEN
    insecure: bool = False
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    drain_seconds: float = 10.0
    health_interval: float = 10.0


@dataclass(frozen=True)
class AuditConfig:
    """Where the audit record, role state and key registry live."""

    store: str = "sqlite"
    path: Path = Path("audit.db")


@dataclass(frozen=True)
class SecretSource:
    """Where a secret is read from: a file (mode 0600) or an environment variable.

    The value itself is never kept in a config object, so it cannot leak
    through ``repr`` or a traceback.
    """

    setting: str
    file: Path | None = None
    env: str | None = None

    def reader(self) -> Callable[[], str]:
        """A callable that reads the secret when it is needed.

        Raises (when called):
            ConfigError: the file or variable is missing or empty.
        """

        def read() -> str:
            if self.file is not None:
                try:
                    value = self.file.read_text(encoding="utf-8").strip()
                except OSError as e:
                    raise ConfigError(
                        f"{self.setting}: cannot read {self.file}: {e.strerror}"
                    ) from e
                where = str(self.file)
            else:
                assert self.env is not None
                value = os.environ.get(self.env, "").strip()
                where = f"environment variable {self.env}"
            if not value:
                raise ConfigError(f"{self.setting}: {where} is empty or missing")
            return value

        return read


@dataclass(frozen=True)
class Pkcs11Config:
    """A PKCS#11 token (SoftHSM locally, a network HSM in production)."""

    name: str
    module: Path
    token_label: str
    pin: SecretSource
    env: Mapping[str, str] = field(default_factory=dict)


BackendConfig = Pkcs11Config


@dataclass(frozen=True)
class Config:
    """The whole service configuration."""

    path: Path
    server: ServerConfig
    audit: AuditConfig
    backends: Mapping[str, BackendConfig]
    default_backend: str


def _table(data: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}{key}: expected a table")
    return value


def _get(
    table: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any
) -> Any:
    if key not in table:
        if default is _REQUIRED:
            raise ConfigError(f"{where}{key}: missing required setting")
        return default
    value = table[key]
    # bool is an int in Python; refuse `true` where a number is expected.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ConfigError(f"{where}{key}: expected {_kind_name(kind)}, got a boolean")
    if not isinstance(value, kind):
        raise ConfigError(f"{where}{key}: expected {_kind_name(kind)}, got {type(value).__name__}")
    return value


_REQUIRED = object()


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _unknown(table: Mapping[str, Any], known: set[str], where: str) -> None:
    extra = sorted(set(table) - known)
    if extra:
        raise ConfigError(f"{where}{extra[0]}: unknown setting")


def split_host_port(listen: str, setting: str = "server.listen") -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` for IPv6).

    Raises:
        ConfigError: not of that form.
    """
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{setting}: expected HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and addresses in 127.0.0.0/8 or ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen(server: ServerConfig) -> None:
    """Refuse a plaintext listener anywhere but loopback.

    Raises:
        ConfigError: ``insecure`` is off (TLS is not configured) or the host
            is not a loopback address.
    """
    host, _ = split_host_port(server.listen)
    if not server.insecure:
        raise ConfigError(
            "server.insecure: TLS settings are not configured, so the listener must be "
            "declared plaintext with `insecure = true` (loopback only)"
        )
    if not is_loopback(host):
        raise ConfigError(
            f"server.listen: a plaintext (insecure) listener must be on a loopback "
            f"address, not {host!r}"
        )


def _secret(table: Mapping[str, Any], prefix: str, base: Path, where: str) -> SecretSource:
    file = _get(table, f"{prefix}_file", str, where, None)
    env = _get(table, f"{prefix}_env", str, where, None)
    if (file is None) == (env is None):
        raise ConfigError(f"{where}{prefix}_file / {prefix}_env: set exactly one of them")
    if f"{prefix}" in table:
        raise ConfigError(
            f"{where}{prefix}: secrets are never written in the config; "
            f"use {prefix}_file or {prefix}_env"
        )
    return SecretSource(
        setting=f"{where}{prefix}",
        file=(base / file) if file is not None else None,
        env=env,
    )


def _backend(name: str, table: Mapping[str, Any], base: Path) -> BackendConfig:
    where = f"backends.{name}."
    kind = _get(table, "type", str, where, _REQUIRED)
    if kind != "pkcs11":
        raise ConfigError(f"{where}type: unknown backend type {kind!r} (supported: 'pkcs11')")
    _unknown(table, {"type", "module", "token_label", "pin_file", "pin_env", "pin", "env"}, where)
    env = _table(table, "env", where)
    for key, value in env.items():
        if not isinstance(value, str):
            raise ConfigError(f"{where}env.{key}: expected a string")
    # Paths in `env` are resolved like every other relative path in this file.
    resolved_env = {
        k: str(base / v) if k.endswith("_CONF") and not os.path.isabs(v) else v
        for k, v in env.items()
    }
    return Pkcs11Config(
        name=name,
        module=base / _get(table, "module", str, where, _REQUIRED),
        token_label=_get(table, "token_label", str, where, _REQUIRED),
        pin=_secret(table, "pin", base, where),
        env=resolved_env,
    )


def parse_config(data: Mapping[str, Any], path: Path) -> Config:
    """Turn parsed TOML into a validated ``Config``.

    Raises:
        ConfigError: naming the first wrong, missing or contradictory setting.
    """
    base = path.parent
    _unknown(data, {"server", "audit", "backends", "keys"}, "")
    s = _table(data, "server", "")
    _unknown(
        s,
        {"listen", "insecure", "max_payload_bytes", "drain_seconds", "health_interval"},
        "server.",
    )
    server = ServerConfig(
        listen=_get(s, "listen", str, "server.", DEFAULT_LISTEN),
        insecure=_get(s, "insecure", bool, "server.", False),
        max_payload_bytes=_get(s, "max_payload_bytes", int, "server.", DEFAULT_MAX_PAYLOAD_BYTES),
        drain_seconds=float(_get(s, "drain_seconds", (int, float), "server.", 10.0)),
        health_interval=float(_get(s, "health_interval", (int, float), "server.", 10.0)),
    )
    split_host_port(server.listen)
    if server.max_payload_bytes < 1024:
        raise ConfigError("server.max_payload_bytes: must be at least 1024")
    if server.drain_seconds < 0 or server.health_interval <= 0:
        raise ConfigError("server.drain_seconds / server.health_interval: must be positive")

    a = _table(data, "audit", "")
    _unknown(a, {"store", "path"}, "audit.")
    store = _get(a, "store", str, "audit.", "sqlite")
    if store != "sqlite":
        raise ConfigError(f"audit.store: unknown store {store!r} (supported: 'sqlite')")
    audit = AuditConfig(store=store, path=base / _get(a, "path", str, "audit.", "audit.db"))

    b = _table(data, "backends", "")
    if not b:
        raise ConfigError("backends: at least one backend is required")
    backends: dict[str, BackendConfig] = {}
    for name, table in b.items():
        if not isinstance(table, dict):
            raise ConfigError(f"backends.{name}: expected a table")
        backends[name] = _backend(name, table, base)

    k = _table(data, "keys", "")
    _unknown(k, {"default_backend"}, "keys.")
    default_backend = _get(k, "default_backend", str, "keys.", next(iter(backends)))
    if default_backend not in backends:
        raise ConfigError(f"keys.default_backend: no backend named {default_backend!r}")
    return Config(
        path=path,
        server=server,
        audit=audit,
        backends=backends,
        default_backend=default_backend,
    )


def load_config(path: Path | str) -> Config:
    """Read and validate a TOML config file.

    Raises:
        ConfigError: the file cannot be read, is not TOML, or a setting is wrong.
    """
    path = Path(path).resolve()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"config: cannot read {path}: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config: {path} is not valid TOML: {e}") from e
    return parse_config(data, path)
