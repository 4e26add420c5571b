"""Who is calling: the identity in the client's TLS certificate (P2).

The identity is the certificate's first SAN URI, else its first SAN DNS name,
else its subject CN. The TLS handshake has already checked that the
certificate chains to the configured client CA; this only names the caller.
"""

from __future__ import annotations

import functools
from typing import Any

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID

from tuf_signer.policy import ANONYMOUS


@functools.lru_cache(maxsize=1024)
def identity_from_pem(pem: bytes) -> str:
    """The identity named by a PEM certificate; "" when it names none."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return ""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        for kind in (x509.UniformResourceIdentifier, x509.DNSName):
            values = san.get_values_for_type(kind)
            if values:
                return str(values[0])
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def identity_of(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The caller's identity: from its certificate, ``anonymous`` on plaintext."""
    auth = context.auth_context()
    pems = auth.get("x509_pem_cert")
    if pems:
        return identity_from_pem(next(iter(pems)))
    if b"ssl" in auth.get("transport_security_type", ()):
        return ""  # TLS without a client certificate: no identity
    return ANONYMOUS
