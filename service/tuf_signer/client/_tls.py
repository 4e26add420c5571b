"""How a client reaches the server: TLS settings from arguments or the environment.

The server requires mutual TLS except on a plaintext loopback listener. A client
therefore either names a CA (and, for mutual TLS, its own certificate and key)
or talks plaintext. Plaintext goes only to a loopback address unless the caller
says ``insecure`` explicitly (``insecure=True`` or ``TUF_SIGNER_INSECURE=1``), so
a forgotten CA setting never sends payloads and identities in the clear.
Certificates are read once, when a channel is opened.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from tuf_signer._net import is_loopback_endpoint
from tuf_signer.errors import ConfigError, RequestError

SERVER_ENV = "TUF_SIGNER_SERVER"
CA_ENV = "TUF_SIGNER_CA"
CERT_ENV = "TUF_SIGNER_CERT"
KEY_ENV = "TUF_SIGNER_KEY"
INSECURE_ENV = "TUF_SIGNER_INSECURE"
DEFAULT_SERVER = "127.0.0.1:50051"

# A 16,384-bin snapshot is MB-sized (PEP 458); gRPC's default limit is 4 MiB.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


def resolve_server(server: str | None) -> str:
    """``server``, else ``$TUF_SIGNER_SERVER``, else ``127.0.0.1:50051``."""
    return server or os.environ.get(SERVER_ENV) or DEFAULT_SERVER


@dataclass(frozen=True)
class TlsConfig:
    """Transport security of a client: plaintext, TLS, or mutual TLS.

    Without ``ca`` the channel is plaintext, which the server accepts only on
    a loopback address, and which this client uses only towards a loopback
    address unless ``insecure`` says otherwise. With ``ca`` the server's
    certificate must chain to it; ``cert`` and ``key`` (both or neither) add
    the client's identity for mutual TLS.

    Attributes:
        ca: PEM file with the CA certificate(s) that issued the server's certificate.
        cert: PEM file with the client certificate (chain).
        key: PEM file with the client certificate's private key.
        insecure: allow plaintext to a host that is not loopback (e.g. a
            server behind a local TLS-terminating proxy); never needed for
            loopback, and contradicts ``ca``.

    Raises:
        ConfigError: ``cert`` without ``key`` or the reverse, a client
            certificate without a CA, or ``insecure`` together with a CA.
    """

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    insecure: bool = False

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            given, missing = ("cert", "key") if self.key is None else ("key", "cert")
            raise ConfigError(
                f"TLS {given} is set but {missing} is not "
                f"(arguments or ${CERT_ENV} / ${KEY_ENV}): give both or neither"
            )
        if self.cert is not None and self.ca is None:
            raise ConfigError(
                f"a client certificate needs a CA to verify the server (ca or ${CA_ENV}); "
                "without a CA the channel would be plaintext"
            )
        if self.insecure and self.ca is not None:
            raise ConfigError(
                f"insecure (${INSECURE_ENV}) asks for plaintext but a CA is set "
                f"(ca or ${CA_ENV}): remove one of them"
            )

    @classmethod
    def from_env(
        cls,
        ca: str | os.PathLike[str] | None = None,
        cert: str | os.PathLike[str] | None = None,
        key: str | os.PathLike[str] | None = None,
        *,
        insecure: bool | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> TlsConfig:
        """Each setting from its argument, else from its environment variable.

        The variables are ``TUF_SIGNER_CA``, ``TUF_SIGNER_CERT``,
        ``TUF_SIGNER_KEY`` and ``TUF_SIGNER_INSECURE`` (``1``/``true``/``yes``
        or ``0``/``false``/``no``); an empty variable counts as unset.

        Args:
            ca: CA file, overriding ``$TUF_SIGNER_CA``.
            cert: client certificate file, overriding ``$TUF_SIGNER_CERT``.
            key: client key file, overriding ``$TUF_SIGNER_KEY``.
            insecure: allow plaintext to a non-loopback host, overriding
                ``$TUF_SIGNER_INSECURE``.
            environ: the environment to read (default ``os.environ``).

        Raises:
            ConfigError: the resulting combination is not allowed (see the
                class), or ``$TUF_SIGNER_INSECURE`` is not a yes or no.
        """
        env = os.environ if environ is None else environ

        def pick(value: str | os.PathLike[str] | None, name: str) -> Path | None:
            chosen = value if value is not None and str(value) else env.get(name)
            return Path(chosen) if chosen else None

        if insecure is None:
            insecure = _flag(env.get(INSECURE_ENV, ""), INSECURE_ENV)
        return cls(
            ca=pick(ca, CA_ENV),
            cert=pick(cert, CERT_ENV),
            key=pick(key, KEY_ENV),
            insecure=insecure,
        )

    @property
    def secure(self) -> bool:
        """True when the channel uses TLS."""
        return self.ca is not None

    def check_server(self, server: str) -> None:
        """Refuse plaintext to ``server`` unless it is loopback or ``insecure`` is set.

        Raises:
            ConfigError: no CA, ``server`` is not a loopback address, and
                plaintext was not asked for explicitly; names the settings.
        """
        if self.secure or self.insecure or _is_loopback_target(server):
            return
        raise ConfigError(
            f"no CA is set (ca or ${CA_ENV}), so the channel to {server!r} would be "
            f"plaintext, and {server!r} is not a loopback address: set a CA for TLS, "
            f"or allow plaintext explicitly with insecure=True / {INSECURE_ENV}=1"
        )

    def credentials(self) -> grpc.ChannelCredentials | None:
        """gRPC channel credentials, or None for plaintext.

        Raises:
            ConfigError: a file cannot be read or holds no PEM data.
        """
        if self.ca is None:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=_read_pem(self.ca, "ca", CA_ENV),
            private_key=_read_pem(self.key, "key", KEY_ENV) if self.key else None,
            certificate_chain=_read_pem(self.cert, "cert", CERT_ENV) if self.cert else None,
        )


def tls_config(
    tls: TlsConfig | None,
    ca: str | os.PathLike[str] | None,
    cert: str | os.PathLike[str] | None,
    key: str | os.PathLike[str] | None,
    insecure: bool | None = None,
) -> TlsConfig:
    """``tls`` as given, else built from the arguments and the environment.

    Raises:
        RequestError: ``tls`` together with ``ca``, ``cert``, ``key`` or ``insecure``.
        ConfigError: contradictory TLS settings.
    """
    if tls is None:
        return TlsConfig.from_env(ca, cert, key, insecure=insecure)
    if ca is not None or cert is not None or key is not None or insecure is not None:
        raise RequestError("give either tls= or ca=/cert=/key=/insecure=, not both")
    return tls


_YES = ("1", "true", "yes", "on")
_NO = ("", "0", "false", "no", "off")


def _flag(value: str, env: str) -> bool:
    word = value.strip().lower()
    if word in _YES:
        return True
    if word in _NO:
        return False
    raise ConfigError(f"${env}: expected 1 or 0 (true/false, yes/no), got {value[:40]!r}")


def _is_loopback_target(server: str) -> bool:
    """True when a gRPC target names this machine only (loopback or a Unix socket)."""
    if server.startswith(("unix:", "unix-abstract:")):
        return True
    host = server
    for scheme in ("dns:///", "ipv4:", "ipv6:"):
        if host.startswith(scheme):
            host = host[len(scheme) :]
    if "," in host:  # ipv4:a:1,b:2 lists several addresses: each must be loopback
        return all(_is_loopback_target(part) for part in host.split(","))
    return is_loopback_endpoint(host)


def _read_pem(path: Path, setting: str, env: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"TLS {setting} ({env}): cannot read {path}: {e.strerror}") from e
    if b"-----BEGIN " not in data:
        raise ConfigError(f"TLS {setting} ({env}): {path} holds no PEM data")
    return data


def open_channel(server: str, tls: TlsConfig) -> grpc.Channel:
    """A synchronous channel to ``server``.

    Raises:
        ConfigError: a TLS file cannot be read, or the channel would be
            plaintext to a host that is not loopback (see ``check_server``).
    """
    tls.check_server(server)
    credentials = tls.credentials()
    if credentials is None:
        return grpc.insecure_channel(server, options=_CHANNEL_OPTIONS)
    return grpc.secure_channel(server, credentials, options=_CHANNEL_OPTIONS)


def open_aio_channel(server: str, tls: TlsConfig, own_connection: bool = False) -> grpc.aio.Channel:
    """An asyncio channel to ``server``, bound to the running event loop.

    With ``own_connection`` the channel does not share gRPC's process-wide
    connection pool, so it opens a TCP connection of its own (the kernel
    spreads connections over a server's workers).

    Raises:
        ConfigError: a TLS file cannot be read, or the channel would be
            plaintext to a host that is not loopback (see ``check_server``).
    """
    tls.check_server(server)
    options = [*_CHANNEL_OPTIONS]
    if own_connection:
        options.append(("grpc.use_local_subchannel_pool", 1))
    credentials = tls.credentials()
    if credentials is None:
        return grpc.aio.insecure_channel(server, options=options)
    return grpc.aio.secure_channel(server, credentials, options=options)
