"""The one interface every key backend implements (PKCS#11, Cloud KMS...)."""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from securesystemslib.signer import SSlibKey

from tuf_signer.errors import BackendError
from tuf_signer.model import Algorithm


@dataclass(frozen=True)
class NewKey:
    """A key pair just generated inside a backend.

    Attributes:
        handle: how the backend finds the private key again (opaque to callers,
            stored in the key registry; never secret).
        public_key: the TUF public key, keyid computed as securesystemslib does
            by default.
    """

    handle: str
    public_key: SSlibKey


class KeyBackend(abc.ABC):
    """Holds private keys and signs with them; never hands out private bytes (P1).

    Every method is a coroutine. Implementations that block (PKCS#11) run the
    blocking work on their own thread(s), never on the event loop.

    Errors: every method raises only ``BackendUnavailableError`` (HSM/KMS cannot
    be reached; the caller should fail closed with UNAVAILABLE) or
    ``BackendError`` (anything else), each wrapping the original with
    ``raise ... from e``. Messages never contain PINs or key material.
    """

    name: str

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect and log in. Retries the transient failures seen at startup."""

    @abc.abstractmethod
    async def create(self, algorithm: Algorithm, label: str) -> NewKey:
        """Generate a new non-extractable key pair in the backend."""

    @abc.abstractmethod
    async def public_key(self, handle: str, algorithm: Algorithm) -> SSlibKey:
        """Read the public key of an existing key pair."""

    @abc.abstractmethod
    async def sign(self, handle: str, algorithm: Algorithm, data: bytes) -> bytes:
        """Sign ``data`` and return signature bytes in securesystemslib's format.

        Ed25519: the 64-byte signature. ECDSA P-256: DER. RSA-PSS: the raw
        signature (SHA-256, MGF1-SHA-256, salt length 32).
        """

    async def sign_batch(
        self,
        items: Sequence[tuple[str, Algorithm, bytes]],
        digests: Sequence[bytes] | None = None,
    ) -> list[bytes | BackendError]:
        """Sign ``(handle, algorithm, data)`` items; one result or error per item.

        ``digests``, when given, holds each item's SHA-256 of ``data`` (the
        service computes it for the record anyway): a backend that signs a
        digest (ECDSA) may use it rather than hash 54 KB again.

        The default signs them concurrently with ``sign``; a backend that can
        do better (one trip to its thread, one request) overrides it.
        """
        results = await asyncio.gather(
            *(self.sign(h, a, d) for h, a, d in items), return_exceptions=True
        )
        out: list[bytes | BackendError] = []
        for r in results:
            if isinstance(r, BackendError):
                out.append(r)
            elif isinstance(r, BaseException):
                raise r
            else:
                out.append(r)
        return out

    @abc.abstractmethod
    async def disable(self, handle: str) -> None:
        """Make a retired key version unusable where the backend supports it."""

    @abc.abstractmethod
    async def check(self) -> None:
        """Health check; raises ``BackendUnavailableError`` when unhealthy."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release sessions and threads. Idempotent."""
