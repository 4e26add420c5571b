"""Google Cloud KMS key backend on google-cloud-kms 3.x (the async client).

Mapping. One tuf-signer key is one KMS ``CryptoKey`` (purpose
``ASYMMETRIC_SIGN``) in the configured key ring, and each tuf-signer key
*version* is one ``CryptoKeyVersion`` of it:

- The service calls ``create(algorithm, label)`` with the label
  ``tuf-signer/{key}/{version}/{random}`` for CreateKey (version 1) and for
  RotateKey (version n). The crypto key id is ``tuf-signer-{key}``
  (``crypto_key_id``: a key name outside KMS's id alphabet is slugged and
  suffixed with a digest of the name). The crypto key is created on first use,
  without an initial version; then every ``create`` adds one version with
  CreateCryptoKeyVersion, waits until KMS has generated it (ENABLED) and reads
  its public key.
- The handle is that version's full resource name,
  ``projects/P/locations/L/keyRings/R/cryptoKeys/K/cryptoKeyVersions/N``. KMS
  numbers (N) need not equal ours: a failed CreateKey, or another deployment
  sharing the key ring, leaves gaps. Two tuf-signer keys never share a version.
- Every signature names its version explicitly, never the crypto key or "the
  latest enabled version", so a rotation can never change the keyid that a
  request gets (P6). Activation is the service's own state: versions stay
  ENABLED in KMS until ``disable`` (retirement) sets them DISABLED.

Integrity (https://cloud.google.com/kms/docs/data-integrity-guidelines).
Requests carry ``data_crc32c`` / ``digest_crc32c``. A response counts only if
KMS says it verified that checksum, if ``signature_crc32c`` / ``pem_crc32c``
match what arrived, and if it names the version asked for. A failed check is
retried up to ``integrity_attempts`` times in all, then the call fails with
UNAVAILABLE. Every signature is also verified against the version's public key
(read once with GetPublicKey and cached) before it is returned: a misbehaving
KMS yields an error, never a bad signature.

Deadlines. ``KeyBackend`` calls carry no deadline, so each call here has its
own budget: ``call_timeout`` seconds (``create_timeout`` for ``create``, which
waits for key generation) for all attempts together, backoff included.
UNAVAILABLE and DEADLINE_EXCEEDED are retried with jittered exponential backoff
while the budget lasts, each RPC getting what is left of it as its timeout;
a backstop timer cancels whatever still runs at the end. Keep ``call_timeout``
below the deadlines that clients of tuf-signer use.

Errors. RESOURCE_EXHAUSTED becomes ``BackendQuotaError``; PERMISSION_DENIED
and UNAUTHENTICATED become ``BackendPermissionError``, naming the IAM
permission the call needs; UNAVAILABLE and DEADLINE_EXCEEDED become
``BackendUnavailableError`` once the budget is spent; anything else is a
``BackendError``.

google-cloud-kms is an optional dependency (the ``gcp`` extra): importing this
module does not import it, ``start`` does.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import json
import logging
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final, TypeVar

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from securesystemslib.signer import SSlibKey

from tuf_signer._net import check_plaintext_credentials
from tuf_signer.errors import (
    BackendError,
    BackendPermissionError,
    BackendQuotaError,
    BackendUnavailableError,
    ConfigError,
)
from tuf_signer.keys import _pubkey
from tuf_signer.keys._backend import KeyBackend, NewKey
from tuf_signer.model import Algorithm

if TYPE_CHECKING:
    from google.cloud.kms_v1 import KeyManagementServiceAsyncClient
    from google.cloud.kms_v1.services.key_management_service.transports import (
        KeyManagementServiceGrpcAsyncIOTransport,
    )
    from google.cloud.kms_v1.types import resources

__all__ = [
    "DEFAULT_ENDPOINT",
    "GcpKmsBackend",
    "TransportFactory",
    "crypto_key_id",
    "kms_transport",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

TransportFactory = Callable[[], Awaitable["KeyManagementServiceGrpcAsyncIOTransport"]]
"""An async callable returning a new transport; ``start`` calls it on the running loop."""

DEFAULT_ENDPOINT = "cloudkms.googleapis.com"
_SCOPES: Final = ("https://www.googleapis.com/auth/cloudkms",)

# KMS algorithm names (CryptoKeyVersion.CryptoKeyVersionAlgorithm) per algorithm.
# Ed25519 signs the data itself (PureEdDSA, RFC 8032); the others sign a SHA-256 digest.
_KMS_ALGORITHM: Final = {
    Algorithm.ED25519: "EC_SIGN_ED25519",
    Algorithm.ECDSA_P256: "EC_SIGN_P256_SHA256",
    Algorithm.RSA_3072_PSS: "RSA_SIGN_PSS_3072_SHA256",
}
_ALGORITHM_OF: Final = {v: k for k, v in _KMS_ALGORITHM.items()}
_PROTECTION_LEVELS: Final = ("HSM", "SOFTWARE")

# The IAM permission each call needs, and a predefined role that grants it.
_PERMISSION: Final = {
    "GetKeyRing": ("cloudkms.keyRings.get", "roles/cloudkms.admin"),
    "CreateKeyRing": ("cloudkms.keyRings.create", "roles/cloudkms.admin"),
    "GetCryptoKey": ("cloudkms.cryptoKeys.get", "roles/cloudkms.admin"),
    "CreateCryptoKey": ("cloudkms.cryptoKeys.create", "roles/cloudkms.admin"),
    "CreateCryptoKeyVersion": ("cloudkms.cryptoKeyVersions.create", "roles/cloudkms.admin"),
    "GetCryptoKeyVersion": ("cloudkms.cryptoKeyVersions.get", "roles/cloudkms.admin"),
    "UpdateCryptoKeyVersion": ("cloudkms.cryptoKeyVersions.update", "roles/cloudkms.admin"),
    "GetPublicKey": ("cloudkms.cryptoKeyVersions.viewPublicKey", "roles/cloudkms.publicKeyViewer"),
    "AsymmetricSign": ("cloudkms.cryptoKeyVersions.useToSign", "roles/cloudkms.signerVerifier"),
}

# Resource ids (https://cloud.google.com/kms/docs/resource-hierarchy).
_ID: Final = re.compile(r"[a-zA-Z0-9_-]{1,63}")
_PROJECT: Final = re.compile(r"[a-z0-9][a-z0-9.:-]{0,99}")
_LOCATION: Final = re.compile(r"[a-z][a-z0-9-]{0,62}")
_VERSION_SUFFIX: Final = re.compile(
    r"/cryptoKeys/[a-zA-Z0-9_-]{1,63}/cryptoKeyVersions/[1-9][0-9]{0,18}"
)
_SERVICE_LABEL: Final = re.compile(r"tuf-signer/(?P<name>[^/]+)/[0-9]+/[0-9a-f]+")
_KEY_PREFIX = "tuf-signer-"

# Budgets of one call and of one key creation, in seconds (config defaults too).
DEFAULT_CALL_TIMEOUT: Final = 10.0
DEFAULT_CREATE_TIMEOUT: Final = 120.0  # KMS generates HSM keys asynchronously
_BACKOFF_FIRST = 0.05  # seconds
_BACKOFF_MAX = 1.0  # seconds
_POLL_FIRST = 0.05  # seconds, first wait for key generation
_POLL_MAX = 2.0  # seconds
_BACKSTOP_GRACE = 0.05  # seconds past the budget before the backstop cancels
_MESSAGE_MAX = 240  # characters of a KMS error message kept in our reasons
_PSS_SALT = 32  # bytes; KMS RSA_SIGN_PSS_*_SHA256 uses the digest length, as securesystemslib


def _import_kms() -> ModuleType:
    """Import google-cloud-kms, or say how to install it.

    Raises:
        ConfigError: the ``gcp`` extra is not installed.
    """
    try:
        importlib.import_module("google_crc32c")  # fail now, not at the first Sign
        kms_v1 = importlib.import_module("google.cloud.kms_v1")
    except ImportError as e:
        raise ConfigError(
            "the gcpkms backend needs google-cloud-kms and google-crc32c: "
            "pip install 'tuf-signer[gcp]'"
        ) from e
    return kms_v1


def _crc32c(data: bytes) -> int:
    import google_crc32c

    return int(google_crc32c.value(data))


def crypto_key_id(label: str) -> str:
    """The KMS crypto key id for a ``create`` label.

    ``tuf-signer/{key}/{version}/{random}`` (the service's labels) maps to
    ``tuf-signer-{key}``, so every version of one key lands in one crypto key;
    any other label maps as if it were the key name. KMS ids are
    ``[a-zA-Z0-9_-]{1,63}``: a name that does not fit is slugged, cut, and
    suffixed with 16 hex digits of its SHA-256, so distinct names get distinct
    ids (a collision would only put two keys' versions in one crypto key; no
    key material is ever shared).
    """
    match = _SERVICE_LABEL.fullmatch(label)
    name = match["name"] if match else label
    plain = _KEY_PREFIX + name
    if _ID.fullmatch(plain):
        return plain
    slug = re.sub(r"[^a-zA-Z0-9_-]", "_", name)[:35]
    return f"{_KEY_PREFIX}{slug}-{hashlib.sha256(name.encode()).hexdigest()[:16]}"


def kms_transport(
    endpoint: str | None = None, credentials_file: Path | str | None = None
) -> TransportFactory:
    """How ``GcpKmsBackend`` reaches Cloud KMS: the factory of its gRPC transport.

    Args:
        endpoint: ``HOST[:PORT]``; None for ``cloudkms.googleapis.com``. A
            loopback address is spoken to in plaintext and without
            credentials (the fake KMS, ``tuf_signer.testing.fake_kms``); any
            other endpoint uses TLS and credentials.
        credentials_file: a service-account (or workload identity federation)
            JSON file; None for Application Default Credentials.

    Returns:
        An async callable that builds a new transport. Credentials are
        loaded when it is called, off the event loop (ADC may ask the
        metadata server).

    Raises:
        ConfigError: a credentials file given with a plaintext loopback endpoint.
        (When called) ConfigError: google-cloud-kms is missing, or no
            credentials can be found or loaded.
    """
    plaintext = check_plaintext_credentials(endpoint, credentials_file, "credentials_file")

    async def connect() -> KeyManagementServiceGrpcAsyncIOTransport:
        kms = _import_kms()
        transport_class = kms.services.key_management_service.transports
        if plaintext:
            import grpc

            assert endpoint is not None
            return transport_class.KeyManagementServiceGrpcAsyncIOTransport(  # type: ignore[no-any-return]
                host=endpoint, channel=grpc.aio.insecure_channel(endpoint)
            )
        credentials = await asyncio.to_thread(_load_credentials, credentials_file)
        return transport_class.KeyManagementServiceGrpcAsyncIOTransport(  # type: ignore[no-any-return]
            host=endpoint or DEFAULT_ENDPOINT, credentials=credentials
        )

    return connect


def _load_credentials(credentials_file: Path | str | None) -> Any:
    """Load a service-account key file, or find Application Default Credentials.

    Only ``"type": "service_account"`` files are accepted as ``credentials_file``
    (google-auth warns that loading any credential type from a file is risky);
    other kinds (workload identity federation...) go through ADC, i.e.
    ``GOOGLE_APPLICATION_CREDENTIALS``.

    Raises:
        ConfigError: none found, or the file cannot be used.
    """
    import google.auth
    from google.auth import exceptions as auth_exceptions
    from google.oauth2 import service_account

    if credentials_file is None:
        try:
            credentials, _ = google.auth.default(scopes=list(_SCOPES))
        except auth_exceptions.GoogleAuthError as e:
            raise ConfigError(
                "cannot load Google credentials from Application Default Credentials "
                "(set credentials_file or GOOGLE_APPLICATION_CREDENTIALS, or run on Google "
                f"Cloud): {type(e).__name__}"
            ) from e
        return credentials
    where = f"credentials_file {credentials_file}"
    try:
        info = json.loads(Path(credentials_file).read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read {where}: {e.strerror}") from e
    except ValueError as e:
        raise ConfigError(f"{where} is not JSON") from e
    if not isinstance(info, dict) or info.get("type") != "service_account":
        raise ConfigError(
            f"{where} is not a service-account key file; use Application Default "
            "Credentials (GOOGLE_APPLICATION_CREDENTIALS) for other credential types"
        )
    try:
        return service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            info, scopes=list(_SCOPES)
        )
    except (ValueError, auth_exceptions.GoogleAuthError) as e:
        # The message of a malformed key could quote it: name the type only.
        raise ConfigError(
            f"{where} is not a usable service-account key ({type(e).__name__})"
        ) from e


@dataclass(frozen=True)
class _VersionKey:
    """A key version's public key, for TUF and for checking signatures."""

    algorithm: Algorithm
    sslib: SSlibKey
    verify: Callable[[bytes, bytes, bytes], None]  # (signature, data, digest); raises


class _IntegrityError(Exception):
    """A KMS answer that failed an integrity check; retried a bounded number of times."""


def _verifier(
    public: PublicKeyTypes, algorithm: Algorithm
) -> Callable[[bytes, bytes, bytes], None]:
    """A signature check for ``public``, raising ``InvalidSignature``.

    Raises:
        BackendError: ``public`` is not a key of ``algorithm``'s type and size.
    """
    if algorithm is Algorithm.ED25519 and isinstance(public, ed25519.Ed25519PublicKey):
        ed = public

        def verify_ed25519(signature: bytes, data: bytes, digest: bytes) -> None:
            ed.verify(signature, data)

        return verify_ed25519
    if (
        algorithm is Algorithm.ECDSA_P256
        and isinstance(public, ec.EllipticCurvePublicKey)
        and isinstance(public.curve, ec.SECP256R1)
    ):
        ecdsa = ec.ECDSA(Prehashed(hashes.SHA256()))
        ecp = public

        def verify_ecdsa(signature: bytes, data: bytes, digest: bytes) -> None:
            ecp.verify(signature, digest, ecdsa)

        return verify_ecdsa
    if (
        algorithm is Algorithm.RSA_3072_PSS
        and isinstance(public, rsa.RSAPublicKey)
        and public.key_size == _pubkey.RSA_BITS
    ):
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=_PSS_SALT)
        prehashed = Prehashed(hashes.SHA256())
        rsp = public

        def verify_rsa(signature: bytes, data: bytes, digest: bytes) -> None:
            rsp.verify(signature, digest, pss, prehashed)

        return verify_rsa
    raise BackendError(f"Cloud KMS returned a public key that is not a {algorithm.value} key")


