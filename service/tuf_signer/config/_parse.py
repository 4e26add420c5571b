"""From TOML to a validated ``Config``: every error names the setting at fault."""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tuf_signer._net import is_loopback, split_host_port
from tuf_signer.config._backends import parse_backend
from tuf_signer.config._reader import FIELD, REQUIRED, Table, field_default, sub_table
from tuf_signer.config._secrets import check_dsn
from tuf_signer.config._settings import (
    ROLE_CLASSES,
    AuditConfig,
    BackendConfig,
    Config,
    LimitsConfig,
    LogConfig,
    OpsConfig,
    PolicyConfig,
    ServerConfig,
    TlsConfig,
    WitnessConfig,
)
from tuf_signer.errors import ConfigError
from tuf_signer.policy import AccessPolicy, AccessRule, identity_type


def load_config(path: Path | str) -> Config:
    """Read and validate a TOML config file.

    Raises:
        ConfigError: the file cannot be read, is not TOML, or a setting is wrong.
    """
    path = Path(path).resolve()
    return parse_config(read_toml(path), path)


def read_toml(path: Path) -> dict[str, Any]:
    """The parsed TOML of a config file.

    Raises:
        ConfigError: the file cannot be read or is not TOML.
    """
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"config: cannot read {path}: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config: {path} is not valid TOML: {e}") from e


def parse_config(data: Mapping[str, Any], path: Path) -> Config:
    """Turn parsed TOML into a validated ``Config``.

    Raises:
        ConfigError: naming the first wrong, missing or contradictory setting.
    """
    base = path.parent
    top = Table(data, "")
    top.check_known({"server", "audit", "backends", "keys", "authz", "limits", "policy", "ops"})
    server = _server(top.table("server"), base)

    audit = parse_audit(top.table("audit"), base)

    b = top.table("backends")
    if not b:
        raise ConfigError("backends: at least one backend is required")
    backends: dict[str, BackendConfig] = {}
    for name, table in b.items():
        if not isinstance(table, dict):
            raise ConfigError(f"backends.{name}: expected a table")
        backends[name] = parse_backend(name, table, base)

    k = Table(top.table("keys"), "keys.")
    k.check_known({"default_backend"})
    default_backend = k.get("default_backend", str, next(iter(backends)))
    if default_backend not in backends:
        raise ConfigError(f"keys.default_backend: no backend named {default_backend!r}")
    if audit.log is not None and audit.log.key_backend not in backends:
        raise ConfigError(f"audit.key.backend: no backend named {audit.log.key_backend!r}")
    limits = _limits(top.table("limits"))
    _check_inflight(limits, server)
    return Config(
        path=path,
        server=server,
        audit=audit,
        backends=backends,
        default_backend=default_backend,
        authz=_authz(
            top.table("authz"),
            allow_cn=server.tls is not None and server.tls.allow_cn_identity,
        ),
        limits=limits,
        policy=_policy(top.table("policy")),
        ops=_ops(top.table("ops")),
    )


def _ops(o: Mapping[str, Any]) -> OpsConfig:
    t = Table(o, "ops.", OpsConfig)
    t.check_known(
        {
            "listen",
            "allow_non_loopback",
            "expiry_margin_seconds",
            "freshness_interval_seconds",
            "log_format",
            "request_log",
        }
    )
    ops = OpsConfig(
        listen=t.get("listen", str),
        allow_non_loopback=t.get("allow_non_loopback", bool),
        expiry_margin_seconds=t.number("expiry_margin_seconds"),
        freshness_interval_seconds=t.number("freshness_interval_seconds"),
        log_format=t.get("log_format", str),
        request_log=t.get("request_log", str),
    )
    if ops.listen:
        # Plaintext, like server.insecure: loopback unless explicitly allowed.
        host, _port = split_host_port(ops.listen, "ops.listen")
        if not is_loopback(host) and not ops.allow_non_loopback:
            raise ConfigError(
                f"ops.listen: the plaintext ops listener must be on a loopback address, "
                f"not {host!r}, unless ops.allow_non_loopback = true"
            )
    if not ops.expiry_margin_seconds > 0:
        raise ConfigError("ops.expiry_margin_seconds: must be positive")
    if not 0 < ops.freshness_interval_seconds <= 3600:
        raise ConfigError("ops.freshness_interval_seconds: must be between 0 and 3600")
    if ops.log_format not in ("text", "json"):
        raise ConfigError(f"ops.log_format: expected text or json, got {ops.log_format!r}")
    if ops.request_log not in ("all", "refused", "none"):
        raise ConfigError(
            f"ops.request_log: expected all, refused or none, got {ops.request_log!r}"
        )
    return ops


