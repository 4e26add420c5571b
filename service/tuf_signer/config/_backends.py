"""Parsing ``[backends.NAME]`` tables: one parser per backend ``type``."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tuf_signer._kms import PROTECTION_LEVELS, id_problem
from tuf_signer._net import check_plaintext_credentials, split_host_port
from tuf_signer.config._reader import REQUIRED, Table
from tuf_signer.config._secrets import SecretSource
from tuf_signer.config._settings import BackendConfig, GcpKmsConfig, Pkcs11Config
from tuf_signer.errors import ConfigError


def parse_backend(name: str, table: Mapping[str, Any], base: Path) -> BackendConfig:
    """The backend ``name`` from its table, by its ``type``.

    Raises:
        ConfigError: the type is missing or unknown, or a setting is wrong.
    """
    t = Table(table, f"backends.{name}.")
    kind = t.get("type", str, REQUIRED)
    parser = BACKEND_PARSERS.get(kind)
    if parser is None:
        supported = ", ".join(repr(k) for k in BACKEND_PARSERS)
        raise ConfigError(f"{t.where}type: unknown backend type {kind!r} (supported: {supported})")
    return parser(name, table, base)


def _pkcs11(name: str, table: Mapping[str, Any], base: Path) -> Pkcs11Config:
    t = Table(table, f"backends.{name}.", Pkcs11Config)
    t.check_known({"type", "module", "token_label", "pin_file", "pin_env", "pin", "env"})
    env = t.table("env")
    for key, value in env.items():
        if not isinstance(value, str):
            raise ConfigError(f"{t.where}env.{key}: expected a string")
    # Paths in `env` are resolved like every other relative path in this file.
    resolved_env = {
        k: str(base / v) if k.endswith("_CONF") and not os.path.isabs(v) else v
        for k, v in env.items()
    }
    return Pkcs11Config(
        name=name,
        module=base / t.get("module", str),
        token_label=t.get("token_label", str),
        pin=_secret(t, "pin", base),
        env=resolved_env,
    )


def _secret(t: Table, prefix: str, base: Path) -> SecretSource:
    """``PREFIX_file`` or ``PREFIX_env``: exactly one; never the secret itself."""
    file = t.get(f"{prefix}_file", str, None)
    env = t.get(f"{prefix}_env", str, None)
    if (file is None) == (env is None):
        raise ConfigError(f"{t.where}{prefix}_file / {prefix}_env: set exactly one of them")
    if prefix in t.data:
        raise ConfigError(
            f"{t.where}{prefix}: secrets are never written in the config; "
            f"use {prefix}_file or {prefix}_env"
        )
    return SecretSource(
        setting=f"{t.where}{prefix}",
        file=(base / file) if file is not None else None,
        env=env,
    )


def _gcpkms(name: str, table: Mapping[str, Any], base: Path) -> GcpKmsConfig:
    t = Table(table, f"backends.{name}.", GcpKmsConfig)
    where = t.where
    t.check_known(
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
        }
    )
    ids = {kind: t.get(kind, str) for kind in ("project", "location", "key_ring")}
    for kind, value in ids.items():
        problem = id_problem(kind, value)
        if problem is not None:
            raise ConfigError(f"{where}{kind}: {problem}")
    endpoint = t.get("endpoint", str)
    if endpoint is not None:
        split_host_port(endpoint, f"{where}endpoint")
    credentials = t.get("credentials_file", str)
    check_plaintext_credentials(endpoint, credentials, f"{where}credentials_file")
    level = t.get("protection_level", str).upper()
    if level not in PROTECTION_LEVELS:
        raise ConfigError(f"{where}protection_level: expected 'hsm' or 'software'")
    timeouts = {}
    for key in ("call_timeout", "create_timeout"):
        value = t.number(key)
        if not 0 < value <= 3600:
            raise ConfigError(f"{where}{key}: must be between 0 and 3600 seconds")
        timeouts[key] = value
    return GcpKmsConfig(
        name=name,
        project=ids["project"],
        location=ids["location"],
        key_ring=ids["key_ring"],
        credentials_file=(base / credentials) if credentials is not None else None,
        endpoint=endpoint,
        protection_level=level,
        **timeouts,
    )


# Adding a backend type is one entry here (and one in the server's wiring).
BACKEND_PARSERS: Mapping[str, Callable[[str, Mapping[str, Any], Path], BackendConfig]] = {
    Pkcs11Config.type: _pkcs11,
    GcpKmsConfig.type: _gcpkms,
}
