"""Configuration: one TOML file, parsed at the edge into frozen dataclasses.

Relative paths in the file are relative to the file's own directory. Secrets
(the HSM PIN, a database password) are never in the file: it names a file or
an environment variable that holds them. Every error names the setting at fault.

This package only parses and validates; turning a ``Config`` into a store,
backends and a service is the server's wiring (``tuf_signer.server._wiring``).

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

from tuf_signer.config._audit_only import load_audit_config
from tuf_signer.config._backends import BACKEND_PARSERS
from tuf_signer.config._parse import load_config, parse_config
from tuf_signer.config._preflight import check_listen, check_secrets
from tuf_signer.config._secrets import SecretSource, check_secret_file
from tuf_signer.config._settings import (
    DEFAULT_LISTEN,
    DEFAULT_MAX_PAYLOAD_BYTES,
    DEFAULT_MAX_VERSION_STEP,
    ROLE_CLASSES,
    AuditConfig,
    BackendConfig,
    Config,
    GcpKmsConfig,
    LimitsConfig,
    LogConfig,
    Pkcs11Config,
    PolicyConfig,
    ServerConfig,
    TlsConfig,
    WitnessConfig,
)

__all__ = [
    "BACKEND_PARSERS",
    "DEFAULT_LISTEN",
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "DEFAULT_MAX_VERSION_STEP",
    "ROLE_CLASSES",
    "AuditConfig",
    "BackendConfig",
    "Config",
    "GcpKmsConfig",
    "LimitsConfig",
    "LogConfig",
    "Pkcs11Config",
    "PolicyConfig",
    "SecretSource",
    "ServerConfig",
    "TlsConfig",
    "WitnessConfig",
    "check_listen",
    "check_secret_file",
    "check_secrets",
    "load_audit_config",
    "load_config",
    "parse_config",
]