def _policy(p: Mapping[str, Any]) -> PolicyConfig:
    top = Table(p, "policy.")
    top.check_known({"max_version_step", "max_clock_skew", "activate_on_pinned_sign"})
    activate = top.get(
        "activate_on_pinned_sign", bool, field_default(PolicyConfig, "activate_on_pinned_sign")
    )
    skew = top.get("max_clock_skew", int, field_default(PolicyConfig, "max_clock_skew"))
    if not 0 <= skew <= 3600:
        raise ConfigError(f"policy.max_clock_skew: must be between 0 and 3600 seconds, got {skew}")
    defaults = field_default(PolicyConfig, "max_version_step")
    t = Table(sub_table(p, "max_version_step", "policy."), "policy.max_version_step.")
    t.check_known(ROLE_CLASSES)
    steps = {}
    for role_class in ROLE_CLASSES:
        step = t.get(role_class, int, defaults[role_class])
        if not 1 <= step <= 2**63 - 1:
            raise ConfigError(f"{t.where}{role_class}: must be between 1 and 2**63-1, got {step}")
        steps[role_class] = step
    return PolicyConfig(
        max_version_step=steps, max_clock_skew=skew, activate_on_pinned_sign=activate
    )


_STORE_SETTINGS = {"sqlite": {"path"}, "postgres": {"dsn", "dsn_env"}}
_LOG_SETTINGS = {
    "origin",
    "key",
    "checkpoint_interval_seconds",
    "witnesses",
    "witness_quorum",
    "witness_timeout_seconds",
    "max_unwitnessed_records",
    "max_unwitnessed_seconds",
}


def parse_audit(a: Mapping[str, Any], base: Path, *, signing: bool = True) -> AuditConfig:
    """The ``[audit]`` table.

    Args:
        a: the table.
        base: the directory relative paths are relative to.
        signing: False for an auditor's copy of the config (``audit verify``),
            where ``audit.key`` may be left out: nothing signs there.

    Raises:
        ConfigError: naming the first wrong setting.
    """
    t = Table(a, "audit.", AuditConfig)
    t.check_known(
        {"store", *_LOG_SETTINGS, *(key for keys in _STORE_SETTINGS.values() for key in keys)}
    )
    log = _log(a, signing)
    return replace(_store(a, t, base), log=log)


