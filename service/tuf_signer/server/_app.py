"""The gRPC server around the wired parts (``_wiring``): listen, reload, watch health, drain."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from collections.abc import Callable, Mapping

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tuf_signer.config import (
    Config,
    ServerConfig,
    TlsConfig,
    check_listen,
    check_secrets,
    load_config,
)
from tuf_signer.errors import ConfigError, TufSignerError
from tuf_signer.keys import KeyBackend
from tuf_signer.server import _metrics
from tuf_signer.server._address import AddressClaim, claim_address
from tuf_signer.server._freshness import FreshnessWatch
from tuf_signer.server._grpc import AuditLogServicer, KeyAdminServicer, SignerServicer
from tuf_signer.server._guard import Guard
from tuf_signer.server._harden import harden_process
from tuf_signer.server._health import Health, HealthServicer
from tuf_signer.server._identity import Authenticator, IdentitySettings
from tuf_signer.server._interceptor import ErrorInterceptor, admitted_identity
from tuf_signer.server._log import WITNESS_HEALTH, TransparencyLog
from tuf_signer.server._ops import OpsListener, check_ops_listen
from tuf_signer.server._reload import ServerTls, restart_needed
from tuf_signer.server._revocation import load_revocation
from tuf_signer.server._service import SigningService
from tuf_signer.server._values import Clock, utc_now
from tuf_signer.server._wiring import Parts, start_parts
from tuf_signer.server._workers import worker_index
from tuf_signer.v1 import signer_pb2 as pb
from tuf_signer.v1 import signer_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAMES = tuple(s.full_name for s in pb.DESCRIPTOR.services_by_name.values())


class SignerServer:
    """A running tuf-signer: gRPC server, service, backends and store.

    Args:
        config: the validated configuration.
        listen: overrides ``server.listen`` (``HOST:0`` picks a free port).
        clock: injected into the service (tests freeze it).
    """

    def __init__(self, config: Config, listen: str | None = None, clock: Clock = utc_now) -> None:
        self.config = config
        self._server_cfg = (
            ServerConfig(**{**config.server.__dict__, "listen": listen})
            if listen
            else config.server
        )
        self._clock = clock
        self.guard = Guard(config.authz, config.limits)
        self.authenticator = Authenticator(identity_settings(config.server.tls))
        self._server: grpc.aio.Server | None = None
        self._health = HealthServicer()
        self.health = Health(
            self._health, ("", *SERVICE_NAMES), self._probe, self._server_cfg.health_interval
        )
        self._health_task: asyncio.Task[None] | None = None
        self._summary_task: asyncio.Task[None] | None = None
        self._log_task: asyncio.Task[None] | None = None
        self._fresh_task: asyncio.Task[None] | None = None
        self._ops: OpsListener | None = None
        self.freshness: FreshnessWatch | None = None  # the freshness watch, once started
        self._tls: ServerTls | None = None
        self._draining = False
        self.ops_port = 0
        self._parts: Parts | None = None
        self._backends: Mapping[str, KeyBackend] = {}
        self.service: SigningService | None = None
        self.port = 0
        self._claim: AddressClaim | None = None
        self._stopped = asyncio.Event()

    async def start(self) -> int:
        """Start everything and listen. Returns the bound port.

        Raises:
            ConfigError: the listener is not allowed or cannot bind.
            TufSignerError: a backend or the store cannot start.
        """
        cfg = self._server_cfg
        check_listen(cfg)
        check_secrets(self.config)
        # A supervised worker shares the address its supervisor claimed; any
        # other server claims it and listens without SO_REUSEPORT (``_address``).
        shared = worker_index() is not None
        try:  # whatever fails from the claim on releases it
            if not shared:
                self._claim = claim_address(cfg.listen)
            if cfg.tls is not None:
                self._tls = _server_credentials(cfg.tls)
            credentials = None if self._tls is None else self._tls.credentials()
            revocation = load_revocation(cfg.tls)
            self.authenticator.update(identity_settings(cfg.tls), revocation)
            self._parts = await start_parts(
                self.config,
                guard=self.guard,
                clock=self._clock,
                on_witness_state=lambda ok: self._health.set_status(WITNESS_HEALTH, ok),
            )
        except BaseException:
            await self._release()
            raise
        self.service, self._backends = self._parts.service, self._parts.backends
        try:
            await self._parts.checker.start()  # now, not on the first large payload
            server = grpc.aio.server(
                interceptors=[
                    ErrorInterceptor(
                        cfg.call_deadline,
                        self.service.refuse,
                        message_limits(cfg),
                        authenticator=self.authenticator,
                        check_caller=self.guard.check_known,
                        on_fault=self.health.fault,
                    )
                ],
                options=[
                    # Room for a SignBatch of max_batch_bytes plus the envelope;
                    # each payload's own limit is checked (and recorded) per item.
                    ("grpc.max_receive_message_length", cfg.max_batch_bytes + 64 * 1024),
                    ("grpc.max_send_message_length", 64 * 1024 * 1024),
                    ("grpc.so_reuseport", 1 if shared else 0),
                    *Guard.transport_options(cfg),
                ],
                # Python-side: a call past it is refused RESOURCE_EXHAUSTED at once.
                maximum_concurrent_rpcs=cfg.max_calls,
            )
            identity = admitted_identity(self.authenticator.identity_of)
            pb_grpc.add_SignerServicer_to_server(
                SignerServicer(self.service, identity, on_fault=self.health.fault), server
            )
            pb_grpc.add_KeyAdminServicer_to_server(KeyAdminServicer(self.service, identity), server)
            transparency = self._parts.log
            pb_grpc.add_AuditLogServicer_to_server(
                AuditLogServicer(
                    self.service,
                    identity,
                    origin=None if transparency is None else transparency.origin,
                    verifier_key=None if transparency is None else transparency.key.text(),
                    checkpoint_now=None if transparency is None else transparency.checkpoint_now,
                ),
                server,
            )
            health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
            reflection.enable_server_reflection(
                (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
            )
            try:
                if credentials is None:
                    self.port = server.add_insecure_port(cfg.listen)
                else:
                    self.port = server.add_secure_port(cfg.listen, credentials)
            except RuntimeError as e:
                raise ConfigError(f"server.listen: cannot bind {cfg.listen}: {e}") from e
            await server.start()
            self._server = server
            ops = self.config.ops
            if ops.listen:
                check_ops_listen(ops.listen, ops.allow_non_loopback, cfg.workers)
                self._ops = OpsListener(
                    ops.listen, lambda: self.health.serving and not self._draining, shared
                )
                self.ops_port = await self._ops.start()
        except BaseException:
            if self._server is not None:
                await self._server.stop(0)
            await self._release()
            raise
        self.health.start()
        if self._parts is not None and self._parts.log is not None and self._parts.log.halted:
            # A halted log (a store behind or forked from its witnesses) is not
            # SERVING from the first answer on, not from the first probe.
            await self.health.probe_once()
        parts = self._parts
        assert parts is not None
        self.freshness = FreshnessWatch(
            parts.store,
            parts.writer.submit if parts.writer is not None else _no_record,
            self.config.ops.expiry_margin_seconds,
            self.config.ops.freshness_interval_seconds,
            # One warning per role, not one per worker.
            warn=worker_index() in (None, 0),
            tree=None if parts.log is None else _log_state(parts.log),
            clock=self._clock,
        )
        self._fresh_task = asyncio.create_task(self.freshness.run())
        self._health_task = asyncio.create_task(self.health.run())
        self._summary_task = asyncio.create_task(
            self._write_summaries(self.config.limits.summary_seconds)
        )
        if self._parts.log is not None:
            self._log_task = asyncio.create_task(self._parts.log.run())
        log.info(
            "tuf-signer listening on %s (port %d, %s)",
            cfg.listen,
            self.port,
            "plaintext loopback" if credentials is None else "mutual TLS",
        )
        return self.port

    @property
    def log(self) -> TransparencyLog | None:
        """The transparency log, once started with ``audit.origin`` and ``audit.key`` set."""
        return None if self._parts is None else self._parts.log

    def reload(self) -> bool:
        """Re-read the config file; put its access policy, limits, identity
        settings, revocation lists (``[server.tls]`` crl, deny_list) and the
        server's certificate, key and client CA (from the next handshake,
        ``_reload.ServerTls``) in force.

        A config that does not validate leaves everything in force unchanged
        and says why in the log. A CRL or deny list that cannot be read or
        does not verify leaves the previous lists in force (the log names the
        setting) while the rest of the new config applies; so do TLS files
        that cannot be read. Other settings need a restart: each one that
        changed is logged by name (never its value) as not applied.

        Returns:
            True when everything new is in force.
        """
        try:
            fresh = load_config(self.config.path)
        except TufSignerError as e:
            log.error("reload: keeping the previous access policy: %s", e.reason)
            return False
        ok = True
        changed = restart_needed(self.config, fresh)
        if (fresh.server.tls is None) != (self._tls is None):
            changed.append("server.tls")
        for name in changed:
            log.warning("reload: %s changed; not applied: it needs a restart", name)
        if self._tls is not None and fresh.server.tls is not None:
            try:
                if self._tls.update(fresh.server.tls):
                    log.info("reload: new server certificate, key and client CA in force")
            except TufSignerError as e:
                log.error("reload: keeping the previous server certificate: %s", e.reason)
                ok = False
        try:
            revocation = load_revocation(fresh.server.tls)
        except TufSignerError as e:
            log.error("reload: keeping the previous revocation lists: %s", e.reason)
            revocation, ok = self.authenticator.revocation, False
        self.guard.update(fresh.authz, fresh.limits)
        self.authenticator.update(identity_settings(fresh.server.tls), revocation)
        log.info(
            "reload: access policy with %d rules, limits %s and %d revoked certificates in force",
            len(fresh.authz.rules),
            fresh.limits,
            len(revocation),
        )
        return ok

    async def _probe(self) -> None:
        """The health probe: every backend, a write on the store's lock path, the log's gate.

        Raises:
            TufSignerError: the first part that failed.
        """
        assert self.service is not None and self._parts is not None
        # As ``service.check_health``, one part at a time for the metrics.
        for name, backend in self._parts.backends.items():
            try:
                await backend.check()
            except BaseException:
                _metrics.BACKEND_UP.labels(name).set(0)
                raise
            _metrics.BACKEND_UP.labels(name).set(1)
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._parts.store.probe)
        except BaseException:
            _metrics.set_store_up(False)
            raise
        _metrics.set_store_up(True)
        if self._parts.log is not None:
            self._parts.log.check()

    async def _write_summaries(self, interval: float) -> None:
        """Write the counted refusals' summary records every ``interval`` seconds."""
        while True:
            await asyncio.sleep(interval)
            assert self.service is not None
            with contextlib.suppress(TufSignerError):  # logged by flush_refusals
                await self.service.flush_refusals()

    async def stop(self, grace: float | None = None) -> None:
        """Drain: refuse new calls, let in-flight ones finish and commit, then close.

        In-flight calls return only after their audit records commit, so when
        ``server.stop`` returns every answered request is on the record (P8).
        """
        if self._stopped.is_set():
            return
        grace = self._server_cfg.drain_seconds if grace is None else grace
        self._health.enter_graceful_shutdown()
        self._draining = True
        _metrics.set_serving(False)
        for task in (self._health_task, self._summary_task, self._log_task, self._fresh_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.health.close()
        if self._server is not None:
            await self._server.stop(grace)
        if self._ops is not None:
            await self._ops.stop()
        await self._release()
        self._stopped.set()
        log.info("tuf-signer stopped")

    async def _release(self) -> None:
        if self._parts is not None:
            await self._parts.close()
        if self._claim is not None:
            self._claim.release()
            self._claim = None

    async def wait(self) -> None:
        """Return once ``stop`` has finished."""
        await self._stopped.wait()


async def serve(config: Config, listen: str | None = None) -> None:
    """Run until SIGTERM or SIGINT, then drain (``server.drain_seconds``).

    SIGHUP reloads the access policy, limits, revocation lists and the
    server's TLS certificate, key and client CA from the config file (``reload``).
    """
    harden_process()
    server = SignerServer(config, listen=listen)
    await server.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, functools.partial(_on_signal, server, sig))
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    await server.wait()


