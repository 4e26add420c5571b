"""The PKCS#11 key backend on python-pkcs11 (SoftHSM locally, any PKCS#11 HSM in production).

- ``_thread``: the one OS thread that owns PKCS#11 in this process;
- ``_session``: loaded modules, the shared logged-in session per token, key lookup;
- ``_algorithms``: key types, templates and mechanisms of each algorithm;
- ``_backend``: ``Pkcs11Backend``, the ``KeyBackend`` built on them.
"""

from __future__ import annotations

from tuf_signer.keys.pkcs11._backend import Pkcs11Backend

__all__ = ["Pkcs11Backend"]