def _wrong_algorithm(name: str, found: Algorithm | None, wanted: Algorithm) -> str:
    what = f"a {found.value} key" if found else "of an unsupported type"
    return f"key version {name} is {what}, not {wanted.value}"


def _unavailable(
    method: str, resource: str, attempts: int, last: Exception | None
) -> BackendUnavailableError:
    what = "no answer" if last is None else _short(getattr(last, "message", last))
    return BackendUnavailableError(
        f"Cloud KMS unavailable: {method} on {resource} failed after {attempts} "
        f"attempt(s) within the call budget: {what or type(last).__name__}"
    )


def _short(message: object) -> str:
    text = " ".join(str(message).split())
    return text if len(text) <= _MESSAGE_MAX else text[: _MESSAGE_MAX - 3] + "..."


class GcpKmsBackend(KeyBackend):
    """Keys in one Google Cloud KMS key ring (module docstring: mapping, integrity, deadlines).

    Args:
        name: backend name from the config (for messages and logs).
        project: Google Cloud project id.
        location: KMS location, e.g. ``global`` or ``europe-west1``.
        key_ring: key ring id; created on the first ``create`` if missing.
        transport: builds the client's transport (``kms_transport`` for
            Google, ``FakeKms.transport`` in tests).
        protection_level: ``HSM`` (default) or ``SOFTWARE``, for new keys.
        call_timeout: budget of each call in seconds, retries included.
        create_timeout: budget of ``create`` in seconds (KMS generates keys
            asynchronously; RSA in an HSM can take a while).
        integrity_attempts: answers tried per call before an integrity
            failure (CRC32C, name, signature check) becomes UNAVAILABLE.
        sleep: awaited between attempts (tests observe the backoff).

    Raises:
        ConfigError: an argument is out of range or not a valid KMS id.
    """

    def __init__(
        self,
        name: str,
        *,
        project: str,
        location: str,
        key_ring: str,
        transport: TransportFactory,
        protection_level: str = "HSM",
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
        create_timeout: float = DEFAULT_CREATE_TIMEOUT,
        integrity_attempts: int = 3,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        where = f"backend {name!r}"
        if not _PROJECT.fullmatch(project):
            raise ConfigError(f"{where}: project {project!r} is not a Google Cloud project id")
        if not _LOCATION.fullmatch(location):
            raise ConfigError(f"{where}: location {location!r} is not a KMS location")
        if not _ID.fullmatch(key_ring):
            raise ConfigError(f"{where}: key_ring {key_ring!r} must match [a-zA-Z0-9_-]{{1,63}}")
        if protection_level not in _PROTECTION_LEVELS:
            raise ConfigError(f"{where}: protection_level must be one of {_PROTECTION_LEVELS}")
        if not call_timeout > 0 or not create_timeout > 0:
            raise ConfigError(f"{where}: call_timeout and create_timeout must be positive")
        if integrity_attempts < 1:
            raise ConfigError(f"{where}: integrity_attempts must be at least 1")
        self.name = name
        self._location_name = f"projects/{project}/locations/{location}"
        self._ring_id = key_ring
        self._ring = f"{self._location_name}/keyRings/{key_ring}"
        self._transport_factory = transport
        self._protection_level = protection_level
        self._call_timeout = call_timeout
        self._create_timeout = create_timeout
        self._integrity_attempts = integrity_attempts
        self._sleep = sleep
        self._client: KeyManagementServiceAsyncClient | None = None
        self._keys: dict[str, _VersionKey] = {}  # by version name
        self._disabled: set[str] = set()  # version names disabled by this process

    def __repr__(self) -> str:
        return f"GcpKmsBackend(name={self.name!r}, key_ring={self._ring!r})"

    @property
    def key_ring(self) -> str:
        """The key ring's full resource name."""
        return self._ring

    # --- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Build the client and check that KMS answers (GetKeyRing). Idempotent.

        A missing key ring is fine (``create`` makes it), and so is a
        PERMISSION_DENIED on it: a signer needs no ``cloudkms.keyRings.get``.

        Raises:
            ConfigError: google-cloud-kms is missing or credentials cannot be loaded.
            BackendPermissionError: KMS rejects the credentials.
            BackendUnavailableError: KMS does not answer within ``call_timeout``.
            BackendError: any other failure.
        """
        if self._client is not None:
            return
        kms = _import_kms()
        try:
            transport = await self._transport_factory()
        except ConfigError:
            raise
        except Exception as e:
            raise BackendError(
                f"backend {self.name!r}: cannot set up the Cloud KMS transport "
                f"({type(e).__name__}: {_short(e)})"
            ) from e
        client: KeyManagementServiceAsyncClient = kms.KeyManagementServiceAsyncClient(
            transport=transport
        )
        self._client = client
        try:
            found = await self._bounded("GetKeyRing", self._call_timeout, self._probe)
        except BaseException:
            self._client = None
            await self._close_transport(client)
            raise
        what = {
            "found": "key ring %s found",
            "missing": "key ring %s does not exist yet (the first key creates it)",
            "not-allowed": "Cloud KMS answers (no cloudkms.keyRings.get on %s)",
        }[found]
        log.info("backend %r: " + what, self.name, self._ring)

    async def _probe(self, deadline: float) -> str:
        """GetKeyRing; returns what KMS said: ``found``, ``missing`` or ``not-allowed``."""
        from google.api_core import exceptions as gexc
        from google.cloud.kms_v1.types import service

        client = self._require_client()
        try:
            await self._call(
                "GetKeyRing",
                self._ring,
                client.get_key_ring,
                service.GetKeyRingRequest(name=self._ring),
                deadline,
                passthrough=(gexc.NotFound, gexc.PermissionDenied),
            )
        except gexc.NotFound:
            return "missing"
        except gexc.PermissionDenied:
            # Authenticated and answered: enough for a signer without keyRings.get.
            return "not-allowed"
        return "found"

    async def check(self) -> None:
        """Health: KMS answers an authenticated GetKeyRing (NOT_FOUND and PERMISSION_DENIED count).

        Raises:
            BackendUnavailableError: not started, KMS does not answer, or it
                refuses the credentials.
        """
        try:
            await self._bounded("health check", self._call_timeout, self._probe)
        except BackendUnavailableError:
            raise
        except BackendError as e:
            raise BackendUnavailableError(e.reason) from e

    async def close(self) -> None:
        """Close the channel. Idempotent; never raises."""
        client, self._client = self._client, None
        if client is not None:
            await self._close_transport(client)

    async def _close_transport(self, client: KeyManagementServiceAsyncClient) -> None:
        try:
            await client.transport.close()  # type: ignore[no-untyped-call]
        except Exception as e:
            log.warning("backend %r: closing the KMS channel: %s", self.name, e)

    def _require_client(self) -> KeyManagementServiceAsyncClient:
        if self._client is None:
            raise BackendUnavailableError(f"backend {self.name!r} is not started")
        return self._client

    # --- keys --------------------------------------------------------------------

    async def create(self, algorithm: Algorithm, label: str) -> NewKey:
        """Add a new version to the label's crypto key (made if missing) and return it.

        Waits until KMS has generated the key (state ENABLED), then reads its
        public key. CreateCryptoKeyVersion is not retried: it is not idempotent.

        Raises:
            BackendError: KMS refused, the existing crypto key is of another
                purpose, algorithm or protection level, or generation failed.
            BackendPermissionError: a permission is missing (roles/cloudkms.admin).
            BackendQuotaError: a KMS quota is exhausted.
            BackendUnavailableError: not started, or no answer within ``create_timeout``.
        """
        client = self._require_client()
        key_id = crypto_key_id(label)

        async def body(deadline: float) -> NewKey:
            from google.cloud.kms_v1.types import resources, service

            key_name = await self._ensure_crypto_key(key_id, algorithm, deadline)
            version = await self._call(
                "CreateCryptoKeyVersion",
                key_name,
                client.create_crypto_key_version,
                service.CreateCryptoKeyVersionRequest(
                    parent=key_name, crypto_key_version=resources.CryptoKeyVersion()
                ),
                deadline,
                retry=False,
            )
            name = str(version.name)
            self._parse_handle(name)
            log.info("backend %r: created KMS key version %s (label %r)", self.name, name, label)
            await self._wait_until_enabled(version, deadline)
            key = await self._fetch_public_key(name, algorithm, deadline)
            return NewKey(handle=name, public_key=key.sslib)

        return await self._bounded(f"creating key {label!r}", self._create_timeout, body)

    async def _ensure_crypto_key(self, key_id: str, algorithm: Algorithm, deadline: float) -> str:
        """Return the crypto key's name, creating it (and the key ring) if missing."""
        from google.api_core import exceptions as gexc
        from google.cloud.kms_v1.types import resources, service

        client = self._require_client()
        name = f"{self._ring}/cryptoKeys/{key_id}"
        try:
            key = await self._call(
                "GetCryptoKey",
                name,
                client.get_crypto_key,
                service.GetCryptoKeyRequest(name=name),
                deadline,
                passthrough=(gexc.NotFound,),
            )
        except gexc.NotFound:
            request = service.CreateCryptoKeyRequest(
                parent=self._ring,
                crypto_key_id=key_id,
                crypto_key=resources.CryptoKey(
                    purpose=resources.CryptoKey.CryptoKeyPurpose.ASYMMETRIC_SIGN,
                    version_template=resources.CryptoKeyVersionTemplate(
                        algorithm=getattr(
                            resources.CryptoKeyVersion.CryptoKeyVersionAlgorithm,
                            _KMS_ALGORITHM[algorithm],
                        ),
                        protection_level=getattr(resources.ProtectionLevel, self._protection_level),
                    ),
                    labels={"managed-by": "tuf-signer"},
                ),
                skip_initial_version_creation=True,
            )
            key = await self._create_crypto_key(request, deadline)
        self._check_crypto_key(key, algorithm)
        return name

    async def _create_crypto_key(self, request: Any, deadline: float) -> resources.CryptoKey:
        from google.api_core import exceptions as gexc
        from google.cloud.kms_v1.types import service

        client = self._require_client()
        name = f"{self._ring}/cryptoKeys/{request.crypto_key_id}"
        for _ in range(2):
            try:
                key: resources.CryptoKey = await self._call(
                    "CreateCryptoKey",
                    self._ring,
                    client.create_crypto_key,
                    request,
                    deadline,
                    passthrough=(gexc.NotFound, gexc.AlreadyExists),
                )
                log.info("backend %r: created KMS crypto key %s", self.name, name)
                return key
            except gexc.AlreadyExists:  # created meanwhile (another replica)
                key = await self._call(
                    "GetCryptoKey",
                    name,
                    client.get_crypto_key,
                    service.GetCryptoKeyRequest(name=name),
                    deadline,
                )
                return key
            except gexc.NotFound:  # the key ring itself is missing
                await self._create_key_ring(deadline)
        raise BackendError(f"Cloud KMS key ring {self._ring} vanished while creating {name}")

    async def _create_key_ring(self, deadline: float) -> None:
        from google.api_core import exceptions as gexc
        from google.cloud.kms_v1.types import resources, service

        client = self._require_client()
        try:
            await self._call(
                "CreateKeyRing",
                self._location_name,
                client.create_key_ring,
                service.CreateKeyRingRequest(
                    parent=self._location_name,
                    key_ring_id=self._ring_id,
                    key_ring=resources.KeyRing(),
                ),
                deadline,
                passthrough=(gexc.AlreadyExists,),
            )
            log.info("backend %r: created KMS key ring %s", self.name, self._ring)
        except gexc.AlreadyExists:
            pass

    def _check_crypto_key(self, key: resources.CryptoKey, algorithm: Algorithm) -> None:
        """Refuse to add versions to a crypto key that is not what we would have made.

        Raises:
            BackendError: another purpose, algorithm or protection level.
        """
        from google.cloud.kms_v1.types import resources

        purpose = resources.CryptoKey.CryptoKeyPurpose(key.purpose).name
        template = key.version_template
        found_algorithm = resources.CryptoKeyVersion.CryptoKeyVersionAlgorithm(
            template.algorithm
        ).name
        level = resources.ProtectionLevel(template.protection_level).name
        want = _KMS_ALGORITHM[algorithm]
        if purpose != "ASYMMETRIC_SIGN" or found_algorithm != want:
            raise BackendError(
                f"Cloud KMS crypto key {key.name} exists with purpose {purpose} and algorithm "
                f"{found_algorithm}, not ASYMMETRIC_SIGN {want}"
            )
        if level != self._protection_level:
            raise BackendError(
                f"Cloud KMS crypto key {key.name} has protection level {level}, "
                f"not the configured {self._protection_level}"
            )

    async def _wait_until_enabled(
        self, version: resources.CryptoKeyVersion, deadline: float
    ) -> None:
        """Poll a new version until KMS has generated it.

        Raises:
            BackendError: generation failed or the version is in another state.
            BackendUnavailableError: still pending when the budget runs out.
        """
        from google.cloud.kms_v1.types import resources, service

        client = self._require_client()
        states = resources.CryptoKeyVersion.CryptoKeyVersionState
        name = str(version.name)
        loop = asyncio.get_running_loop()
        delay = _POLL_FIRST
        while True:
            state = states(version.state)
            if state == states.ENABLED:
                return
            if state != states.PENDING_GENERATION:
                reason = version.generation_failure_reason or "no reason given"
                raise BackendError(
                    f"Cloud KMS key version {name} is {state.name}, not ENABLED ({_short(reason)})"
                )
            remaining = deadline - loop.time()
            if remaining <= delay:
                raise BackendUnavailableError(
                    f"Cloud KMS did not finish generating key version {name} in time; "
                    "it is left in KMS, unused"
                )
            await self._sleep(delay)
            delay = min(delay * 2, _POLL_MAX)
            version = await self._call(
                "GetCryptoKeyVersion",
                name,
                client.get_crypto_key_version,
                service.GetCryptoKeyVersionRequest(name=name),
                deadline,
            )

    async def public_key(self, handle: str, algorithm: Algorithm) -> SSlibKey:
        """Read the public key of a key version (GetPublicKey, checked; cached).

        Cloud KMS serves public keys of ENABLED versions only: after
        ``disable``, this works only while the key is still cached here.

        Raises:
            BackendError: malformed handle, a key of another algorithm, or
                KMS refused (e.g. the version is disabled).
            BackendPermissionError: no ``cloudkms.cryptoKeyVersions.viewPublicKey``.
            BackendQuotaError: a KMS quota is exhausted.
            BackendUnavailableError: not started, KMS unreachable, or its
                answers failed integrity checks.
        """
        name = self._parse_handle(handle)
        self._require_client()
        cached = self._keys.get(name)
        if cached is not None:
            if cached.algorithm is not algorithm:
                raise BackendError(_wrong_algorithm(name, cached.algorithm, algorithm))
            return cached.sslib

        async def body(deadline: float) -> SSlibKey:
            return (await self._fetch_public_key(name, algorithm, deadline)).sslib

        return await self._bounded(f"GetPublicKey {name}", self._call_timeout, body)

    async def _fetch_public_key(
        self, name: str, algorithm: Algorithm, deadline: float
    ) -> _VersionKey:
        from google.cloud.kms_v1.types import service

        client = self._require_client()
        problem = ""
        for attempt in range(1, self._integrity_attempts + 1):
            response = await self._call(
                "GetPublicKey",
                name,
                client.get_public_key,
                service.GetPublicKeyRequest(name=name),
                deadline,
            )
            try:
                key = self._check_public_key(response, name, algorithm)
            except _IntegrityError as e:
                problem = str(e)
                log.warning(
                    "backend %r: GetPublicKey %s failed an integrity check (%s), attempt %d of %d",
                    self.name,
                    name,
                    problem,
                    attempt,
                    self._integrity_attempts,
                )
                continue
            self._keys[name] = key
            return key
        raise BackendUnavailableError(
            f"Cloud KMS public key of {name} failed integrity checks "
            f"{self._integrity_attempts} time(s): {problem}"
        )

    def _check_public_key(
        self, response: resources.PublicKey, name: str, algorithm: Algorithm
    ) -> _VersionKey:
        """Check a GetPublicKey answer and build the key from its PEM.

        Raises:
            _IntegrityError: wrong name, or the PEM does not match its CRC32C.
            BackendError: a key of another algorithm, or not a usable key.
        """
        from google.cloud.kms_v1.types import resources

        if response.name != name:
            raise _IntegrityError(f"answer names {_short(response.name)!r}")
        pem = str(response.pem)
        pem_crc32c: int | None = response.pem_crc32c  # type: ignore[assignment]
        if pem_crc32c is None or _crc32c(pem.encode()) != pem_crc32c:
            raise _IntegrityError("pem_crc32c does not match the PEM received")
        kms_algorithm = resources.CryptoKeyVersion.CryptoKeyVersionAlgorithm(
            response.algorithm
        ).name
        found = _ALGORITHM_OF.get(kms_algorithm)
        if found is not algorithm:
            raise BackendError(_wrong_algorithm(name, found, algorithm))
        try:
            public = serialization.load_pem_public_key(pem.encode())
        except (ValueError, UnsupportedAlgorithm) as e:
            raise BackendError(f"Cloud KMS returned an unreadable public key for {name}") from e
        verify = _verifier(public, algorithm)
        return _VersionKey(algorithm, _pubkey.to_sslib_key(public, algorithm), verify)

    async def sign(self, handle: str, algorithm: Algorithm, data: bytes) -> bytes:
        """Sign with exactly this key version (AsymmetricSign), checked before it is returned.

        Ed25519 sends ``data`` (KMS signs it with PureEdDSA); ECDSA P-256 and
        RSA-PSS send its SHA-256 digest. KMS returns ECDSA signatures as DER,
        as securesystemslib wants, and RSA-PSS with a 32-byte salt.

        Raises:
            BackendError: malformed or disabled handle, a key of another
                algorithm, or KMS refused (e.g. the version is disabled).
            BackendPermissionError: no ``cloudkms.cryptoKeyVersions.useToSign``.
            BackendQuotaError: a KMS quota is exhausted.
            BackendUnavailableError: not started, KMS unreachable within
                ``call_timeout``, or its answers failed integrity or
                signature checks ``integrity_attempts`` times.
        """
        name = self._parse_handle(handle)
        self._require_client()
        if name in self._disabled:
            raise BackendError(f"key version {name} is disabled")
        cached = self._keys.get(name)
        if cached is not None and cached.algorithm is not algorithm:
            raise BackendError(_wrong_algorithm(name, cached.algorithm, algorithm))

        async def body(deadline: float) -> bytes:
            key = cached or await self._fetch_public_key(name, algorithm, deadline)
            return await self._sign_checked(name, key, data, deadline)

        return await self._bounded(f"AsymmetricSign {name}", self._call_timeout, body)

    async def _sign_checked(
        self, name: str, key: _VersionKey, data: bytes, deadline: float
    ) -> bytes:
        from google.cloud.kms_v1.types import service

        client = self._require_client()
        digest = hashlib.sha256(data).digest() if key.algorithm is not Algorithm.ED25519 else b""
        if key.algorithm is Algorithm.ED25519:
            request = service.AsymmetricSignRequest(name=name, data=data, data_crc32c=_crc32c(data))
        else:
            request = service.AsymmetricSignRequest(
                name=name, digest=service.Digest(sha256=digest), digest_crc32c=_crc32c(digest)
            )
        problem = ""
        for attempt in range(1, self._integrity_attempts + 1):
            response = await self._call(
                "AsymmetricSign", name, client.asymmetric_sign, request, deadline
            )
            try:
                signature = self._check_signature(response, name, key, data, digest)
            except _IntegrityError as e:
                problem = str(e)
                log.warning(
                    "backend %r: AsymmetricSign %s failed an integrity check (%s), "
                    "attempt %d of %d",
                    self.name,
                    name,
                    problem,
                    attempt,
                    self._integrity_attempts,
                )
                continue
            return signature
        raise BackendUnavailableError(
            f"Cloud KMS signatures from {name} failed integrity checks "
            f"{self._integrity_attempts} time(s): {problem}"
        )

    def _check_signature(
        self, response: Any, name: str, key: _VersionKey, data: bytes, digest: bytes
    ) -> bytes:
        """Check an AsymmetricSign answer; return the signature only if it verifies.

        Raises:
            _IntegrityError: a checksum was not verified or does not match,
                the answer names another version, or the signature does not verify.
        """
        if response.name != name:
            raise _IntegrityError(f"answer names {_short(response.name)!r}")
        verified = (
            response.verified_data_crc32c
            if key.algorithm is Algorithm.ED25519
            else response.verified_digest_crc32c
        )
        if not verified:
            field = "data_crc32c" if key.algorithm is Algorithm.ED25519 else "digest_crc32c"
            raise _IntegrityError(f"KMS did not verify the request's {field}")
        signature = bytes(response.signature)
        signature_crc32c: int | None = response.signature_crc32c
        if signature_crc32c is None or _crc32c(signature) != signature_crc32c:
            raise _IntegrityError("signature_crc32c does not match the signature received")
        # The service checks every signature against the *registered* public
        # key too (keys._verify), which catches a KMS serving another key under
        # this name. This check, against the key KMS returned, stays: it runs
        # inside the integrity retry loop, so a damaged answer is asked again
        # instead of failing the request.
        try:
            key.verify(signature, data, digest)
        except InvalidSignature as e:
            # Not a transit error (the CRC matched): KMS itself produced it.
            log.error(
                "backend %r: Cloud KMS returned a signature from %s that does not verify "
                "against its public key; it is discarded",
                self.name,
                name,
            )
            raise _IntegrityError("the signature does not verify against the public key") from e
        return signature

    async def disable(self, handle: str) -> None:
        """Set a retired key version DISABLED in KMS; this process refuses it at once.

        The version is kept (not destroyed): old metadata stays verifiable
        against the public key the service recorded.

        Raises:
            BackendError: malformed handle, or KMS refused (e.g. the version is destroyed).
            BackendPermissionError: no ``cloudkms.cryptoKeyVersions.update``.
            BackendQuotaError: a KMS quota is exhausted.
            BackendUnavailableError: not started, or KMS unreachable within ``call_timeout``.
        """
        from google.cloud.kms_v1.types import resources, service
        from google.protobuf import field_mask_pb2

        name = self._parse_handle(handle)
        client = self._require_client()
        self._disabled.add(name)
        request = service.UpdateCryptoKeyVersionRequest(
            crypto_key_version=resources.CryptoKeyVersion(
                name=name, state=resources.CryptoKeyVersion.CryptoKeyVersionState.DISABLED
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["state"]),
        )

        async def body(deadline: float) -> None:
            await self._call(
                "UpdateCryptoKeyVersion", name, client.update_crypto_key_version, request, deadline
            )

        await self._bounded(f"disabling {name}", self._call_timeout, body)
        log.info("backend %r: disabled KMS key version %s", self.name, name)

    # --- plumbing ----------------------------------------------------------------

    def _parse_handle(self, handle: str) -> str:
        """Check that a handle is a key version name in our key ring.

        Raises:
            BackendError: it is not.
        """
        if not handle.startswith(self._ring + "/") or not _VERSION_SUFFIX.fullmatch(
            handle, len(self._ring)
        ):
            raise BackendError(
                f"malformed Cloud KMS key handle {handle[:200]!r}: not a key version "
                f"in key ring {self._ring}"
            )
        return handle

    async def _bounded(
        self, what: str, budget: float, body: Callable[[float], Awaitable[_T]]
    ) -> _T:
        """Run ``body(deadline)``; cancel it if it outlives ``budget`` seconds.

        Raises:
            BackendUnavailableError: the budget ran out.
        """
        deadline = asyncio.get_running_loop().time() + budget
        try:
            async with asyncio.timeout_at(deadline + _BACKSTOP_GRACE):
                return await body(deadline)
        except TimeoutError as e:
            raise BackendUnavailableError(
                f"Cloud KMS: {what} did not finish within {budget:g} s"
            ) from e

    async def _call(
        self,
        method: str,
        resource: str,
        rpc: Callable[..., Awaitable[_T]],
        request: Any,
        deadline: float,
        *,
        passthrough: tuple[type[Exception], ...] = (),
        retry: bool = True,
    ) -> _T:
        """One KMS RPC, retried on UNAVAILABLE / DEADLINE_EXCEEDED until ``deadline``.

        Args:
            method: the RPC's name (for messages and the IAM permission).
            resource: what it acts on (for messages).
            rpc: the client method.
            request: its request message.
            deadline: ``loop.time()`` by which everything must be done.
            passthrough: google.api_core exceptions the caller handles itself.
            retry: False for calls that are not idempotent.

        Raises:
            BackendQuotaError: RESOURCE_EXHAUSTED.
            BackendPermissionError: PERMISSION_DENIED, UNAUTHENTICATED, or
                credentials that cannot be refreshed.
            BackendUnavailableError: transient failures until the deadline.
            BackendError: any other error status.
        """
        from google.api_core import exceptions as gexc
        from google.auth import exceptions as auth_exceptions

        loop = asyncio.get_running_loop()
        attempt = 0
        last: Exception | None = None
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise _unavailable(method, resource, attempt, last) from last
            attempt += 1
            try:
                return await rpc(request=request, retry=None, timeout=remaining)
            except passthrough:
                raise
            except (gexc.ServiceUnavailable, gexc.DeadlineExceeded) as e:
                last = e
            except auth_exceptions.TransportError as e:  # fetching a token failed
                last = e
            except gexc.ResourceExhausted as e:
                raise BackendQuotaError(
                    f"Cloud KMS quota exhausted for {method} on {resource}: {_short(e.message)}"
                ) from e
            except (gexc.PermissionDenied, gexc.Unauthenticated) as e:
                permission, role = _PERMISSION.get(method, ("?", "roles/cloudkms.admin"))
                if isinstance(e, gexc.Unauthenticated):
                    reason = (
                        f"Cloud KMS rejected the credentials of backend {self.name!r} "
                        f"({method} on {resource}): {_short(e.message)}"
                    )
                else:
                    reason = (
                        f"Cloud KMS denied {method} on {resource}: grant IAM permission "
                        f"{permission} (e.g. {role}) to the signer's service account"
                    )
                raise BackendPermissionError(reason) from e
            except gexc.GoogleAPICallError as e:
                status = e.grpc_status_code.name if e.grpc_status_code else type(e).__name__
                raise BackendError(
                    f"Cloud KMS refused {method} on {resource}: {status}: {_short(e.message)}"
                ) from e
            except auth_exceptions.GoogleAuthError as e:
                raise BackendPermissionError(
                    f"backend {self.name!r} cannot obtain Google credentials ({type(e).__name__})"
                ) from e
            delay = min(_BACKOFF_FIRST * 2 ** (attempt - 1), _BACKOFF_MAX)
            delay *= random.uniform(0.5, 1.5)  # noqa: S311 - jitter, not security
            if not retry or delay >= deadline - loop.time():
                raise _unavailable(method, resource, attempt, last) from last
            log.warning(
                "backend %r: %s on %s: %s; retrying in %.2fs",
                self.name,
                method,
                resource,
                _short(last),
                delay,
            )
            await self._sleep(delay)
