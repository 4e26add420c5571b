"""securesystemslib ``Signer`` plugin: ``tufsigner://HOST:PORT/KEY?role=ROLE``.

python-tuf's ``Metadata.sign(signer)`` and RSTUF sign through securesystemslib's
``Signer`` interface. With this plugin registered, a repository moves an online
key into tuf-signer by changing the key's private-key URI::

    from securesystemslib.signer import Signer

    signer = Signer.from_priv_key_uri("tufsigner:///online", public_key)
    metadata.sign(signer)

Installing tuf-signer registers the scheme in every process (``_tuf_signer_hook``,
started by a ``.pth`` file), so a repository such as RSTUF needs no import of
``tuf_signer``; ``register()`` does the same explicitly. The server and TLS files
come from the URI and the client settings (``ClientSettings``: ``TUF_SIGNER_*``,
else ``$TUF_SIGNER_CLIENT_CONFIG``, else ``$ONLINE_KEY_DIR/tuf-signer-client.toml``),
read when the signer is built. A Sign that fails UNAVAILABLE, DEADLINE_EXCEEDED
or ABORTED is tried again within a budget (``RetryPolicy``).

Each Sign pins the expected keyid to ``public_key.keyid``, so a repository whose
idea of the key is stale (it missed a rotation) is refused instead of producing
metadata its clients would reject. Signers for the same server and TLS settings
share one ``Client`` and so one channel: one signer per bin costs a small object.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from urllib import parse

from securesystemslib.signer import (
    SIGNER_FOR_URI_SCHEME,
    Key,
    SecretsHandler,
    Signature,
    Signer,
    SSlibKey,
)

from tuf_signer.client._client import Client
from tuf_signer.client._models import SignedResult, sslib_key
from tuf_signer.client._retry import DEFAULT_RETRY, RetryPolicy
from tuf_signer.client._settings import ClientSettings
from tuf_signer.client._tls import TlsConfig, resolve_server
from tuf_signer.errors import KeyStateError, NotFoundError, RemoteError

SCHEME = "tufsigner"


@dataclass(frozen=True)
class SignerUri:
    """A parsed ``tufsigner://HOST:PORT/KEY?role=ROLE`` URI.

    An empty ``HOST:PORT`` (``tufsigner:///KEY``) means the ``server`` of the
    client settings (``ClientSettings``); there is no default server.

    Attributes:
        server: ``HOST:PORT``, or None for the default.
        key: key name on the server.
        role: role to sign for; needed for targets-type roles (bins), optional
            for timestamp and snapshot.
    """

    server: str | None
    key: str
    role: str | None = None

    @classmethod
    def parse(cls, uri: str) -> SignerUri:
        """Parse a private-key URI.

        Raises:
            ValueError: not a ``tufsigner`` URI, no key name, an empty role, or
                anything besides ``role`` in the query (securesystemslib's
                convention for a bad URI).
        """
        parts = parse.urlsplit(uri)
        if parts.scheme != SCHEME:
            raise ValueError(f"not a {SCHEME}:// URI: {uri!r}")
        key = parse.unquote(parts.path.removeprefix("/"))
        if not key or "/" in key:
            raise ValueError(f"{SCHEME} URI needs exactly one key name as its path: {uri!r}")
        if parts.fragment:
            raise ValueError(f"{SCHEME} URI takes no fragment: {uri!r}")
        try:
            query = parse.parse_qs(parts.query, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            raise ValueError(f"{SCHEME} URI: malformed query: {uri!r}") from None
        unknown = sorted(set(query) - {"role"})
        if unknown:
            raise ValueError(f"{SCHEME} URI: unknown query parameter(s) {unknown}: {uri!r}")
        roles = query.get("role", [])
        if len(roles) > 1 or (roles and not roles[0]):
            raise ValueError(f"{SCHEME} URI: role must be given once and not be empty: {uri!r}")
        return cls(server=parts.netloc or None, key=key, role=roles[0] if roles else None)

    def __str__(self) -> str:
        query = f"?{parse.urlencode({'role': self.role})}" if self.role else ""
        return f"{SCHEME}://{self.server or ''}/{parse.quote(self.key, safe='')}{query}"


class TufSignerSigner(Signer):
    """A securesystemslib ``Signer`` whose ``sign`` calls tuf-signer's Sign.

    Usually made by ``Signer.from_priv_key_uri`` once ``register()`` was
    called; construct it directly to pass your own ``Client``.

    Args:
        client: the client to call (its channel may be shared by many signers).
        key: key name on the server.
        public_key: the public key the repository lists for this role. Its
            keyid is sent as the expected keyid of every Sign.
        role: role name; needed for targets-type roles (bins).
        retry: how long ``sign`` retries UNAVAILABLE, DEADLINE_EXCEEDED and
            ABORTED (default ``RetryPolicy()``: 30 s); None tries once.
    """

    SCHEME = SCHEME

    def __init__(
        self,
        client: Client,
        key: str,
        public_key: SSlibKey,
        role: str | None = None,
        retry: RetryPolicy | None = DEFAULT_RETRY,
    ) -> None:
        self.client = client
        self.key = key
        self.role = role
        self.retry = retry
        self._public_key = public_key

    @property
    def public_key(self) -> SSlibKey:
        """The key this signer signs for, as listed in root or targets."""
        return self._public_key

    @classmethod
    def from_priv_key_uri(
        cls,
        priv_key_uri: str,
        public_key: Key,
        secrets_handler: SecretsHandler | None = None,
    ) -> TufSignerSigner:
        """A signer for ``tufsigner://HOST:PORT/KEY?role=ROLE``.

        The server (when the URI names none) and the TLS files come from the
        client settings, read now and kept (``ClientSettings.load``). Nothing
        is sent to the server until ``sign``.

        Args:
            priv_key_uri: the URI.
            public_key: the public key the repository lists for this role.
            secrets_handler: unused: the service holds no secret for callers.

        Raises:
            ValueError: a malformed URI, or a public key that is not an ``SSlibKey``.
            ConfigError: no server in the URI nor in the settings, plaintext
                to a host that is not loopback, or bad settings (a settings
                file missing, unreadable, not TOML, with unknown keys, or
                naming a TLS file that cannot be read); names where it looked.
        """
        uri = SignerUri.parse(priv_key_uri)
        if not isinstance(public_key, SSlibKey):
            raise ValueError(f"expected an SSlibKey for {priv_key_uri}, got {type(public_key)}")
        server, tls = ClientSettings.load().endpoint(uri.server, priv_key_uri)
        return cls(shared_client(server, tls), uri.key, public_key, uri.role)

    @classmethod
    def import_(
        cls,
        key: str,
        server: str | None = None,
        *,
        role: str | None = None,
        version: int | None = None,
        client: Client | None = None,
    ) -> tuple[str, SSlibKey]:
        """The URI and public key of a key held by the server, to store in the repository.

        Call it once per key and keep the result, as with securesystemslib's
        other ``import_`` helpers. List the public key in root (timestamp,
        snapshot) or in the delegating targets (bins); keep the URI with the
        repository's signer configuration.

        Args:
            key: key name on the server.
            server: ``HOST:PORT`` (default as for ``Client``); ignored with ``client``.
            role: role to put in the URI.
            version: key version; default the ACTIVE one. Naming a PENDING
                version gets the public key of a rotation before it is activated.
            client: the client to ask (default: the shared client for ``server``).

        Raises:
            RemoteNotFoundError: no such key on the server.
            NotFoundError: no such version.
            KeyStateError: no version given and the key has no ACTIVE version.
            RemoteError: the server refused or could not be reached.
            ConfigError: contradictory or unreadable TLS settings.
        """
        client = client or shared_client(server)
        (info,) = client.public_keys(key)
        if version is None:
            chosen = [v for v in info["versions"] if v["state"] == "ACTIVE"]
            if not chosen:
                raise KeyStateError(f"key {key!r} has no ACTIVE version")
        else:
            chosen = [v for v in info["versions"] if v["version"] == version]
            if not chosen:
                raise NotFoundError(f"key {key!r} has no version {version}")
        uri = SignerUri(server=client.server, key=key, role=role)
        return str(uri), sslib_key(chosen[0])

    def sign(self, payload: bytes) -> Signature:
        """Sign ``payload`` (canonical JSON of a TUF ``signed`` object) on the server.

        Raises:
            RemotePolicyError: FAILED_PRECONDITION, e.g. the server's ACTIVE key
                is not ``public_key`` any more, or a rollback or equivocation.
            RemoteUnavailableError: still UNAVAILABLE when the retry budget ran out.
            RemoteError: any other refusal, or the server could not be reached.
        """
        keyid = self._public_key.keyid

        def attempt(timeout: float, number: int) -> SignedResult:
            return self.client.sign(
                self.key,
                payload,
                role=self.role,
                expected_keyid=keyid,
                timeout=min(timeout, self.client.timeout),
                # A retry waits for a reconnecting channel rather than fail at once.
                wait_for_ready=number > 1 or None,
            )

        if self.retry is None:
            result = self.client.sign(self.key, payload, role=self.role, expected_keyid=keyid)
        else:
            result = self.retry.call(attempt)
        if result.keyid != self._public_key.keyid:
            # The server checked the pin; this would be a server bug, not a stale repository.
            raise RemoteError(
                f"server signed with keyid {result.keyid}, expected {self._public_key.keyid}",
                code="INTERNAL",
            )
        return result.signature()


def register() -> None:
    """Register ``TufSignerSigner`` for ``tufsigner:`` URIs in securesystemslib.

    securesystemslib 1.x finds signers only in ``SIGNER_FOR_URI_SCHEME`` (it has
    no entry-point discovery). An installed tuf-signer registers a stand-in in
    every process (``_tuf_signer_hook``), so this is needed only where that
    ``.pth`` hook does not run (``python -S``, a zipapp). Calling it again does
    nothing more.
    """
    SIGNER_FOR_URI_SCHEME[SCHEME] = TufSignerSigner


_SHARED: dict[tuple[str, TlsConfig], Client] = {}
_SHARED_LOCK = threading.Lock()


def shared_client(server: str | None = None, tls: TlsConfig | None = None) -> Client:
    """The process-wide ``Client`` for a server and TLS settings, created on first use.

    Signers made from URIs share these, so thousands of bin signers use one
    channel.

    Args:
        server: ``HOST:PORT``; default ``$TUF_SIGNER_SERVER``, else ``127.0.0.1:50051``.
        tls: TLS settings; default from ``$TUF_SIGNER_CA``/``CERT``/``KEY``.

    Raises:
        ConfigError: contradictory or unreadable TLS settings.
    """
    resolved = resolve_server(server)
    tls = tls if tls is not None else TlsConfig.from_env()
    with _SHARED_LOCK:
        client = _SHARED.get((resolved, tls))
        if client is None:
            client = _SHARED[(resolved, tls)] = Client(resolved, tls=tls)
        return client


def close_shared_clients() -> None:
    """Close every shared client (signers made from URIs stop working)."""
    with _SHARED_LOCK:
        clients = list(_SHARED.values())
        _SHARED.clear()
    for client in clients:
        client.close()
