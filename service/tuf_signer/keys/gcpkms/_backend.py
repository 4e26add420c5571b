"""``GcpKmsBackend``: the ``KeyBackend`` on Google Cloud KMS (google-cloud-kms 3.x, async client).

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

Integrity: ``_verification``; a failed check is retried up to
``integrity_attempts`` times in all, then the call fails with UNAVAILABLE.
Deadlines and errors: ``_calls``; keep ``call_timeout`` below the deadlines
that clients of tuf-signer use. Names and key creation: ``_keyring``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from securesystemslib.signer import SSlibKey

from tuf_signer._kms import DEFAULT_CALL_TIMEOUT, DEFAULT_CREATE_TIMEOUT, DEFAULT_PROTECTION_LEVEL
from tuf_signer.errors import BackendError, BackendUnavailableError, ConfigError
from tuf_signer.keys._backend import KeyBackend, NewKey
from tuf_signer.keys.gcpkms._calls import KmsCalls, bounded, short
from tuf_signer.keys.gcpkms._google import import_google
from tuf_signer.keys.gcpkms._keyring import KeyRing
from tuf_signer.keys.gcpkms._verification import (
    IntegrityError,
    VersionKey,
    check_public_key,
    check_signature,
    wrong_algorithm,
)
from tuf_signer.model import Algorithm

if TYPE_CHECKING:
    from tuf_signer.keys.gcpkms._google import KeyManagementServiceAsyncClient
    from tuf_signer.keys.gcpkms._transport import TransportFactory

__all__ = ["DEFAULT_CALL_TIMEOUT", "DEFAULT_CREATE_TIMEOUT", "GcpKmsBackend"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# Budgets of one call and of one key creation, in seconds (config defaults too).


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
        protection_level: str = DEFAULT_PROTECTION_LEVEL,
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
        create_timeout: float = DEFAULT_CREATE_TIMEOUT,
        integrity_attempts: int = 3,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._ring = KeyRing.checked(name, project, location, key_ring, protection_level)
        where = f"backend {name!r}"
        if not call_timeout > 0 or not create_timeout > 0:
            raise ConfigError(f"{where}: call_timeout and create_timeout must be positive")
        if integrity_attempts < 1:
            raise ConfigError(f"{where}: integrity_attempts must be at least 1")
        self.name = name
        self._transport_factory = transport
        self._call_timeout = call_timeout
        self._create_timeout = create_timeout
        self._integrity_attempts = integrity_attempts
        self._sleep = sleep
        self._kms: KmsCalls | None = None  # set by start
        self._keys: dict[str, VersionKey] = {}  # by version name
        self._disabled: set[str] = set()  # version names disabled by this process

    def __repr__(self) -> str:
        return f"GcpKmsBackend(name={self.name!r}, key_ring={self._ring.name!r})"

    @property
    def key_ring(self) -> str:
        """The key ring's full resource name."""
        return self._ring.name

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
        if self._kms is not None:
            return
        google = import_google()
        try:
            transport = await self._transport_factory()
        except ConfigError:
            raise
        except Exception as e:
            raise BackendError(
                f"backend {self.name!r}: cannot set up the Cloud KMS transport "
                f"({type(e).__name__}: {short(e)})"
            ) from e
        client: KeyManagementServiceAsyncClient = google.kms.KeyManagementServiceAsyncClient(
            transport=transport
        )
        self._kms = KmsCalls(self.name, client, google, self._sleep)
        try:
            found = await bounded("GetKeyRing", self._call_timeout, self._probe)
        except BaseException:
            self._kms = None
            await self._close_transport(client)
            raise
        what = {
            "found": "key ring %s found",
            "missing": "key ring %s does not exist yet (the first key creates it)",
            "not-allowed": "Cloud KMS answers (no cloudkms.keyRings.get on %s)",
        }[found]
        log.info("backend %r: " + what, self.name, self._ring.name)

    async def _probe(self, deadline: float) -> str:
        """GetKeyRing; returns what KMS said: ``found``, ``missing`` or ``not-allowed``."""
        kms = self._require()
        gexc = kms.google.api_errors
        try:
            await kms.call(
                "GetKeyRing",
                self._ring.name,
                kms.client.get_key_ring,
                kms.google.service.GetKeyRingRequest(name=self._ring.name),
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
            await bounded("health check", self._call_timeout, self._probe)
        except BackendUnavailableError:
            raise
        except BackendError as e:
            raise BackendUnavailableError(e.reason) from e

    async def close(self) -> None:
        """Close the channel. Idempotent; never raises."""
        kms, self._kms = self._kms, None
        if kms is not None:
            await self._close_transport(kms.client)

    async def _close_transport(self, client: KeyManagementServiceAsyncClient) -> None:
        try:
            await client.transport.close()  # type: ignore[no-untyped-call]
        except Exception as e:
            log.warning("backend %r: closing the KMS channel: %s", self.name, e)

    def _require(self) -> KmsCalls:
        if self._kms is None:
            raise BackendUnavailableError(f"backend {self.name!r} is not started")
        return self._kms

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
        kms = self._require()

        async def body(deadline: float) -> NewKey:
            name = await self._ring.new_version(kms, algorithm, label, deadline)
            key = await self._fetch_public_key(name, algorithm, deadline)
            return NewKey(handle=name, public_key=key.sslib)

        return await bounded(f"creating key {label!r}", self._create_timeout, body)

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
        name = self._ring.parse_handle(handle)
        self._require()
        cached = self._keys.get(name)
        if cached is not None:
            if cached.algorithm is not algorithm:
                raise BackendError(wrong_algorithm(name, cached.algorithm, algorithm))
            return cached.sslib

        async def body(deadline: float) -> SSlibKey:
            return (await self._fetch_public_key(name, algorithm, deadline)).sslib

        return await bounded(f"GetPublicKey {name}", self._call_timeout, body)

    async def _fetch_public_key(
        self, name: str, algorithm: Algorithm, deadline: float
    ) -> VersionKey:
        kms = self._require()
        request = kms.google.service.GetPublicKeyRequest(name=name)
        key = await self._checked(
            "GetPublicKey",
            name,
            lambda: kms.call("GetPublicKey", name, kms.client.get_public_key, request, deadline),
            lambda response: check_public_key(kms.google, response, name, algorithm),
            f"Cloud KMS public key of {name}",
        )
        self._keys[name] = key
        return key

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
        name = self._ring.parse_handle(handle)
        self._require()
        if name in self._disabled:
            raise BackendError(f"key version {name} is disabled")
        cached = self._keys.get(name)
        if cached is not None and cached.algorithm is not algorithm:
            raise BackendError(wrong_algorithm(name, cached.algorithm, algorithm))

        async def body(deadline: float) -> bytes:
            key = cached or await self._fetch_public_key(name, algorithm, deadline)
            return await self._sign_checked(name, key, data, deadline)

        return await bounded(f"AsymmetricSign {name}", self._call_timeout, body)

    async def _sign_checked(
        self, name: str, key: VersionKey, data: bytes, deadline: float
    ) -> bytes:
        kms = self._require()
        service, crc32c = kms.google.service, kms.google.crc32c
        digest = hashlib.sha256(data).digest() if key.algorithm is not Algorithm.ED25519 else b""
        if key.algorithm is Algorithm.ED25519:
            request = service.AsymmetricSignRequest(name=name, data=data, data_crc32c=crc32c(data))
        else:
            request = service.AsymmetricSignRequest(
                name=name, digest=service.Digest(sha256=digest), digest_crc32c=crc32c(digest)
            )
        return await self._checked(
            "AsymmetricSign",
            name,
            lambda: kms.call("AsymmetricSign", name, kms.client.asymmetric_sign, request, deadline),
            lambda response: check_signature(
                kms.google, response, name, key, data, digest, backend=self.name
            ),
            f"Cloud KMS signatures from {name}",
        )

    async def _checked(
        self,
        method: str,
        name: str,
        ask: Callable[[], Awaitable[Any]],
        check: Callable[[Any], _T],
        what: str,
    ) -> _T:
        """Ask KMS until an answer passes ``check``, at most ``integrity_attempts`` times.

        Raises:
            BackendUnavailableError: every answer failed an integrity check.
        """
        problem = ""
        for attempt in range(1, self._integrity_attempts + 1):
            response = await ask()
            try:
                return check(response)
            except IntegrityError as e:
                problem = str(e)
                log.warning(
                    "backend %r: %s %s failed an integrity check (%s), attempt %d of %d",
                    self.name,
                    method,
                    name,
                    problem,
                    attempt,
                    self._integrity_attempts,
                )
        raise BackendUnavailableError(
            f"{what} failed integrity checks {self._integrity_attempts} time(s): {problem}"
        )

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
        name = self._ring.parse_handle(handle)
        kms = self._require()
        resources = kms.google.resources
        self._disabled.add(name)
        request = kms.google.service.UpdateCryptoKeyVersionRequest(
            crypto_key_version=resources.CryptoKeyVersion(
                name=name, state=resources.CryptoKeyVersion.CryptoKeyVersionState.DISABLED
            ),
            update_mask=kms.google.field_mask.FieldMask(paths=["state"]),
        )

        async def body(deadline: float) -> None:
            await kms.call(
                "UpdateCryptoKeyVersion",
                name,
                kms.client.update_crypto_key_version,
                request,
                deadline,
            )

        await bounded(f"disabling {name}", self._call_timeout, body)
        log.info("backend %r: disabled KMS key version %s", self.name, name)
