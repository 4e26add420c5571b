"""What SIGHUP can put in force without a restart, and what it cannot (issue 15, item 6).

The server's certificate, key and client CA are read again on SIGHUP and
used from the next TLS handshake on: gRPC asks ``ServerTls``'s fetcher before
every handshake (``grpc.dynamic_ssl_server_credentials``), so certificates are
rotated without a restart and connections already open keep theirs. The
access policy, limits, identity settings and revocation lists are reloaded
by the server itself (``SignerServer.reload``). Every other setting that
changed is named in the log as not applied: it needs a restart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Mapping
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tuf_signer.config import Config, TlsConfig
from tuf_signer.errors import ConfigError
from tuf_signer.server import _metrics

# Settings SIGHUP puts in force (by dotted prefix); ``path`` is the file itself.
RELOADED = ("path", "authz", "limits", "server.tls")


def _read(tls: TlsConfig) -> tuple[bytes, bytes, bytes]:
    """The certificate chain, key and client CA bundle, as bytes.

    Raises:
        ConfigError: a file cannot be read (naming the setting and the file).
    """
    out = []
    for name in ("cert", "key", "client_ca"):
        path = getattr(tls, name)
        try:
            out.append(path.read_bytes())
        except OSError as e:
            raise ConfigError(f"server.tls.{name}: cannot read {path}: {e.strerror}") from e
    _check_pair(out[0], out[1])
    return out[0], out[1], out[2]


def _check_pair(chain: bytes, key: bytes) -> None:
    """Check that ``key`` is the private key of the first certificate of ``chain``.

    gRPC refuses a mismatched pair only at the next handshake, and then keeps
    the pair in force: without this check a reload would report the new pair
    as in force while the old one is served.

    Raises:
        ConfigError: naming ``server.tls.cert`` or ``server.tls.key`` (never the key's bytes).
    """
    try:
        cert = x509.load_pem_x509_certificate(chain)
    except ValueError as e:
        raise ConfigError("server.tls.cert: not a PEM certificate") from e
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError("server.tls.key: not an unencrypted PEM private key") from e
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
        raise ConfigError("server.tls.key: does not match the certificate of server.tls.cert")


def _configuration(material: tuple[bytes, bytes, bytes]) -> Any:
    cert, key, ca = material
    return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)


class ServerTls:
    """The server's mutual-TLS material, replaceable while it runs.

    Raises:
        ConfigError: a file cannot be read.
    """

    def __init__(self, tls: TlsConfig) -> None:
        self._material = _read(tls)
        self._pending: Any = None
        self._lock = threading.Lock()  # the fetcher runs on gRPC's threads

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials that require a client certificate from ``client_ca``."""
        return grpc.dynamic_ssl_server_credentials(
            _configuration(self._material), self._fetch, require_client_authentication=True
        )

    def update(self, tls: TlsConfig) -> bool:
        """Use the files of ``tls`` from the next handshake on.

        Returns:
            Whether anything changed.

        Raises:
            ConfigError: a file cannot be read (the material in force stays).
        """
        material = _read(tls)
        if material == self._material:
            return False
        configuration = _configuration(material)
        with self._lock:
            self._material, self._pending = material, configuration
        return True

    def _fetch(self) -> Any:
        """gRPC's question before each handshake: new material, or None to keep it.

        gRPC asks once per accepted connection, before its handshake, whatever
        becomes of it (a client without a certificate, one from another CA, a
        plaintext client, a port scan): that is ``tuf_signer_tls_handshakes_started_total``.
        """
        with self._lock:
            pending, self._pending = self._pending, None
        # A metrics file that cannot be written (disk full, the multiprocess
        # directory gone) must not fail the handshake nor hold back a reload.
        with contextlib.suppress(Exception):
            _metrics.count_tls_handshake()
        return pending


def restart_needed(old: Config, new: Config) -> list[str]:
    """The settings (dotted names) that differ between ``old`` and ``new`` and that
    SIGHUP does not put in force. Names only: a value may be a secret's source."""
    changed: list[str] = []
    _diff(old, new, "", changed)
    return [name for name in changed if not name.startswith(RELOADED)]


def _diff(old: Any, new: Any, where: str, out: list[str]) -> None:
    if old == new:
        return
    if (
        dataclasses.is_dataclass(old)
        and dataclasses.is_dataclass(new)
        and type(old) is type(new)
        and not isinstance(old, type)
    ):
        for f in dataclasses.fields(old):
            _diff(getattr(old, f.name), getattr(new, f.name), f"{where}{f.name}.", out)
        return
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in sorted(set(old) | set(new), key=str):
            _diff(old.get(key), new.get(key), f"{where}{key}.", out)
        return
    out.append(where.rstrip("."))
