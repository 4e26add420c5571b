"""The Google Cloud KMS key backend (google-cloud-kms, the optional ``gcp`` extra).

- ``_google``: the one place that imports the Google libraries, lazily;
- ``_transport``: the gRPC transport and Google credentials (``kms_transport``);
- ``_calls``: call budgets, retries, and Google errors mapped to ours;
- ``_verification``: integrity and signature checks of KMS answers;
- ``_keyring``: resource names, and making new key versions;
- ``_backend``: ``GcpKmsBackend``, the ``KeyBackend`` built on them.

Importing this package does not import google-cloud-kms; ``GcpKmsBackend.start``
and the ``kms_transport`` factory do.
"""

from __future__ import annotations

from tuf_signer.keys.gcpkms._backend import (
    DEFAULT_CALL_TIMEOUT,
    DEFAULT_CREATE_TIMEOUT,
    GcpKmsBackend,
)
from tuf_signer.keys.gcpkms._keyring import crypto_key_id
from tuf_signer.keys.gcpkms._transport import DEFAULT_ENDPOINT, TransportFactory, kms_transport

__all__ = [
    "DEFAULT_CALL_TIMEOUT",
    "DEFAULT_CREATE_TIMEOUT",
    "DEFAULT_ENDPOINT",
    "GcpKmsBackend",
    "TransportFactory",
    "crypto_key_id",
    "kms_transport",
]
