"""Loaded PKCS#11 modules: loading once, re-initialising (paced), logging in.

Runs on the PKCS#11 thread only (``_thread``).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import pkcs11
from pkcs11 import exceptions as p11

from tuf_signer.errors import BackendError
from tuf_signer.keys.pkcs11._errors import describe
from tuf_signer.keys.pkcs11._recovery import Reinits
from tuf_signer.keys.pkcs11._thread import require_pkcs11_thread

if TYPE_CHECKING:
    from pkcs11._pkcs11 import lib as Pkcs11Lib

__all__ = ["REINITS", "load_library", "login", "reinitialize", "rescan"]

log = logging.getLogger(__name__)

# Loaded modules by real path: python-pkcs11 caches per path *string*, and a
# second string for the same file (Debian's /usr/lib/softhsm/libsofthsm2.so is
# a symlink) fails with CKR_CRYPTOKI_ALREADY_INITIALIZED. Finalised and
# initialised again only by ``reinitialize`` (recovery), never unloaded.
_LIBS: dict[str, Pkcs11Lib] = {}

# Re-initialisations by module real path, for recovery: at most one a second each.
REINITS = Reinits()


def login(token: pkcs11.Token, pin: str) -> pkcs11.Session:
    """Open a read/write session and log in (C_Login) with ``pin``; tests count these."""
    return token.open(rw=True, user_pin=pin)


def load_library(module: str) -> tuple[str, Pkcs11Lib]:
    """Load (once) and initialise the PKCS#11 module; return (real path, lib)."""
    require_pkcs11_thread()
    try:
        real = os.path.realpath(module, strict=True)
    except OSError as e:
        raise BackendError(f"PKCS#11 module {module} not found") from e
    try:
        lib = _LIBS.get(real)
        if lib is None:
            lib = pkcs11.lib(module)
            _LIBS[real] = lib
        elif not lib.initialized:  # a failed re-initialisation left it down
            lib.initialize()
    except p11.PKCS11Error as e:
        raise BackendError(f"cannot load PKCS#11 module {module}: {describe(e)}") from e
    return real, lib


def rescan(lib_key: str, lib: Pkcs11Lib, *, busy: bool) -> None:
    """Re-run C_Initialize so the module rescans its slots, unless ``busy`` (sessions open).

    SoftHSM builds its slot list at C_Initialize: a token created later (or by
    a racing process) stays invisible until the library is re-initialised,
    which closes every session of this process on that module.
    """
    if busy:
        log.warning(
            "PKCS#11 module %s has open sessions; not re-initialising it to rescan tokens",
            lib_key,
        )
        return
    try:
        lib.reinitialize()
    except p11.PKCS11Error as e:
        log.warning("re-initialising PKCS#11 module %s failed: %s", lib_key, describe(e))


def reinitialize(lib_key: str, lib: Pkcs11Lib) -> None:
    """C_Finalize then C_Initialize: the module forgets every session and rereads its tokens.

    Every session of this process on the module is gone afterwards.

    Raises:
        p11.PKCS11Error: C_Initialize failed (the module stays finalised; the
            next recovery initialises it).
    """
    if lib.initialized:
        try:
            lib.finalize()
        except p11.PKCS11Error as e:  # it is finalised all the same
            log.debug("finalising PKCS#11 module %s: %s", lib_key, describe(e))
    lib.initialize()
