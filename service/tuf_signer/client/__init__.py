"""Client side of tuf-signer: a typed gRPC client."""

from tuf_signer.client._client import (
    ALGORITHMS,
    DEFAULT_SERVER,
    SERVER_ENV,
    Client,
    SignedResult,
    resolve_server,
)

__all__ = ["ALGORITHMS", "DEFAULT_SERVER", "SERVER_ENV", "Client", "SignedResult", "resolve_server"]
