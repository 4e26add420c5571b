"""What each PKCS#11 failure means to the backend, and how it is shown.

The classes below sort python-pkcs11's exceptions by remedy: retry a racing
start-up, reopen or recover the session, look a key up again, or refuse
(a PIN the token rejects). ``KeyMissing`` is our own: a key lookup that found
nothing, which the session turns into a refresh of the module's object view
before it believes it (``_session``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from pkcs11 import exceptions as p11

from tuf_signer.errors import BackendError, BackendUnavailableError, TufSignerError

__all__ = [
    "BUSY_ERRORS",
    "PIN_ERRORS",
    "SESSION_ERRORS",
    "STALE_OBJECT_ERRORS",
    "STARTUP_TRANSIENT",
    "KeyMissing",
    "RefreshLater",
    "Transient",
    "describe",
    "parse_handle",
    "read_pin",
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
    p11.SlotIDInvalid,
)

# Device or resource faults the session cannot remedy (out of sessions or
# memory, a function the device failed): UNAVAILABLE, the session is kept.
BUSY_ERRORS: Final = (p11.FunctionFailed, p11.SessionCount, p11.HostMemory)

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


class RefreshLater(BackendUnavailableError):
    """A key is not in the session's view, and the module was re-initialised too
    recently to refresh the view now: the caller waits ``delay`` seconds (off
    the PKCS#11 thread) and asks once more, with ``refresh_wait`` off.
    """

    def __init__(self, reason: str, delay: float) -> None:
        super().__init__(reason)
        self.delay = delay


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


def read_pin(provider: Callable[[], str], label: str) -> str:
    """The PIN from ``provider``; a failure shows only our own errors' reasons.

    Another error's text may hold PIN bytes (a ``UnicodeDecodeError`` quotes
    the byte it choked on), so only its type is kept, and it is not chained
    (neither as cause nor as context).

    Raises:
        BackendError: the provider failed or returned no text.
    """
    try:
        pin = provider()
    except TufSignerError as e:  # ConfigError: names the setting and the file
        failure = f"{type(e).__name__}: {e.reason}"
    except Exception as e:
        failure = type(e).__name__
    else:
        if isinstance(pin, str):
            return pin
        failure = "no text"
    # Raised here, not in the handler: the provider's error is not even its context.
    raise BackendError(f"PIN provider for token {label!r} failed ({failure})")
