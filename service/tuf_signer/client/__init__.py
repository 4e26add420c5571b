"""Client side of tuf-signer: sync and asyncio clients, and a securesystemslib Signer.

- ``Client`` / ``AsyncClient``: every RPC, typed, one reused channel each;
  refusals raise ``RemoteError`` subclasses that also belong to the project's
  exception tree (``RemotePolicyError`` is a ``PolicyError``, and so on).
- ``sign_many``: many Signs in flight at once, for bulk re-signing of bins.
- ``TlsConfig``: TLS settings from arguments or ``$TUF_SIGNER_CA``,
  ``$TUF_SIGNER_CERT``, ``$TUF_SIGNER_KEY``; plaintext only to loopback unless
  ``insecure`` (``$TUF_SIGNER_INSECURE``).
- ``TufSignerSigner`` and ``register()``: the ``tufsigner://HOST:PORT/KEY?role=ROLE``
  private-key URI for python-tuf and RSTUF, registered in every process by the
  installed ``.pth`` hook; ``ClientSettings`` (where a signer finds its server and
  TLS files) and ``RetryPolicy`` (how long its Sign retries).
"""

from tuf_signer.client._aio import DEFAULT_CONNECTIONS, DEFAULT_MAX_IN_FLIGHT, AsyncClient
from tuf_signer.client._client import Client
from tuf_signer.client._errors import (
    RemoteAlreadyExistsError,
    RemoteNotFoundError,
    RemotePermissionError,
    RemotePolicyError,
    RemoteRequestError,
    RemoteResourceExhaustedError,
    RemoteUnauthenticatedError,
    RemoteUnavailableError,
)
from tuf_signer.client._models import (
    ALGORITHMS,
    AuditPage,
    AuditRecordInfo,
    BinsInfo,
    CheckpointInfo,
    ConsistencyInfo,
    KeyInfo,
    KeyVersionInfo,
    RecordLeafInfo,
    RoleRuleInfo,
    RoleStateInfo,
    SignedResult,
    SignOutcome,
    SignRequest,
    sslib_key,
)
from tuf_signer.client._retry import DEFAULT_RETRY, RETRYABLE, RetryPolicy
from tuf_signer.client._settings import (
    CONFIG_ENV,
    ONLINE_KEY_DIR_ENV,
    SETTINGS_FILE_NAME,
    ClientSettings,
)
from tuf_signer.client._signer import (
    SCHEME,
    SignerUri,
    TufSignerSigner,
    close_shared_clients,
    register,
    shared_client,
)
from tuf_signer.client._tls import (
    CA_ENV,
    CERT_ENV,
    DEFAULT_SERVER,
    INSECURE_ENV,
    KEY_ENV,
    SERVER_ENV,
    TlsConfig,
    resolve_server,
)
from tuf_signer.errors import RemoteError

__all__ = [
    "ALGORITHMS",
    "CA_ENV",
    "CERT_ENV",
    "CONFIG_ENV",
    "DEFAULT_CONNECTIONS",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_RETRY",
    "DEFAULT_SERVER",
    "INSECURE_ENV",
    "KEY_ENV",
    "ONLINE_KEY_DIR_ENV",
    "RETRYABLE",
    "SCHEME",
    "SERVER_ENV",
    "SETTINGS_FILE_NAME",
    "AsyncClient",
    "AuditPage",
    "AuditRecordInfo",
    "BinsInfo",
    "CheckpointInfo",
    "Client",
    "ClientSettings",
    "ConsistencyInfo",
    "KeyInfo",
    "KeyVersionInfo",
    "RecordLeafInfo",
    "RemoteAlreadyExistsError",
    "RemoteError",
    "RemoteNotFoundError",
    "RemotePermissionError",
    "RemotePolicyError",
    "RemoteRequestError",
    "RemoteResourceExhaustedError",
    "RemoteUnauthenticatedError",
    "RemoteUnavailableError",
    "RetryPolicy",
    "RoleRuleInfo",
    "RoleStateInfo",
    "SignOutcome",
    "SignRequest",
    "SignedResult",
    "SignerUri",
    "TlsConfig",
    "TufSignerSigner",
    "close_shared_clients",
    "register",
    "resolve_server",
    "shared_client",
    "sslib_key",
]
