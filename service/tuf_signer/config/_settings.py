"""The settings as frozen dataclasses; each default is written here, on its field, once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from tuf_signer._kms import DEFAULT_CALL_TIMEOUT, DEFAULT_CREATE_TIMEOUT, DEFAULT_PROTECTION_LEVEL
from tuf_signer.config._secrets import SecretSource, dsn_secrets
from tuf_signer.errors import ConfigError
from tuf_signer.policy import AccessPolicy

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
        max_connections: open client connections per worker; gRPC closes
            any connection past it at once.
        max_streams_per_connection: calls one connection may have open at
            once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS); a client's stream
            past it is refused with REFUSED_STREAM. A stream counts until
            gRPC has freed its call, a little after the client saw it end, so
            a client that keeps this many calls open can get UNAVAILABLE for
            one (gRPC does not retry it): keep it above
            ``limits.max_concurrent``. The product with ``max_connections``
            is how many calls a reset flood can queue ahead of another
            client's call (README "Resource limits").
        max_calls: calls open at once in one worker, over all connections;
            past it a call gets RESOURCE_EXHAUSTED. Each open call, even one
            that never sends its message, costs the event loop memory.
        max_connection_age_seconds: a connection this old (plus or minus
            10%) is told to go away (GOAWAY; clients reconnect at once), and
            closed ``call_deadline`` seconds later with whatever it still
            has open: the bound on a stream that never sends its message.
        idle_timeout_seconds: a connection with no call open for this long
            is closed.
        keepalive_seconds: the server pings a connection silent for this long.
        keepalive_timeout_seconds: a ping unanswered for this long closes
            the connection (a peer that vanished without a FIN).
        max_header_bytes: largest header list (gRPC metadata) of a call, in
            bytes; a larger one is refused before the call starts.
    """

    listen: str = DEFAULT_LISTEN
    insecure: bool = False
    tls: TlsConfig | None = None
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    drain_seconds: float = 10.0
    health_interval: float = 10.0
    call_deadline: float = 30.0
    max_batch_items: int = 4096
    max_batch_bytes: int = 16 * 1024 * 1024
    workers: int = 1
    check_processes: int = 1
    check_timeout: float = 10.0
    max_connections: int = 100
    max_streams_per_connection: int = 300
    max_calls: int = 2000
    max_connection_age_seconds: float = 600.0
    idle_timeout_seconds: float = 300.0
    keepalive_seconds: float = 60.0
    keepalive_timeout_seconds: float = 20.0
    max_header_bytes: int = 16 * 1024


@dataclass(frozen=True)
class LimitsConfig:
    """Abuse limits: per identity (an access rule may override some), and one per process.

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
        max_inflight_bytes: payload bytes of all Sign and SignBatch calls
            being worked on at once in one worker, whoever sent them; a call
            that would pass it is refused (RESOURCE_EXHAUSTED) instead of
            growing memory. At least ``server.max_batch_bytes``.
    """

    max_concurrent: int = 256
    rate: float = 5000.0
    burst: int = 10000
    bytes_rate: float = 256.0 * 1024 * 1024
    bytes_burst: int = 1024 * 1024 * 1024
    check_cpu_rate: float = 1.0
    check_cpu_burst: float = 30.0
    summary_seconds: float = 10.0
    max_inflight_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class WitnessConfig:
    """A witness the signer asks to cosign its checkpoints (c2sp.org/tlog-witness).

    Attributes:
        url: the witness's submission prefix (``add-checkpoint`` is under it),
            which is also its monitoring prefix.
        vkey: its cosignature/v1 verifier key, ``name+hex(id)+base64(0x04 || key)``.
        name: the key name in ``vkey``.
    """

    url: str
    vkey: str
    name: str