def _log(a: Mapping[str, Any], signing: bool) -> LogConfig | None:
    """The ``[audit]`` settings of the checkpoints and witnesses (issue 13)."""
    # Lazily: tuf_signer.audit imports this package.
    from tuf_signer.audit._note import COSIGNATURE_V1, NoteError, check_key_name, parse_verifier_key

    t = Table(a, "audit.", LogConfig)
    given = sorted(_LOG_SETTINGS & a.keys())
    if "origin" not in a and ("key" not in a or not signing):
        if given:
            raise ConfigError(f"audit.{given[0]}: needs audit.origin and audit.key")
        return None
    origin = t.get("origin", str)
    try:
        check_key_name(origin)
    except NoteError as e:
        raise ConfigError(f"audit.origin: {e.reason} (it also names the audit key)") from None
    k = Table(t.table("key"), "audit.key.")
    k.check_known({"backend", "handle"})
    unsigned = "" if not signing else REQUIRED
    backend = k.get("backend", str, unsigned)
    handle = k.get("handle", str, unsigned)
    if signing and not handle.strip():
        raise ConfigError("audit.key.handle: is empty")
    witnesses: list[WitnessConfig] = []
    for i, w in enumerate(_list_of_tables(a, "witnesses", "audit.")):
        wt = Table(w, f"audit.witnesses[{i}].")
        wt.check_known({"url", "vkey"})
        url = _witness_url(wt.get("url", str, REQUIRED), f"audit.witnesses[{i}].url")
        text = wt.get("vkey", str, REQUIRED)
        try:
            vkey = parse_verifier_key(text)
        except NoteError as e:
            raise ConfigError(f"audit.witnesses[{i}].vkey: {e.reason}") from None
        if vkey.sig_type != COSIGNATURE_V1:
            raise ConfigError(f"audit.witnesses[{i}].vkey: not a cosignature/v1 (0x04) witness key")
        # A cosignature does not sign its name: one key under two names is one witness.
        seen = [parse_verifier_key(w.vkey) for w in witnesses]
        if vkey.name in {k.name for k in seen} or vkey.public_key in {k.public_key for k in seen}:
            raise ConfigError(
                f"audit.witnesses[{i}].vkey: witness {vkey.name!r} (or its key) is listed twice"
            )
        witnesses.append(WitnessConfig(url=url, vkey=text, name=vkey.name))
    quorum = t.get("witness_quorum", int)
    if "witness_quorum" in a and not witnesses:
        raise ConfigError("audit.witness_quorum: needs at least one [[audit.witnesses]]")
    if witnesses and not 1 <= quorum <= len(witnesses):
        raise ConfigError(
            f"audit.witness_quorum: must be between 1 and the {len(witnesses)} witnesses, "
            f"got {quorum}"
        )
    interval = t.number("checkpoint_interval_seconds", field="checkpoint_interval")
    if not 0.01 <= interval <= 3600:
        raise ConfigError(
            f"audit.checkpoint_interval_seconds: must be between 0.01 and 3600, got {interval:g}"
        )
    timeout = t.number("witness_timeout_seconds", field="witness_timeout")
    if not 0.1 <= timeout <= 300:
        raise ConfigError(
            f"audit.witness_timeout_seconds: must be between 0.1 and 300, got {timeout:g}"
        )
    max_records = t.get("max_unwitnessed_records", int)
    max_seconds = t.number("max_unwitnessed_seconds")
    for name, value in (
        ("max_unwitnessed_records", max_records),
        ("max_unwitnessed_seconds", max_seconds),
    ):
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"audit.{name}: must be 0 (off) or positive, got {value:g}")
        if value and not witnesses:
            raise ConfigError(f"audit.{name}: needs at least one [[audit.witnesses]]")
    # A record waits up to two intervals and a witness round trip for its
    # cosignature to be seen: a smaller window would refuse Signs while all is well.
    if max_seconds and max_seconds < 2 * interval + timeout:
        raise ConfigError(
            f"audit.max_unwitnessed_seconds: {max_seconds:g} is below twice "
            f"audit.checkpoint_interval_seconds ({interval:g}) plus "
            f"audit.witness_timeout_seconds ({timeout:g}): signing would stop between "
            "checkpoints"
        )
    return LogConfig(
        origin=origin,
        key_backend=backend,
        key_handle=handle,
        checkpoint_interval=interval,
        witnesses=tuple(witnesses),
        witness_quorum=quorum if witnesses else 0,
        witness_timeout=timeout,
        max_unwitnessed_records=max_records,
        max_unwitnessed_seconds=max_seconds,
    )


