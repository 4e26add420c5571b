"""From a parsed ``Config`` to running parts: the audit store, the key backends, the service.

Backends are built through a registry keyed by the config's ``type`` (like
securesystemslib's ``SIGNER_FOR_URI_SCHEME``): adding one is one entry here and
one parser in ``tuf_signer.config``. Stores open through ``tuf_signer.audit``'s
``STORE_OPENERS`` the same way (the offline ``audit`` commands open them too,
without loading the server).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tuf_signer.audit import AuditStore, open_audit_store
from tuf_signer.config import (
    Config,
    GcpKmsConfig,
    LogConfig,
    Pkcs11Config,
    check_secret_file,
)
from tuf_signer.errors import ConfigError
from tuf_signer.keys import GcpKmsBackend, KeyBackend, Pkcs11Backend, kms_transport
from tuf_signer.server._auditkey import CheckpointSigner, audit_verifier_key
from tuf_signer.server._checker import PayloadChecker
from tuf_signer.server._guard import Guard
from tuf_signer.server._log import TransparencyLog
from tuf_signer.server._service import SigningService
from tuf_signer.server._values import Clock, utc_now
from tuf_signer.server._writer import AuditWriter


def apply_backend_env(env: Mapping[str, str], setting: str) -> None:
    """Export a backend's environment (e.g. ``SOFTHSM2_CONF``) before its library loads.

    The PKCS#11 library reads it once per process, so two backends that need
    different values cannot share a process.

    Raises:
        ConfigError: the variable is already set to a different value.
    """
    for key, value in env.items():
        current = os.environ.get(key)
        if current is not None and current != value:
            raise ConfigError(
                f"{setting}.env.{key}: already set to a different value in this process"
            )
        os.environ[key] = value


def _pkcs11(name: str, cfg: Pkcs11Config) -> KeyBackend:
    apply_backend_env(cfg.env, f"backends.{name}")
    return Pkcs11Backend(
        name=name, module=cfg.module, token_label=cfg.token_label, pin=cfg.pin.reader()
    )


def _gcpkms(name: str, cfg: GcpKmsConfig) -> KeyBackend:
    if cfg.credentials_file is not None:
        check_secret_file(cfg.credentials_file, f"backends.{name}.credentials_file")
    return GcpKmsBackend(
        name,
        project=cfg.project,
        location=cfg.location,
        key_ring=cfg.key_ring,
        transport=kms_transport(cfg.endpoint, cfg.credentials_file),
        protection_level=cfg.protection_level,
        call_timeout=cfg.call_timeout,
        create_timeout=cfg.create_timeout,
    )


# By backend ``type``; each builder takes the backend's name and the config
# class its type parses into (``tuf_signer.config.BACKEND_PARSERS``).
BACKEND_BUILDERS: Mapping[str, Callable[[str, Any], KeyBackend]] = {
    Pkcs11Config.type: _pkcs11,
    GcpKmsConfig.type: _gcpkms,
}


async def start_backends(config: Config) -> dict[str, KeyBackend]:
    """Build and start every configured backend.

    Raises:
        ConfigError: a backend's environment or credentials file is refused.
        TufSignerError: a backend cannot start (closes those already started).
    """
    started: dict[str, KeyBackend] = {}
    try:
        for name, cfg in config.backends.items():
            backend = BACKEND_BUILDERS[cfg.type](name, cfg)
            await backend.start()
            started[name] = backend
    except BaseException:
        for backend in started.values():
            await backend.close()
        raise
    return started


@dataclass(frozen=True)
class Parts:
    """The running parts of a signer; ``close`` releases them.

    Attributes:
        store: the audit store.
        backends: the started key backends, by name.
        checker: the service's payload checker (its processes start on first
            use, or when ``start`` is awaited).
        service: the signing service over all of them.
        log: the transparency log's checkpoints and witnesses; None when
            ``audit.origin`` and ``audit.key`` are not set.
        writer: the service's group-commit writer (the freshness watch
            records through it too); None when the service made its own.
    """

    store: AuditStore
    backends: Mapping[str, KeyBackend]
    checker: PayloadChecker
    service: SigningService
    log: TransparencyLog | None = None
    writer: AuditWriter | None = None

    async def close(self) -> None:
        """Commit what the service has queued, then close the backends and the store."""
        if self.log is not None:
            self.log.close()
        self.service.close()
        for backend in self.backends.values():
            await backend.close()
        self.store.close()


async def open_log(
    config: LogConfig,
    store: AuditStore,
    backends: Mapping[str, KeyBackend],
    on_witness_state: Callable[[bool], None] = lambda _ok: None,
) -> TransparencyLog:
    """The transparency log over ``store``, signing with the audit key in its backend.

    Raises:
        ConfigError: the audit key is missing or unusable, or it is a key of
            the registry (it must sign nothing but checkpoints).
        BackendUnavailableError: its backend cannot be reached.
        StoreError: the registry could not be read.
    """
    backend = backends[config.key_backend]
    key = await audit_verifier_key(backend, config)
    # By public key, not by handle: a handle has several spellings (upper-case
    # hex), and two backends may name one token.
    audit_public = key.public_key.hex()
    for record in store.list_keys():
        for version in store.list_versions(record.name):
            if version.public_key.get("keyval", {}).get("public") == audit_public:
                raise ConfigError(
                    f"audit.key: is key {record.name!r} version {version.version}; "
                    "the audit key must sign nothing but checkpoints "
                    "(tuf-signer audit create-key makes one)"
                )
    signer = CheckpointSigner(backend, config.key_handle, key)
    return TransparencyLog(store, signer, config, on_witness_state)


async def start_parts(
    config: Config,
    *,
    guard: Guard,
    clock: Clock = utc_now,
    on_witness_state: Callable[[bool], None] = lambda _ok: None,
) -> Parts:
    """Open the store, start the backends and build the service ``config`` describes.

    With ``audit.origin`` and ``audit.key`` set, also the transparency log:
    it checks the store against the witnesses and signs a first checkpoint
    before this returns.

    Args:
        config: the validated configuration.
        guard: the access policy and limits the service enforces.
        clock: injected into the service (tests freeze it).
        on_witness_state: told whether the witnesses cosign the newest checkpoint.

    Raises:
        ConfigError: the store or a backend is refused by its settings.
        StoreError: the store cannot be opened.
        TufSignerError: a backend cannot start (what was opened is closed).
    """
    server = config.server
    store = open_audit_store(config.audit)
    backends: dict[str, KeyBackend] = {}
    log = None
    try:
        backends = await start_backends(config)
        if config.audit.log is not None:
            log = await open_log(config.audit.log, store, backends, on_witness_state)
            await log.start()
        checker = PayloadChecker(server.check_processes, timeout=server.check_timeout)
        writer = AuditWriter(store)
        service = SigningService(
            store,
            backends,
            config.default_backend,
            server.max_payload_bytes,
            guard=guard,
            clock=clock,
            # Leave room within the call deadline to record the refusal.
            hsm_timeout=server.call_deadline * 0.8,
            max_batch=server.max_batch_items,
            checker=checker,
            max_version_step=config.policy.max_version_step,
            max_clock_skew=config.policy.max_clock_skew,
            activate_on_pinned_sign=config.policy.activate_on_pinned_sign,
            sign_gate=None if log is None else log.check,
            writer=writer,
        )
    except BaseException:
        if log is not None:
            log.close()
        for backend in backends.values():
            await backend.close()
        store.close()
        raise
    return Parts(store, backends, checker, service, log, writer)
