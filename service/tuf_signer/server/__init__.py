"""The gRPC server: servicers, error interceptor, group-committing audit writer."""

from tuf_signer.server._app import SignerServer, serve
from tuf_signer.server._service import SigningService
from tuf_signer.server._values import KeyView, SignResult, rfc3339, utc_now
from tuf_signer.server._wiring import start_backends
from tuf_signer.server._writer import AuditWriter

__all__ = [
    "AuditWriter",
    "KeyView",
    "SignResult",
    "SignerServer",
    "SigningService",
    "rfc3339",
    "serve",
    "start_backends",
    "utc_now",
]
