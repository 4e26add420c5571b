"""What each PKCS#11 failure means to the backend, and how it is shown.

The classes below sort python-pkcs11's exceptions by remedy: retry a racing
start-up, reopen or recover the session, look a key up again, or refuse
(a PIN the token rejects). ``KeyMissing`` is our own: a key lookup that found
nothing, which the session turns into a refresh of the module's object view
before it believes it (``_session``).
"""

from __future__ import annotations

from typing import Final

from pkcs11 import exceptions as p11

from tuf_signer.errors import BackendError

__all__ = [
    "PIN_ERRORS",
    "SESSION_ERRORS",
    "STALE_OBJECT_ERRORS",
    "STARTUP_TRANSIENT",
    "KeyMissing",
    "Transient",
    "describe",
    "parse_handle",
]

# Failures seen while processes race to open a token at startup (docs/design.md §4).
STARTUP_TRANSIENT: Final = (
    p11.NoSuchToken,
    p11.GeneralError,
    p11.TokenNotPresent,
    p11.TokenNotRecognised,
    p11.DeviceError,
    p11.DeviceMemory,
    p11.DeviceRemoved,
    p11.FunctionFailed,
    p11.SessionCount,
)

# Failures after which the session (or the whole device) must be reopened.
# SoftHSM answers GeneralError once its token directory has gone, and keeps
# answering it after the directory is back, until the module is re-initialised.
SESSION_ERRORS: Final = (
    p11.SessionClosed,
    p11.SessionHandleInvalid,
    p11.DeviceRemoved,
    p11.DeviceError,
    p11.DeviceMemory,
    p11.TokenNotPresent,
    p11.TokenNotRecognised,
    p11.UserNotLoggedIn,
    p11.GeneralError,
    p11.NoSuchToken,
)

# Failures that mean a cached object handle went stale; look the key up again.
STALE_OBJECT_ERRORS: Final = (p11.KeyHandleInvalid, p11.ObjectHandleInvalid)

PIN_ERRORS: Final = (
    p11.PinIncorrect,
    p11.PinInvalid,
    p11.PinLenRange,
    p11.PinExpired,
    p11.PinLocked,
)


class Transient(Exception):
    """A startup failure worth retrying; carries the PKCS#11 error as __cause__."""


class KeyMissing(BackendError):
    """No key object with this CKA_ID in the session's view of the token.

    A ``BackendError`` (the caller gets ``INTERNAL``) once the session has
    refreshed its view and looked again; until then a reason to refresh.

    Attributes:
        key_id: the CKA_ID looked up.
    """

    def __init__(self, reason: str, key_id: bytes) -> None:
        super().__init__(reason)
        self.key_id = key_id


def describe(e: BaseException | None) -> str:
    """Short text for an exception from python-pkcs11 (which never includes PINs)."""
    if e is None:
        return "unknown error"
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def parse_handle(handle: str) -> bytes:
    """CKA_ID bytes from a handle (lowercase or uppercase hex).

    Raises:
        BackendError: not 1 to 64 bytes of hex.
    """
    try:
        key_id = bytes.fromhex(handle)
    except ValueError:
        key_id = b""
    if not key_id or len(key_id) > 64:
        raise BackendError(f"malformed PKCS#11 key handle {handle[:80]!r}")
    return key_id