def message_limits(cfg: ServerConfig) -> dict[str, int]:
    """The largest request message each method takes, in bytes (by method name).

    gRPC's own limit is one number for the whole server, sized for SignBatch;
    a Sign carries one payload, and the other calls a few names. Checked
    before the message is decoded.
    """
    envelope = 64 * 1024
    return {
        "Sign": cfg.max_payload_bytes + envelope,
        "SignBatch": cfg.max_batch_bytes + envelope,
        "*": envelope,
    }


def identity_settings(tls: TlsConfig | None) -> IdentitySettings:
    """How client certificates name their holders under ``[server.tls]``."""
    if tls is None:
        return IdentitySettings()
    return IdentitySettings(
        allow_cn_identity=tls.allow_cn_identity, require_single_uri=tls.require_single_uri
    )


def _server_credentials(tls: TlsConfig) -> ServerTls:
    """Mutual TLS: the client must present a certificate from ``client_ca``;
    the files are read again on SIGHUP (``_reload.ServerTls``).

    gRPC's TLS stack negotiates TLS 1.3 when the client offers it and refuses
    anything below TLS 1.2.

    Raises:
        ConfigError: a file cannot be read.
    """
    return ServerTls(tls)


async def _no_record(_entries: object) -> None:
    """No writer to record through (a service that made its own): warnings are logged only."""


def _log_state(transparency: TransparencyLog) -> Callable[[], tuple[int, int, bool]]:
    """The transparency log's sizes and halt, for the metrics."""

    def state() -> tuple[int, int, bool]:
        size, witnessed = transparency.sizes
        return size, witnessed, transparency.halted is not None

    return state


def _on_signal(server: SignerServer, sig: signal.Signals) -> None:
    log.info("received %s: draining", sig.name)
    asyncio.get_running_loop().create_task(server.stop())
