"""Key backends: one ``KeyBackend`` interface, one implementation per HSM/KMS.

Importing this package loads no PKCS#11 module: ``Pkcs11Backend.start`` does.
(python-pkcs11 itself is imported anyway, by securesystemslib's signers.)
Nor does it need google-cloud-kms (the ``gcp`` extra): ``GcpKmsBackend.start`` imports it.
"""

from __future__ import annotations

from tuf_signer.keys._backend import KeyBackend, NewKey
from tuf_signer.keys._gcpkms import (
    DEFAULT_CALL_TIMEOUT,
    DEFAULT_CREATE_TIMEOUT,
    GcpKmsBackend,
    crypto_key_id,
    kms_transport,
)
from tuf_signer.keys._pkcs11 import Pkcs11Backend
from tuf_signer.keys._softhsm import init_token, softhsm_module_path, write_softhsm_config
from tuf_signer.keys._verify import SignatureVerifier, load_public_key

__all__ = [
    "DEFAULT_CALL_TIMEOUT",
    "DEFAULT_CREATE_TIMEOUT",
    "GcpKmsBackend",
    "KeyBackend",
    "NewKey",
    "Pkcs11Backend",
    "SignatureVerifier",
    "crypto_key_id",
    "init_token",
    "kms_transport",
    "load_public_key",
    "softhsm_module_path",
    "write_softhsm_config",
]
