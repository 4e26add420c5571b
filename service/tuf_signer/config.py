"""Configuration: one TOML file, parsed at the edge into frozen dataclasses.

Relative paths in the file are relative to the file's own directory. Secrets
(the HSM PIN, a database password) are never in the file: it names a file or
an environment variable that holds them. Every error names the setting at fault.

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

import dataclasses
import os
import re
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuf_signer._net import check_plaintext_credentials, is_loopback, split_host_port
from tuf_signer.errors import ConfigError, TufSignerError
from tuf_signer.keys import DEFAULT_CALL_TIMEOUT, DEFAULT_CREATE_TIMEOUT
from tuf_signer.policy import AccessPolicy, AccessRule, identity_type

if TYPE_CHECKING:
    from tuf_signer.audit import AuditStore

DEFAULT_LISTEN = "127.0.0.1:50051"
# A 16,384-bin snapshot lists every bin and is MB-sized (PEP 458); leave room.
DEFAULT_MAX_PAYLOAD_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class TlsConfig:
    """The server's mutual-TLS material (PEM files).

    Attributes:
        cert: the server certificate chain.
        key: its private key; a secret: mode 0600 or stricter.
        client_ca: CA certificates that client certificates must chain to.
        allow_cn_identity: name a client by its subject CN (``cn:…``) when its
            certificate has no SAN URI or DNS name; off by default.
        require_single_uri: a client certificate must carry exactly one SAN URI.
        crl: a CRL (PEM or DER; several PEM CRLs may be concatenated) issued by
            a CA in ``client_ca``; reloaded on SIGHUP.
        deny_list: a text file of revoked client certificates, one serial
            number or SHA-256 fingerprint (hex) per line; reloaded on SIGHUP.
    """

    cert: Path
    key: Path
    client_ca: Path
    allow_cn_identity: bool = False
    require_single_uri: bool = False
    crl: Path | None = None
    deny_list: Path | None = None


@dataclass(frozen=True)
class ServerConfig:
    """The gRPC listener.

    Attributes:
        listen: ``HOST:PORT``; port 0 picks a free port.
        insecure: plaintext without TLS; refused unless HOST is loopback.
        tls: mutual TLS (required unless ``insecure``).
        max_payload_bytes: largest Sign payload accepted, in bytes.
        drain_seconds: how long SIGTERM waits for in-flight calls, in seconds.
        health_interval: seconds between backend and store health probes.
        call_deadline: the longest any call may run on the server, in seconds.
        max_batch_items: most requests in one SignBatch.
        max_batch_bytes: largest SignBatch message, in bytes (gRPC refuses
            larger messages before reading them).
        workers: server processes sharing the port (one per core is best).
        check_processes: payload-checker processes per worker, for payloads
            too large or too unusual to check on the event loop.
        check_timeout: seconds one such check may take before the request
            is refused (RESOURCE_EXHAUSTED) and its checker process replaced
            (default 10, at most half of ``call_deadline`` when not set).
    """

    listen: str = DEFAULT_LISTEN
    insecure: bool = False
    tls: TlsConfig | None = None
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    drain_seconds: float = 10.0
    health_interval: float = 10.0
    call_deadline: float = 30.0
    max_batch_items: int = 4096
    max_batch_bytes: int = 64 * 1024 * 1024
    workers: int = 1
    check_processes: int = 1
    check_timeout: float = 10.0


@dataclass(frozen=True)
class LimitsConfig:
    """Per-identity abuse limits (an access rule may override each).

    Attributes:
        max_concurrent: calls one identity may have in flight at once.
        rate: sustained calls per second for one identity (token bucket).
        burst: calls one identity may make at once above ``rate``.
        bytes_rate: sustained request payload bytes per second for one identity.
        bytes_burst: payload bytes one identity may send at once above
            ``bytes_rate`` (the default fits one re-sign of PEP 458's 16,384
            bins of ~54 KB).
        check_cpu_rate: CPU seconds per second of off-loop payload checks
            (payloads over 64 KiB, or that need the exact canonical check)
            one identity may use, sustained.
        check_cpu_burst: CPU seconds of such checks it may use at once.
        summary_seconds: callers without an identity or access rule, and
            calls over a limit, are counted and written as one summary record
            per identity and status every this many seconds, not one each.
    """

    max_concurrent: int = 256
    rate: float = 5000.0
    burst: int = 10000
    bytes_rate: float = 256.0 * 1024 * 1024
    bytes_burst: int = 1024 * 1024 * 1024
    check_cpu_rate: float = 1.0
    check_cpu_burst: float = 30.0
    summary_seconds: float = 10.0


@dataclass(frozen=True)
class AuditConfig:
    """Where the audit record, role state and key registry live.

    Attributes:
        store: ``sqlite`` (one file) or ``postgres`` (a database server that
            several workers and instances share).
        path: the SQLite database file (store ``sqlite``).
        dsn: the PostgreSQL connection string, written in the file; never
            holds a password (store ``postgres``; this or ``dsn_env``).
        dsn_env: the environment variable that holds the connection string,
            which may hold a password (store ``postgres``).
    """

    store: str = "sqlite"
    path: Path = Path("audit.db")
    dsn: str | None = None
    dsn_env: str | None = None

    def read_dsn(self) -> str:
        """The PostgreSQL connection string, read from the environment if need be.

        Raises:
            ConfigError: neither is set; ``dsn_env`` names a variable that is
                missing, empty or not a connection string; or psycopg is missing.
        """
        if self.dsn is not None:
            return self.dsn
        if self.dsn_env is None:
            raise ConfigError("audit.dsn / audit.dsn_env: set exactly one of them")
        dsn = SecretSource(setting="audit.dsn_env", env=self.dsn_env).reader()()
        _dsn_secrets(dsn, f"audit.dsn_env ({self.dsn_env})")
        return dsn


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


@dataclass(frozen=True)
class GcpKmsConfig:
    """A Google Cloud KMS key ring (backend type ``gcpkms``).

    Attributes:
        name: the backend's name.
        project: Google Cloud project id.
        location: KMS location, e.g. ``global`` or ``europe-west1``.
        key_ring: key ring id; created with the first key if it is missing.
        credentials_file: a service-account (or workload identity federation)
            JSON file, mode 0600; None for Application Default Credentials.
        endpoint: ``HOST:PORT`` instead of ``cloudkms.googleapis.com``. A
            loopback address is spoken to in plaintext without credentials
            (the fake KMS); any other endpoint uses TLS.
        protection_level: ``HSM`` or ``SOFTWARE``, for new keys.
        call_timeout: budget of one sign, public-key read or disable, retries
            and backoff included, in seconds.
        create_timeout: budget of one key creation, including the wait for
            KMS to generate the key, in seconds.
    """

    name: str
    project: str
    location: str
    key_ring: str
    credentials_file: Path | None = None
    endpoint: str | None = None
    protection_level: str = "HSM"
    call_timeout: float = DEFAULT_CALL_TIMEOUT
    create_timeout: float = DEFAULT_CREATE_TIMEOUT


BackendConfig = Pkcs11Config | GcpKmsConfig


# The role classes of TUF metadata an online key signs (``_type``): bins are targets.
ROLE_CLASSES = ("timestamp", "snapshot", "targets")

# 1,000,000 versions for each class. Repositories step by 1 per signature; a
# timestamp re-signed every minute for a year is ~525,600 versions, so even a
# repository that counts signatures it never sent us stays well inside. A
# compromised backend taking the largest step each time needs ~9.2e12 signatures
# (each on the record) to reach 2**63 - 1: at 10,000 signatures/s, 29 years.
DEFAULT_MAX_VERSION_STEP = 1_000_000


@dataclass(frozen=True)
class PolicyConfig:
    """Limits on what a signature may do to a role's high-water mark.

    Attributes:
        max_version_step: by role class (``_type``: timestamp, snapshot,
            targets), the largest step in versions above the mark (the last
            version signed, 0 for a role never signed). A repository that
            starts or moves on beyond it needs an admin reset first
            (``tuf-signer keys reset-role``).
    """

    max_version_step: Mapping[str, int] = field(
        default_factory=lambda: dict.fromkeys(ROLE_CLASSES, DEFAULT_MAX_VERSION_STEP)
    )


@dataclass(frozen=True)
class Config:
    """The whole service configuration."""

    path: Path
    server: ServerConfig
    audit: AuditConfig
    backends: Mapping[str, BackendConfig]
    default_backend: str
    authz: AccessPolicy = field(default_factory=AccessPolicy)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)


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


def check_listen(server: ServerConfig) -> None:
    """Mutual TLS, or plaintext only when declared and only on loopback.

    Raises:
        ConfigError: no TLS and not ``insecure``; both; or a plaintext listener
            on an address that is not loopback.
    """
    host, port = split_host_port(server.listen)
    if server.workers > 1 and port == 0:
        raise ConfigError("server.workers: several workers need a fixed port, not port 0")
    if server.insecure:
        if server.tls is not None:
            raise ConfigError("server.insecure: contradicts [server.tls]; remove one of them")
        if not is_loopback(host):
            raise ConfigError(
                f"server.listen: a plaintext (insecure) listener must be on a loopback "
                f"address, not {host!r}"
            )
    elif server.tls is None:
        raise ConfigError(
            "server.tls: mutual TLS is required (cert, key, client_ca); for a plaintext "
            "loopback listener set `insecure = true` explicitly"
        )


def check_secret_file(path: Path, setting: str) -> None:
    """Refuse a secret file that others could read or change.

    Raises:
        ConfigError: the file is missing, not a regular file, or its mode lets
            group or others read or write it.
    """
    try:
        st = path.stat()
    except OSError as e:
        raise ConfigError(f"{setting}: cannot read {path}: {e.strerror}") from e
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{setting}: {path} is not a regular file")
    if st.st_mode & 0o077:
        raise ConfigError(
            f"{setting}: {path} is accessible to group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run chmod 600 on it"
        )


def check_secrets(config: Config) -> None:
    """Check every secret file the server will read (run at server start).

    Raises:
        ConfigError: naming the first secret file that is unsafe.
    """
    if config.server.tls is not None:
        check_secret_file(config.server.tls.key, "server.tls.key")
        for name in ("cert", "client_ca", "crl", "deny_list"):
            path = getattr(config.server.tls, name)
            if path is not None and not path.is_file():
                raise ConfigError(f"server.tls.{name}: {path} does not exist")
    for name, backend in config.backends.items():
        pin = getattr(backend, "pin", None)
        if isinstance(pin, SecretSource) and pin.file is not None:
            check_secret_file(pin.file, f"backends.{name}.pin_file")


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


# Cloud KMS resource ids (https://cloud.google.com/kms/docs/resource-hierarchy).
_KMS_ID = re.compile(r"[a-zA-Z0-9_-]{1,63}")
_GCP_PROJECT = re.compile(r"[a-z0-9][a-z0-9.:-]{0,99}")
_KMS_LOCATION = re.compile(r"[a-z][a-z0-9-]{0,62}")


def _gcpkms_backend(name: str, table: Mapping[str, Any], base: Path) -> GcpKmsConfig:
    where = f"backends.{name}."
    _unknown(
        table,
        {
            "type",
            "project",
            "location",
            "key_ring",
            "credentials_file",
            "endpoint",
            "protection_level",
            "call_timeout",
            "create_timeout",
        },
        where,
    )
    project = _get(table, "project", str, where, _REQUIRED)
    if not _GCP_PROJECT.fullmatch(project):
        raise ConfigError(f"{where}project: {project!r} is not a Google Cloud project id")
    location = _get(table, "location", str, where, _REQUIRED)
    if not _KMS_LOCATION.fullmatch(location):
        raise ConfigError(f"{where}location: {location!r} is not a KMS location")
    key_ring = _get(table, "key_ring", str, where, _REQUIRED)
    if not _KMS_ID.fullmatch(key_ring):
        raise ConfigError(f"{where}key_ring: {key_ring!r} must match [a-zA-Z0-9_-]{{1,63}}")
    endpoint = _get(table, "endpoint", str, where, None)
    if endpoint is not None:
        split_host_port(endpoint, f"{where}endpoint")
    credentials = _get(table, "credentials_file", str, where, None)
    check_plaintext_credentials(endpoint, credentials, f"{where}credentials_file")
    level = _get(table, "protection_level", str, where, "hsm").upper()
    if level not in ("HSM", "SOFTWARE"):
        raise ConfigError(f"{where}protection_level: expected 'hsm' or 'software'")
    timeouts = {}
    for key, default in (
        ("call_timeout", DEFAULT_CALL_TIMEOUT),
        ("create_timeout", DEFAULT_CREATE_TIMEOUT),
    ):
        value = float(_get(table, key, (int, float), where, default))
        if not 0 < value <= 3600:
            raise ConfigError(f"{where}{key}: must be between 0 and 3600 seconds")
        timeouts[key] = value
    return GcpKmsConfig(
        name=name,
        project=project,
        location=location,
        key_ring=key_ring,
        credentials_file=(base / credentials) if credentials is not None else None,
        endpoint=endpoint,
        protection_level=level,
        **timeouts,
    )


def _backend(name: str, table: Mapping[str, Any], base: Path) -> BackendConfig:
    where = f"backends.{name}."
    kind = _get(table, "type", str, where, _REQUIRED)
    if kind == "gcpkms":
        return _gcpkms_backend(name, table, base)
    if kind != "pkcs11":
        raise ConfigError(
            f"{where}type: unknown backend type {kind!r} (supported: 'pkcs11', 'gcpkms')"
        )
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
    _unknown(data, {"server", "audit", "backends", "keys", "authz", "limits", "policy"}, "")
    server = _server(_table(data, "server", ""), base)

    audit = _audit(_table(data, "audit", ""), base)

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
        authz=_authz(
            _table(data, "authz", ""),
            allow_cn=server.tls is not None and server.tls.allow_cn_identity,
        ),
        limits=_limits(_table(data, "limits", ""), "limits."),
        policy=_policy(_table(data, "policy", "")),
    )


def _policy(p: Mapping[str, Any]) -> PolicyConfig:
    _unknown(p, {"max_version_step"}, "policy.")
    steps = dict.fromkeys(ROLE_CLASSES, DEFAULT_MAX_VERSION_STEP)
    table = _table(p, "max_version_step", "policy.")
    where = "policy.max_version_step."
    _unknown(table, set(ROLE_CLASSES), where)
    for role_class in ROLE_CLASSES:
        step = _get(table, role_class, int, where, DEFAULT_MAX_VERSION_STEP)
        if not 1 <= step <= 2**63 - 1:
            raise ConfigError(f"{where}{role_class}: must be between 1 and 2**63-1, got {step}")
        steps[role_class] = step
    return PolicyConfig(max_version_step=steps)


_STORE_SETTINGS = {"sqlite": {"path"}, "postgres": {"dsn", "dsn_env"}}


def _audit(a: Mapping[str, Any], base: Path) -> AuditConfig:
    _unknown(a, {"store", *(key for keys in _STORE_SETTINGS.values() for key in keys)}, "audit.")
    store = _get(a, "store", str, "audit.", "sqlite")
    if store not in _STORE_SETTINGS:
        raise ConfigError(f"audit.store: unknown store {store!r} (supported: 'sqlite', 'postgres')")
    for other, keys in _STORE_SETTINGS.items():
        for key in sorted(keys & a.keys()):
            if other != store:
                raise ConfigError(f"audit.{key}: only for store {other!r}, not {store!r}")
    if store == "sqlite":
        return AuditConfig(store=store, path=base / _get(a, "path", str, "audit.", "audit.db"))
    dsn = _get(a, "dsn", str, "audit.", None)
    dsn_env = _get(a, "dsn_env", str, "audit.", None)
    if (dsn is None) == (dsn_env is None):
        raise ConfigError("audit.dsn / audit.dsn_env: set exactly one of them")
    if dsn_env is not None and not dsn_env.strip():
        raise ConfigError("audit.dsn_env: names no environment variable")
    if dsn is not None:
        _check_dsn(dsn)
    return AuditConfig(store=store, dsn=dsn, dsn_env=dsn_env)


def _dsn_secrets(dsn: str, setting: str) -> list[str]:
    """The names of the secrets in a connection string that must parse.

    Raises:
        ConfigError: psycopg is missing, or ``dsn`` is not a connection string
            (the message never repeats it).
    """
    from tuf_signer.audit import dsn_secrets

    try:
        return dsn_secrets(dsn)
    except TufSignerError as e:
        raise ConfigError(f"{setting}: {e.reason}") from e


def _check_dsn(dsn: str) -> None:
    """A connection string written in the file must parse and hold no password."""
    if not dsn.strip():
        raise ConfigError("audit.dsn: empty; write a libpq connection string")
    secrets = _dsn_secrets(dsn, "audit.dsn")
    if secrets:
        raise ConfigError(
            f"audit.dsn: holds a {secrets[0]}, and secrets are never written in the config; "
            "put the connection string in an environment variable named by audit.dsn_env, "
            "or the password in a libpq password file (passfile)"
        )


def _server(s: Mapping[str, Any], base: Path) -> ServerConfig:
    _unknown(
        s,
        {
            "listen",
            "insecure",
            "tls",
            "max_payload_bytes",
            "drain_seconds",
            "health_interval",
            "call_deadline_seconds",
            "max_batch_items",
            "max_batch_bytes",
            "workers",
            "check_processes",
            "check_timeout_seconds",
        },
        "server.",
    )
    tls = None
    if "tls" in s:
        t = _table(s, "tls", "server.")
        _unknown(
            t,
            {
                "cert",
                "key",
                "client_ca",
                "allow_cn_identity",
                "require_single_uri",
                "crl",
                "deny_list",
            },
            "server.tls.",
        )
        crl = _get(t, "crl", str, "server.tls.", None)
        deny_list = _get(t, "deny_list", str, "server.tls.", None)
        tls = TlsConfig(
            cert=base / _get(t, "cert", str, "server.tls.", _REQUIRED),
            key=base / _get(t, "key", str, "server.tls.", _REQUIRED),
            client_ca=base / _get(t, "client_ca", str, "server.tls.", _REQUIRED),
            allow_cn_identity=_get(t, "allow_cn_identity", bool, "server.tls.", False),
            require_single_uri=_get(t, "require_single_uri", bool, "server.tls.", False),
            crl=base / crl if crl is not None else None,
            deny_list=base / deny_list if deny_list is not None else None,
        )
    server = ServerConfig(
        listen=_get(s, "listen", str, "server.", DEFAULT_LISTEN),
        insecure=_get(s, "insecure", bool, "server.", False),
        tls=tls,
        max_payload_bytes=_get(s, "max_payload_bytes", int, "server.", DEFAULT_MAX_PAYLOAD_BYTES),
        drain_seconds=float(_get(s, "drain_seconds", (int, float), "server.", 10.0)),
        health_interval=float(_get(s, "health_interval", (int, float), "server.", 10.0)),
        call_deadline=float(_get(s, "call_deadline_seconds", (int, float), "server.", 30.0)),
        max_batch_items=_get(s, "max_batch_items", int, "server.", 4096),
        max_batch_bytes=_get(s, "max_batch_bytes", int, "server.", 64 * 1024 * 1024),
        workers=_get(s, "workers", int, "server.", 1),
        check_processes=_get(s, "check_processes", int, "server.", 1),
        check_timeout=float(_get(s, "check_timeout_seconds", (int, float), "server.", 0.0)),
    )
    split_host_port(server.listen)
    if server.max_payload_bytes < 1024:
        raise ConfigError("server.max_payload_bytes: must be at least 1024")
    if server.drain_seconds < 0 or server.health_interval <= 0:
        raise ConfigError("server.drain_seconds / server.health_interval: must be positive")
    if server.max_batch_items < 1 or server.max_batch_bytes < server.max_payload_bytes:
        raise ConfigError(
            "server.max_batch_items / max_batch_bytes: at least 1 item, and room for "
            "one payload of max_payload_bytes"
        )
    if not 1 <= server.workers <= 64:
        raise ConfigError("server.workers: must be between 1 and 64")
    if not 0 < server.call_deadline <= 3600:
        raise ConfigError("server.call_deadline_seconds: must be between 0 and 3600")
    if not 1 <= server.check_processes <= 16:
        raise ConfigError("server.check_processes: must be between 1 and 16")
    if server.check_timeout == 0.0 and "check_timeout_seconds" not in s:
        # Default: 10 s, and in any case half the call deadline.
        server = dataclasses.replace(server, check_timeout=min(10.0, server.call_deadline / 2))
    if not 0 < server.check_timeout < server.call_deadline:
        raise ConfigError(
            "server.check_timeout_seconds: must be positive and below call_deadline_seconds"
        )
    return server


def _limits(t: Mapping[str, Any], where: str, base: LimitsConfig | None = None) -> LimitsConfig:
    names: dict[str, type | tuple[type, ...]] = {
        "max_concurrent": int,
        "rate": (int, float),
        "burst": int,
        "bytes_rate": (int, float),
        "bytes_burst": int,
        "check_cpu_rate": (int, float),
        "check_cpu_burst": (int, float),
        "summary_seconds": (int, float),
    }
    _unknown(t, set(names), where)
    d = base or LimitsConfig()
    values: dict[str, Any] = {}
    for name, kind in names.items():
        value = _get(t, name, kind, where, getattr(d, name))
        if not value > 0:
            raise ConfigError(f"{where}{name}: must be positive")
        values[name] = float(value) if kind is not int else value
    if values["summary_seconds"] > 3600:
        raise ConfigError(f"{where}summary_seconds: at most 3600 (one summary record an hour)")
    return LimitsConfig(**values)


def _str_list(t: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = _get(t, key, list, where, [])
    if not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}{key}: expected a list of strings")
    return tuple(value)


def _authz(a: Mapping[str, Any], allow_cn: bool) -> AccessPolicy:
    """The access rules; a ``cn:`` identity only when CN identities are on."""
    _unknown(a, {"rules"}, "authz.")
    rules = _get(a, "rules", list, "authz.", [])
    parsed = []
    for i, r in enumerate(rules):
        where = f"authz.rules[{i}]."
        if not isinstance(r, dict):
            raise ConfigError(f"authz.rules[{i}]: expected a table ([[authz.rules]])")
        _unknown(
            r,
            {"identity", "operations", "keys", "roles", "max_concurrent", "rate", "burst"},
            where,
        )
        rate = _get(r, "rate", (int, float), where, None)
        parsed.append(
            AccessRule(
                identity=_get(r, "identity", str, where, _REQUIRED),
                operations=frozenset(_str_list(r, "operations", where)),
                keys=_str_list(r, "keys", where),
                roles=_str_list(r, "roles", where),
                max_concurrent=_get(r, "max_concurrent", int, where, None),
                rate=float(rate) if rate is not None else None,
                burst=_get(r, "burst", int, where, None),
            )
        )
    policy = AccessPolicy.from_rules(parsed)
    for i, rule in enumerate(parsed):
        if identity_type(rule.identity) == "cn" and not allow_cn:
            raise ConfigError(
                f"authz.rules[{i}].identity: a cn: identity never matches unless "
                "[server.tls] allow_cn_identity = true (prefer a SAN URI: uri:…)"
            )
    return policy


def open_audit_store(audit: AuditConfig, *, create: bool = True) -> AuditStore:
    """Open the configured audit store (``audit.store``).

    Args:
        audit: the ``[audit]`` settings.
        create: create the database (SQLite) or its tables (PostgreSQL) when
            missing; False for the offline ``audit`` commands, which must not
            conjure up an empty record.

    Raises:
        ConfigError: the connection string's variable is unset or invalid, or
            (with ``create=False``) the SQLite file does not exist.
        StoreError: the store cannot be opened.
    """
    from tuf_signer.audit import PostgresAuditStore, SqliteAuditStore

    if audit.store == "postgres":
        return PostgresAuditStore(audit.read_dsn(), create=create)
    if not create and not audit.path.exists():
        raise ConfigError(f"audit.path: {audit.path} does not exist")
    return SqliteAuditStore(audit.path)


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
