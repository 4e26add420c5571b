"""Key backends: one ``KeyBackend`` interface, one implementation per HSM/KMS.

- ``tuf_signer.keys.pkcs11``: ``Pkcs11Backend`` (SoftHSM, PKCS#11 HSMs);
- ``tuf_signer.keys.gcpkms``: ``GcpKmsBackend`` (Google Cloud KMS).

Importing this package loads no PKCS#11 module: ``Pkcs11Backend.start`` does.
(python-pkcs11 itself is imported anyway, by securesystemslib's signers.)
Nor does it need google-cloud-kms (the ``gcp`` extra): ``GcpKmsBackend.start`` imports it.
SoftHSM dev tooling is in ``tuf_signer.testing.softhsm``.
"""

from __future__ import annotations

from tuf_signer.keys._backend import KeyBackend, NewKey
from tuf_signer.keys._verify import SignatureVerifier, load_public_key
from tuf_signer.keys.gcpkms import (
    DEFAULT_CALL_TIMEOUT,
    DEFAULT_CREATE_TIMEOUT,
    GcpKmsBackend,
    crypto_key_id,
    kms_transport,
)
from tuf_signer.keys.pkcs11 import Pkcs11Backend

__all__ = [
    "DEFAULT_CALL_TIMEOUT",
    "DEFAULT_CREATE_TIMEOUT",
    "GcpKmsBackend",
    "KeyBackend",
    "NewKey",
    "Pkcs11Backend",
    "SignatureVerifier",
    "crypto_key_id",
    "kms_transport",
    "load_public_key",
]
