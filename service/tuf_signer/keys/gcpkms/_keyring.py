"""The configured key ring: KMS resource names, and making new key versions in it.

Resource ids follow https://cloud.google.com/kms/docs/resource-hierarchy. A
new version goes into the crypto key of its tuf-signer key (``crypto_key_id``),
which is created on first use without an initial version (and the key ring
with it); then KMS generates the version asynchronously, and ``new_version``
waits until it is ENABLED.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from tuf_signer._kms import KMS_ID, PROTECTION_LEVELS, id_problem
from tuf_signer.errors import BackendError, BackendUnavailableError, ConfigError
from tuf_signer.keys._backoff import Backoff
from tuf_signer.keys.gcpkms._calls import KmsCalls, short
from tuf_signer.keys.gcpkms._verification import KMS_ALGORITHM
from tuf_signer.model import Algorithm

if TYPE_CHECKING:
    from tuf_signer.keys.gcpkms._google import CryptoKey, CryptoKeyVersion

__all__ = ["KeyRing", "crypto_key_id"]

log = logging.getLogger(__name__)

_VERSION_SUFFIX: Final = re.compile(
    r"/cryptoKeys/[a-zA-Z0-9_-]{1,63}/cryptoKeyVersions/[1-9][0-9]{0,18}"
)
_SERVICE_LABEL: Final = re.compile(r"tuf-signer/(?P<name>[^/]+)/[0-9]+/[0-9a-f]+")
_KEY_PREFIX = "tuf-signer-"
# Waits for key generation: 0.05 s doubling up to 2 s, exact (nothing to spread out).
_POLL: Final = Backoff(first=0.05, maximum=2.0, jitter=0.0)


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
    if KMS_ID.fullmatch(plain):
        return plain
    slug = re.sub(r"[^a-zA-Z0-9_-]", "_", name)[:35]
    return f"{_KEY_PREFIX}{slug}-{hashlib.sha256(name.encode()).hexdigest()[:16]}"


@dataclass(frozen=True)
class KeyRing:
    """One key ring of one backend, and the protection level of the keys made in it.

    Attributes:
        backend: the backend's name, for messages and logs.
        location: ``projects/P/locations/L``.
        ring_id: the key ring's id.
        protection_level: ``HSM`` or ``SOFTWARE``, for new keys.
    """

    backend: str
    location: str
    ring_id: str
    protection_level: str

    @classmethod
    def checked(
        cls, backend: str, project: str, location: str, key_ring: str, protection_level: str
    ) -> KeyRing:
        """The key ring, once its ids are valid KMS ids.

        Raises:
            ConfigError: naming the first argument that is not.
        """
        where = f"backend {backend!r}"
        for kind, value in (("project", project), ("location", location), ("key_ring", key_ring)):
            problem = id_problem(kind, value)
            if problem is not None:
                raise ConfigError(f"{where}: {kind} {problem}")
        if protection_level not in PROTECTION_LEVELS:
            raise ConfigError(f"{where}: protection_level must be one of {PROTECTION_LEVELS}")
        return cls(backend, f"projects/{project}/locations/{location}", key_ring, protection_level)

    @property
    def name(self) -> str:
        """The key ring's full resource name."""
        return f"{self.location}/keyRings/{self.ring_id}"

    def parse_handle(self, handle: str) -> str:
        """Check that a handle is a key version name in this key ring.

        Raises:
            BackendError: it is not.
        """
        ring = self.name
        if not handle.startswith(ring + "/") or not _VERSION_SUFFIX.fullmatch(handle, len(ring)):
            raise BackendError(
                f"malformed Cloud KMS key handle {handle[:200]!r}: not a key version "
                f"in key ring {ring}"
            )
        return handle

    async def new_version(
        self, kms: KmsCalls, algorithm: Algorithm, label: str, deadline: float
    ) -> str:
        """Add a version to the label's crypto key (made if missing); returns its name once ENABLED.

        CreateCryptoKeyVersion is not retried: it is not idempotent.

        Raises:
            BackendError: KMS refused, the existing crypto key is of another
                purpose, algorithm or protection level, or generation failed.
            BackendUnavailableError: no answer, or still generating, by ``deadline``.
        """
        key_name = await self._ensure_crypto_key(kms, crypto_key_id(label), algorithm, deadline)
        version = await kms.call(
            "CreateCryptoKeyVersion",
            key_name,
            kms.client.create_crypto_key_version,
            kms.google.service.CreateCryptoKeyVersionRequest(
                parent=key_name, crypto_key_version=kms.google.resources.CryptoKeyVersion()
            ),
            deadline,
            retry=False,
        )
        name = str(version.name)
        self.parse_handle(name)
        log.info("backend %r: created KMS key version %s (label %r)", self.backend, name, label)
        await self._wait_until_enabled(kms, version, deadline)
        return name

    async def _ensure_crypto_key(
        self, kms: KmsCalls, key_id: str, algorithm: Algorithm, deadline: float
    ) -> str:
        """Return the crypto key's name, creating it (and the key ring) if missing."""
        resources, service = kms.google.resources, kms.google.service
        name = f"{self.name}/cryptoKeys/{key_id}"
        try:
            key = await kms.call(
                "GetCryptoKey",
                name,
                kms.client.get_crypto_key,
                service.GetCryptoKeyRequest(name=name),
                deadline,
                passthrough=(kms.google.api_errors.NotFound,),
            )
        except kms.google.api_errors.NotFound:
            request = service.CreateCryptoKeyRequest(
                parent=self.name,
                crypto_key_id=key_id,
                crypto_key=resources.CryptoKey(
                    purpose=resources.CryptoKey.CryptoKeyPurpose.ASYMMETRIC_SIGN,
                    version_template=resources.CryptoKeyVersionTemplate(
                        algorithm=getattr(
                            resources.CryptoKeyVersion.CryptoKeyVersionAlgorithm,
                            KMS_ALGORITHM[algorithm],
                        ),
                        protection_level=getattr(resources.ProtectionLevel, self.protection_level),
                    ),
                    labels={"managed-by": "tuf-signer"},
                ),
                skip_initial_version_creation=True,
            )
            key = await self._create_crypto_key(kms, request, deadline)
        self._check_crypto_key(kms, key, algorithm)
        return name

    async def _create_crypto_key(self, kms: KmsCalls, request: Any, deadline: float) -> CryptoKey:
        gexc = kms.google.api_errors
        name = f"{self.name}/cryptoKeys/{request.crypto_key_id}"
        for _ in range(2):
            try:
                key: CryptoKey = await kms.call(
                    "CreateCryptoKey",
                    self.name,
                    kms.client.create_crypto_key,
                    request,
                    deadline,
                    passthrough=(gexc.NotFound, gexc.AlreadyExists),
                )
                log.info("backend %r: created KMS crypto key %s", self.backend, name)
                return key
            except gexc.AlreadyExists:  # created meanwhile (another replica)
                key = await kms.call(
                    "GetCryptoKey",
                    name,
                    kms.client.get_crypto_key,
                    kms.google.service.GetCryptoKeyRequest(name=name),
                    deadline,
                )
                return key
            except gexc.NotFound:  # the key ring itself is missing
                await self._create_key_ring(kms, deadline)
        raise BackendError(f"Cloud KMS key ring {self.name} vanished while creating {name}")

    async def _create_key_ring(self, kms: KmsCalls, deadline: float) -> None:
        try:
            await kms.call(
                "CreateKeyRing",
                self.location,
                kms.client.create_key_ring,
                kms.google.service.CreateKeyRingRequest(
                    parent=self.location,
                    key_ring_id=self.ring_id,
                    key_ring=kms.google.resources.KeyRing(),
                ),
                deadline,
                passthrough=(kms.google.api_errors.AlreadyExists,),
            )
            log.info("backend %r: created KMS key ring %s", self.backend, self.name)
        except kms.google.api_errors.AlreadyExists:
            pass

    def _check_crypto_key(self, kms: KmsCalls, key: CryptoKey, algorithm: Algorithm) -> None:
        """Refuse to add versions to a crypto key that is not what we would have made.

        Raises:
            BackendError: another purpose, algorithm or protection level.
        """
        resources = kms.google.resources
        purpose = resources.CryptoKey.CryptoKeyPurpose(key.purpose).name
        template = key.version_template
        found_algorithm = resources.CryptoKeyVersion.CryptoKeyVersionAlgorithm(
            template.algorithm
        ).name
        level = resources.ProtectionLevel(template.protection_level).name
        want = KMS_ALGORITHM[algorithm]
        if purpose != "ASYMMETRIC_SIGN" or found_algorithm != want:
            raise BackendError(
                f"Cloud KMS crypto key {key.name} exists with purpose {purpose} and algorithm "
                f"{found_algorithm}, not ASYMMETRIC_SIGN {want}"
            )
        if level != self.protection_level:
            raise BackendError(
                f"Cloud KMS crypto key {key.name} has protection level {level}, "
                f"not the configured {self.protection_level}"
            )

    async def _wait_until_enabled(
        self, kms: KmsCalls, version: CryptoKeyVersion, deadline: float
    ) -> None:
        """Poll a new version until KMS has generated it.

        Raises:
            BackendError: generation failed or the version is in another state.
            BackendUnavailableError: still pending when the budget runs out.
        """
        states = kms.google.resources.CryptoKeyVersion.CryptoKeyVersionState
        name = str(version.name)
        loop = asyncio.get_running_loop()
        polls = 0
        while True:
            state = states(version.state)
            if state == states.ENABLED:
                return
            if state != states.PENDING_GENERATION:
                reason = version.generation_failure_reason or "no reason given"
                raise BackendError(
                    f"Cloud KMS key version {name} is {state.name}, not ENABLED ({short(reason)})"
                )
            polls += 1
            delay = _POLL.delay(polls)
            if deadline - loop.time() <= delay:
                raise BackendUnavailableError(
                    f"Cloud KMS did not finish generating key version {name} in time; "
                    "it is left in KMS, unused"
                )
            await kms.sleep(delay)
            version = await kms.call(
                "GetCryptoKeyVersion",
                name,
                kms.client.get_crypto_key_version,
                kms.google.service.GetCryptoKeyVersionRequest(name=name),
                deadline,
            )