def _witness_url(url: str, setting: str) -> str:
    """A witness's prefix: http(s), a host, maybe a port and a path; nothing that would be
    dropped or leaked (credentials, a query, a fragment)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"{setting}: not a URL ({e})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{setting}: must be http:// or https:// and name a host")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"{setting}: must not hold credentials (the protocol has none)")
    if parts.query or parts.fragment or any(c.isspace() for c in url):
        raise ConfigError(f"{setting}: must not hold a query, a fragment or spaces")
    del port
    return url.rstrip("/")


def _list_of_tables(a: Mapping[str, Any], key: str, where: str) -> list[Mapping[str, Any]]:
    value = a.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigError(f"{where}{key}: expected an array of tables ([[{where}{key}]])")
    return value


def _store(a: Mapping[str, Any], t: Table, base: Path) -> AuditConfig:
    store = t.get("store", str)
    if store not in _STORE_SETTINGS:
        supported = ", ".join(repr(k) for k in _STORE_SETTINGS)
        raise ConfigError(f"audit.store: unknown store {store!r} (supported: {supported})")
    for other, keys in _STORE_SETTINGS.items():
        for key in sorted(keys & a.keys()):
            if other != store:
                raise ConfigError(f"audit.{key}: only for store {other!r}, not {store!r}")
    if store == "sqlite":
        return AuditConfig(store=store, path=base / t.get("path", str))
    dsn = t.get("dsn", str)
    dsn_env = t.get("dsn_env", str)
    if (dsn is None) == (dsn_env is None):
        raise ConfigError("audit.dsn / audit.dsn_env: set exactly one of them")
    if dsn_env is not None and not dsn_env.strip():
        raise ConfigError("audit.dsn_env: names no environment variable")
    if dsn is not None:
        check_dsn(dsn)
    return AuditConfig(store=store, dsn=dsn, dsn_env=dsn_env)


def _tls(t: Table, base: Path) -> TlsConfig:
    t.check_known(
        {"cert", "key", "client_ca", "allow_cn_identity", "require_single_uri", "crl", "deny_list"}
    )
    crl = t.get("crl", str)
    deny_list = t.get("deny_list", str)
    return TlsConfig(
        cert=base / t.get("cert", str),
        key=base / t.get("key", str),
        client_ca=base / t.get("client_ca", str),
        allow_cn_identity=t.get("allow_cn_identity", bool),
        require_single_uri=t.get("require_single_uri", bool),
        crl=base / crl if crl is not None else None,
        deny_list=base / deny_list if deny_list is not None else None,
    )


def _server(s: Mapping[str, Any], base: Path) -> ServerConfig:
    t = Table(s, "server.", ServerConfig)
    t.check_known(
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
            *_TRANSPORT,
        }
    )
    tls = _tls(Table(t.table("tls"), "server.tls.", TlsConfig), base) if "tls" in s else None
    transport: dict[str, Any] = {
        key: t.get(key, int) if kind is int else t.number(key) for key, kind in _TRANSPORT.items()
    }
    server = ServerConfig(
        listen=t.get("listen", str),
        insecure=t.get("insecure", bool),
        tls=tls,
        max_payload_bytes=t.get("max_payload_bytes", int),
        drain_seconds=t.number("drain_seconds"),
        health_interval=t.number("health_interval"),
        call_deadline=t.number("call_deadline_seconds", field="call_deadline"),
        max_batch_items=t.get("max_batch_items", int),
        max_batch_bytes=t.get("max_batch_bytes", int),
        workers=t.get("workers", int),
        check_processes=t.get("check_processes", int),
        check_timeout=t.number("check_timeout_seconds", field="check_timeout"),
        **transport,
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
    if "check_timeout_seconds" not in s:
        # Left out: the default, and in any case half the call deadline.
        server = dataclasses.replace(
            server, check_timeout=min(server.check_timeout, server.call_deadline / 2)
        )
    if not 0 < server.check_timeout < server.call_deadline:
        raise ConfigError(
            "server.check_timeout_seconds: must be positive and below call_deadline_seconds"
        )
    _check_transport(server)
    return server


# The transport's limits (§ "Resource limits" of the README): setting -> its type.
_TRANSPORT: dict[str, type] = {
    "max_connections": int,
    "max_streams_per_connection": int,
    "max_calls": int,
    "max_connection_age_seconds": float,
    "idle_timeout_seconds": float,
    "keepalive_seconds": float,
    "keepalive_timeout_seconds": float,
    "max_header_bytes": int,
}


MAX_QUEUED_STREAMS = 1_000_000


def _check_transport(server: ServerConfig) -> None:
    """Refuse transport limits that would turn away every client or nobody.

    Raises:
        ConfigError: naming the setting out of its range.
    """
    ranges: dict[str, tuple[float, float]] = {
        "max_connections": (1, 1_000_000),
        "max_streams_per_connection": (1, 100_000),
        "max_calls": (1, 1_000_000),
        # gRPC takes milliseconds in a signed 32-bit int: at most ~24 days.
        "max_connection_age_seconds": (1, 2_000_000),
        "idle_timeout_seconds": (1, 2_000_000),
        "keepalive_seconds": (1, 2_000_000),
        "keepalive_timeout_seconds": (1, 2_000_000),
        # Below 1 KiB even gRPC's own headers no longer fit.
        "max_header_bytes": (1024, 1024 * 1024),
    }
    for key, (low, high) in ranges.items():
        value = getattr(server, key)
        if not low <= value <= high:
            raise ConfigError(
                f"server.{key}: must be between {low:,.0f} and {high:,.0f}, got {value!r}"
            )
    # Every stream of every connection can wait in gRPC's queue for the event
    # loop during a reset flood (``Guard.transport_options``); gRPC takes the
    # queue's length as a signed 32-bit int, and a million is minutes of waiting.
    streams = server.max_connections * server.max_streams_per_connection
    if streams > MAX_QUEUED_STREAMS:
        raise ConfigError(
            f"server.max_connections times server.max_streams_per_connection: must be at most"
            f" {MAX_QUEUED_STREAMS:,}, got {streams:,}"
        )


def _limits(limits: Mapping[str, Any]) -> LimitsConfig:
    t = Table(limits, "limits.", LimitsConfig)
    # Every field is a setting of the same name; its annotation says int or float.
    kinds = typing.get_type_hints(LimitsConfig)
    t.check_known(kinds)
    values: dict[str, Any] = {}
    for name, kind in kinds.items():
        value = t.get(name, int) if kind is int else t.number(name)
        if not value > 0:
            raise ConfigError(f"{t.where}{name}: must be positive")
        values[name] = value
    if values["summary_seconds"] > 3600:
        raise ConfigError(f"{t.where}summary_seconds: at most 3600 (one summary record an hour)")
    return LimitsConfig(**values)


def _check_inflight(limits: LimitsConfig, server: ServerConfig) -> None:
    """One SignBatch of the largest size must fit under the process's in-flight cap.

    Raises:
        ConfigError: naming both settings.
    """
    if limits.max_inflight_bytes < server.max_batch_bytes:
        raise ConfigError(
            f"limits.max_inflight_bytes: {limits.max_inflight_bytes} is below "
            f"server.max_batch_bytes ({server.max_batch_bytes}); no SignBatch of that size "
            "could ever be admitted"
        )


def _str_list(t: Table, key: str, default: Any = FIELD) -> tuple[str, ...]:
    value = t.get(key, list, default)
    if not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{t.where}{key}: expected a list of strings")
    return tuple(value)


def _authz(a: Mapping[str, Any], allow_cn: bool) -> AccessPolicy:
    """The access rules; a ``cn:`` identity only when CN identities are on."""
    top = Table(a, "authz.")
    top.check_known({"rules"})
    rules = top.get("rules", list, [])
    parsed = []
    for i, r in enumerate(rules):
        if not isinstance(r, dict):
            raise ConfigError(f"authz.rules[{i}]: expected a table ([[authz.rules]])")
        t = Table(r, f"authz.rules[{i}].", AccessRule)
        t.check_known(
            {"identity", "operations", "keys", "roles", "max_concurrent", "rate", "burst"}
        )
        rate = t.get("rate", (int, float))
        parsed.append(
            AccessRule(
                identity=t.get("identity", str),
                operations=frozenset(_str_list(t, "operations", [])),
                keys=_str_list(t, "keys"),
                roles=_str_list(t, "roles"),
                max_concurrent=t.get("max_concurrent", int),
                rate=float(rate) if rate is not None else None,
                burst=t.get("burst", int),
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