@dataclass(frozen=True)
class LogConfig:
    """The transparency log's checkpoints (issue 13): the audit key signs, witnesses cosign.

    Attributes:
        origin: the checkpoints' origin line, which also names the audit key.
        key_backend: the backend holding the audit key ("" in an auditor's
            copy of the config, ``load_audit_config``, which may leave it out).
        key_handle: the audit key's handle in that backend (an Ed25519 key
            that signs nothing but checkpoints; ``tuf-signer audit create-key``).
        checkpoint_interval: seconds between checkpoints while records arrive.
        witnesses: who cosigns them.
        witness_quorum: cosignatures a checkpoint needs to count as witnessed.
        witness_timeout: seconds one witness request may take.
        max_unwitnessed_records: refuse Sign (UNAVAILABLE) while this many
            records or more are newer than the newest witnessed checkpoint; 0: off.
        max_unwitnessed_seconds: refuse Sign while the oldest unwitnessed
            record is this old or older; 0: off.
    """

    origin: str
    key_backend: str
    key_handle: str
    checkpoint_interval: float = 1.0
    witnesses: tuple[WitnessConfig, ...] = ()
    witness_quorum: int = 1  # with witnesses; the parser makes it 0 without
    witness_timeout: float = 5.0
    max_unwitnessed_records: int = 0
    max_unwitnessed_seconds: float = 0.0


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
        log: checkpoints and witnesses; None when ``audit.origin`` and
            ``audit.key`` are not set (the tree is kept, but not checkpointed).
    """

    store: str = "sqlite"
    path: Path = Path("audit.db")
    dsn: str | None = None
    dsn_env: str | None = None
    log: LogConfig | None = None

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
        dsn_secrets(dsn, f"audit.dsn_env ({self.dsn_env})")
        return dsn


@dataclass(frozen=True)
class Pkcs11Config:
    """A PKCS#11 token (SoftHSM locally, a network HSM in production; type ``pkcs11``)."""

    type: ClassVar[str] = "pkcs11"

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

    type: ClassVar[str] = "gcpkms"

    name: str
    project: str
    location: str
    key_ring: str
    credentials_file: Path | None = None
    endpoint: str | None = None
    protection_level: str = DEFAULT_PROTECTION_LEVEL
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
        max_clock_skew: how far ahead of this server's clock a repository's
            clock may run, in seconds: added to every role's expiry bound, so
            that a repository asking for exactly its now + the maximum
            validity is not refused for a clock a little ahead (issue 14).
        activate_on_pinned_sign: a Sign that pins the keyid of a PENDING
            version activates it (recorded), so that a repository moves to a
            new key version by itself once its root lists it (issue 14).
    """

    max_version_step: Mapping[str, int] = field(
        default_factory=lambda: dict.fromkeys(ROLE_CLASSES, DEFAULT_MAX_VERSION_STEP)
    )
    max_clock_skew: int = 300  # seconds
    activate_on_pinned_sign: bool = False


@dataclass(frozen=True)
class OpsConfig:
    """Operations: the plaintext metrics and probes listener, the freshness watch, the log.

    Attributes:
        listen: ``HOST:PORT`` of the ops listener (``/metrics``, ``/healthz``,
            ``/readyz`` and the gRPC health service, in plaintext); "" runs none.
        allow_non_loopback: let ``listen`` be an address that is not loopback
            (a pod IP, for kubelet and Prometheus); off by default.
        expiry_margin_seconds: warn (log and one audit record) when the last
            signed version of a role expires within this many seconds.
        freshness_interval_seconds: seconds between two reads of the role states.
        log_format: ``text`` or ``json`` (one object per line).
        request_log: the INFO lines written per request decision: ``all``
            (each Sign, SignBatch and KeyAdmin call, granted or refused),
            ``refused`` (each refusal on the record) or ``none``.
    """

    listen: str = ""
    allow_non_loopback: bool = False
    expiry_margin_seconds: float = 6 * 3600.0
    freshness_interval_seconds: float = 60.0
    log_format: str = "text"
    request_log: str = "refused"


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
    ops: OpsConfig = field(default_factory=OpsConfig)
