"""The audit key: an Ed25519 key in a backend that signs checkpoints and nothing else.

Its public half, named after the log's origin, is the log's signed-note
verifier key (``origin+hex(key ID)+base64(0x01 || key)``, c2sp.org/signed-note).
No key of the registry is ever the audit key: Sign names registry keys only,
and the server refuses to start if the registry holds its handle (see
``TransparencyLog.start``).
"""

from __future__ import annotations

import logging

from tuf_signer.audit._checkpoint import Checkpoint, sign_checkpoint
from tuf_signer.audit._note import ED25519, Note, VerifierKey
from tuf_signer.config import LogConfig
from tuf_signer.errors import BackendError, BackendUnavailableError, ConfigError
from tuf_signer.keys import KeyBackend
from tuf_signer.model import Algorithm

log = logging.getLogger(__name__)

AUDIT_KEY_LABEL = "tuf-signer-audit"


async def create_audit_key(backend: KeyBackend, origin: str) -> tuple[str, VerifierKey]:
    """Generate a new audit key in ``backend``; its handle and verifier key.

    Raises:
        BackendError: the backend could not generate an Ed25519 key.
    """
    new = await backend.create(Algorithm.ED25519, AUDIT_KEY_LABEL)
    return new.handle, VerifierKey(origin, ED25519, bytes.fromhex(new.public_key.keyval["public"]))


async def audit_verifier_key(backend: KeyBackend, log_config: LogConfig) -> VerifierKey:
    """The audit key's verifier key, read from its backend.

    Raises:
        BackendUnavailableError: the backend cannot be reached now.
        ConfigError: the backend has no Ed25519 key with that handle (names
            ``audit.key``).
    """
    try:
        public = await backend.public_key(log_config.key_handle, Algorithm.ED25519)
    except BackendUnavailableError:
        raise
    except BackendError as e:
        raise ConfigError(
            f"audit.key: backend {backend.name!r} has no usable Ed25519 key with handle "
            f"{log_config.key_handle!r}: {e.reason}"
        ) from None
    return VerifierKey(log_config.origin, ED25519, bytes.fromhex(public.keyval["public"]))


class CheckpointSigner:
    """Signs checkpoints with the audit key in its backend.

    Args:
        backend: where the audit key is.
        handle: its handle there.
        key: its verifier key (``audit_verifier_key``); every signature is
            checked against it before it is used.
    """

    def __init__(self, backend: KeyBackend, handle: str, key: VerifierKey) -> None:
        self._backend = backend
        self._handle = handle
        self.key = key

    async def sign(self, checkpoint: Checkpoint) -> Note:
        """The checkpoint as a signed note.

        Raises:
            BackendError: the backend refused or is away.
            SignatureMismatchError: the backend returned a signature that does
                not verify with the audit key.
        """
        body = checkpoint.body().encode()
        signature = await self._backend.sign(self._handle, Algorithm.ED25519, body)
        return sign_checkpoint(checkpoint, self.key, lambda _message: signature)
