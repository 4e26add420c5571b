"""How ``GcpKmsBackend`` reaches Cloud KMS: its gRPC transport and Google credentials."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from tuf_signer._net import check_plaintext_credentials
from tuf_signer.errors import ConfigError
from tuf_signer.keys.gcpkms._google import import_google

if TYPE_CHECKING:
    from tuf_signer.keys.gcpkms._google import KeyManagementServiceGrpcAsyncIOTransport

__all__ = ["DEFAULT_ENDPOINT", "TransportFactory", "kms_transport", "load_credentials"]

TransportFactory = Callable[[], Awaitable["KeyManagementServiceGrpcAsyncIOTransport"]]
"""An async callable returning a new transport; ``start`` calls it on the running loop."""

DEFAULT_ENDPOINT = "cloudkms.googleapis.com"
_SCOPES: Final = ("https://www.googleapis.com/auth/cloudkms",)


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
        google = import_google()
        transports = google.kms.services.key_management_service.transports
        if plaintext:
            assert endpoint is not None
            return transports.KeyManagementServiceGrpcAsyncIOTransport(  # type: ignore[no-any-return]
                host=endpoint, channel=google.grpc.aio.insecure_channel(endpoint)
            )
        credentials = await asyncio.to_thread(load_credentials, credentials_file)
        return transports.KeyManagementServiceGrpcAsyncIOTransport(  # type: ignore[no-any-return]
            host=endpoint or DEFAULT_ENDPOINT, credentials=credentials
        )

    return connect


def load_credentials(credentials_file: Path | str | None) -> Any:
    """Load a service-account key file, or find Application Default Credentials.

    Only ``"type": "service_account"`` files are accepted as ``credentials_file``
    (google-auth warns that loading any credential type from a file is risky);
    other kinds (workload identity federation...) go through ADC, i.e.
    ``GOOGLE_APPLICATION_CREDENTIALS``.

    Raises:
        ConfigError: google-auth is missing, no credentials are found, or the
            file cannot be used.
    """
    google = import_google()
    if credentials_file is None:
        try:
            credentials, _ = google.auth.default(scopes=list(_SCOPES))
        except google.auth_errors.GoogleAuthError as e:
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
        return google.service_account.Credentials.from_service_account_info(
            info, scopes=list(_SCOPES)
        )
    except (ValueError, google.auth_errors.GoogleAuthError) as e:
        # The message of a malformed key could quote it: name the type only.
        raise ConfigError(
            f"{where} is not a usable service-account key ({type(e).__name__})"
        ) from e
