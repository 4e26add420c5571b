"""The Google client libraries of the gcpkms backend, imported here and only here, lazily.

google-cloud-kms (with google-crc32c, google-api-core and google-auth) is the
optional ``gcp`` extra: importing ``tuf_signer.keys`` does not need it;
``GcpKmsBackend.start`` and ``kms_transport``'s factory call ``import_google``,
which says how to install it when it is missing. The names used only in
annotations are imported here too, under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

from tuf_signer.errors import ConfigError

if TYPE_CHECKING:  # re-exported ("as" the same name) for the other modules' annotations
    from google.cloud.kms_v1 import (
        KeyManagementServiceAsyncClient as KeyManagementServiceAsyncClient,
    )
    from google.cloud.kms_v1.services.key_management_service.transports import (
        KeyManagementServiceGrpcAsyncIOTransport as KeyManagementServiceGrpcAsyncIOTransport,
    )
    from google.cloud.kms_v1.types.resources import CryptoKey as CryptoKey
    from google.cloud.kms_v1.types.resources import CryptoKeyVersion as CryptoKeyVersion
    from google.cloud.kms_v1.types.resources import PublicKey as PublicKey

__all__ = ["GoogleApis", "import_google"]

# In import order: google-crc32c first, to fail at start rather than at the
# first Sign; then the KMS client itself before its submodules (a submodule
# already in sys.modules would be found even when its package is not).
_MODULES = (
    "google_crc32c",
    "google.cloud.kms_v1",
    "google.cloud.kms_v1.types.resources",
    "google.cloud.kms_v1.types.service",
    "google.api_core.exceptions",
    "google.auth",
    "google.auth.exceptions",
    "google.oauth2.service_account",
    "google.protobuf.field_mask_pb2",
    "grpc",
)


@dataclass(frozen=True)
class GoogleApis:
    """The imported modules, by the short names the backend uses."""

    crc32c_module: ModuleType  # google_crc32c
    kms: ModuleType  # google.cloud.kms_v1
    resources: ModuleType  # google.cloud.kms_v1.types.resources
    service: ModuleType  # google.cloud.kms_v1.types.service
    api_errors: ModuleType  # google.api_core.exceptions
    auth: ModuleType  # google.auth
    auth_errors: ModuleType  # google.auth.exceptions
    service_account: ModuleType  # google.oauth2.service_account
    field_mask: ModuleType  # google.protobuf.field_mask_pb2
    grpc: ModuleType  # grpc, for the plaintext channel to a loopback (fake) KMS

    def crc32c(self, data: bytes) -> int:
        """CRC32C of ``data``, as KMS computes its integrity fields."""
        return int(self.crc32c_module.value(data))


def import_google() -> GoogleApis:
    """Import the Google libraries, or say how to install them.

    Not cached: once imported, each is a lookup in ``sys.modules``.

    Raises:
        ConfigError: the ``gcp`` extra is not installed.
    """
    try:
        modules = [importlib.import_module(name) for name in _MODULES]
    except ImportError as e:
        raise ConfigError(
            "the gcpkms backend needs google-cloud-kms and google-crc32c: "
            "pip install 'tuf-signer[gcp]'"
        ) from e
    return GoogleApis(*modules)
