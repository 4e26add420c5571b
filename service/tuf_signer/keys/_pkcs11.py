"""PKCS#11 key backend on python-pkcs11 (SoftHSM locally, any PKCS#11 HSM in production).

Threading. python-pkcs11 0.10.1 calls ``C_Initialize(NULL)``, which tells the
module that the application will not call it from several threads at once
(PKCS#11 v2.40 §5.4, CKF_OS_LOCKING_OK unset). SoftHSM then switches its
internal locking off, and two threads in PKCS#11 at once crash the process,
even on separate sessions. So every PKCS#11 call in this process (every
``Pkcs11Backend``, every token, the library load itself) runs on one
dedicated thread, ``_PKCS11_THREAD``; coroutines hand work to it with
``run_in_executor``. Module state (loaded libraries, open token sessions, key
caches) is touched only on that thread, so it needs no locks.

Sessions. Login state belongs to the application, not to a session (PKCS#11
v2.40 §5.6, C_Login/C_Logout): a second C_Login on a token fails with
CKR_USER_ALREADY_LOGGED_IN, and one C_Logout logs every session out. So all
backends on the same token in this process share one logged-in read/write
session (``_TokenConn``), reference-counted. A backend joining an open session
must present the same PIN (compared against a keyed digest held in memory).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import random
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import pkcs11
from pkcs11 import MGF, Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.util.ec import encode_named_curve_parameters
from securesystemslib.signer import SSlibKey

from tuf_signer._handoff import name_os_thread, resolve_threadsafe
from tuf_signer.errors import BackendError, BackendUnavailableError, ConfigError
from tuf_signer.keys import _pubkey
from tuf_signer.keys._backend import KeyBackend, NewKey
from tuf_signer.model import Algorithm

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
    from pkcs11._pkcs11 import lib as Pkcs11Lib

__all__ = ["Pkcs11Backend"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

_KEY_ID_BYTES = 16  # CKA_ID of keys we create; the handle is its hex
_ED25519_OID = "1.3.101.112"  # RFC 8410
_P256_CURVE = "secp256r1"
_RSA_EXPONENT = b"\x01\x00\x01"  # 65537
_ED25519_PARAMS: Final = encode_named_curve_parameters(_ED25519_OID)
_P256_PARAMS: Final = encode_named_curve_parameters(_P256_CURVE)
# PKCS#11 v3.0 lets CKA_EC_PARAMS name an Edwards curve by OID or by
# PrintableString. SoftHSM 2.6 keeps the public key's as given (the OID) but
# reports the private key's as PrintableString "edwards25519".
_ED25519_PARAMS_ACCEPTED: Final = frozenset({_ED25519_PARAMS, b"\x13\x0cedwards25519"})
_RSA_SIGNATURE_BYTES = _pubkey.RSA_BITS // 8
_ED25519_SIGNATURE_BYTES = 64
_PSS_PARAMS = (Mechanism.SHA256, MGF.SHA256, 32)  # securesystemslib rsassa-pss-sha256

_BACKOFF_FIRST = 0.05  # seconds
_BACKOFF_MAX = 1.0  # seconds

# Attributes a freshly generated private key must have (P1). PKCS#11 v2.40
# §4.9: ALWAYS_SENSITIVE and NEVER_EXTRACTABLE prove the key was never outside
# the token in clear.
_REQUIRED_PRIVATE_ATTRIBUTES: Final[Mapping[Attribute, bool]] = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.ALWAYS_SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.NEVER_EXTRACTABLE: True,
    Attribute.SIGN: True,
    Attribute.DECRYPT: False,
    Attribute.UNWRAP: False,
}

# Failures seen while processes race to open a token at startup (DESIGN §4).
_STARTUP_TRANSIENT: Final = (
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
_SESSION_ERRORS: Final = (
    p11.SessionClosed,
    p11.SessionHandleInvalid,
    p11.DeviceRemoved,
    p11.DeviceError,
    p11.DeviceMemory,
    p11.TokenNotPresent,
    p11.TokenNotRecognised,
    p11.UserNotLoggedIn,
    p11.GeneralError,
)

# Failures that mean a cached object handle went stale; look the key up again.
_STALE_OBJECT_ERRORS: Final = (p11.KeyHandleInvalid, p11.ObjectHandleInvalid)

_PIN_ERRORS: Final = (
    p11.PinIncorrect,
    p11.PinInvalid,
    p11.PinLenRange,
    p11.PinExpired,
    p11.PinLocked,
)


# --- the PKCS#11 thread ----------------------------------------------------------

_PKCS11_THREAD: ThreadPoolExecutor | None = None
_PKCS11_THREAD_ID: int | None = None
_THREAD_CREATION = threading.Lock()


def _mark_pkcs11_thread() -> None:
    global _PKCS11_THREAD_ID
    _PKCS11_THREAD_ID = threading.get_ident()
    name_os_thread("tuf-pkcs11")


def _pkcs11_thread() -> ThreadPoolExecutor:
    """Return the process-wide single PKCS#11 worker, creating it on first use."""
    global _PKCS11_THREAD
    with _THREAD_CREATION:
        if _PKCS11_THREAD is None:
            _PKCS11_THREAD = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="pkcs11", initializer=_mark_pkcs11_thread
            )
        return _PKCS11_THREAD


def _after_fork_in_child() -> None:
    # The worker thread does not survive fork(); without this, every call in
    # the child would wait forever for it.
    global _PKCS11_THREAD, _PKCS11_THREAD_ID, _THREAD_CREATION
    _PKCS11_THREAD, _PKCS11_THREAD_ID = None, None
    _THREAD_CREATION = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _on_pkcs11_thread() -> None:
    """Refuse to touch PKCS#11 state from any other thread (it would crash SoftHSM)."""
    if _PKCS11_THREAD_ID is None or threading.get_ident() != _PKCS11_THREAD_ID:
        raise BackendError("internal error: PKCS#11 used outside the PKCS#11 thread")


async def _run(fn: Callable[[], _T]) -> _T:
    """Run ``fn`` on the PKCS#11 thread and await its result.

    Cancelling the awaiting task does not stop ``fn`` once it has started.
    """
    return await asyncio.get_running_loop().run_in_executor(_pkcs11_thread(), _confined, fn)


def _confined(fn: Callable[[], _T]) -> _T:
    """Call ``fn``; on error, free what its frames hold before the error leaves the thread.

    An exception's traceback keeps its frames' locals alive. Some python-pkcs11
    objects make PKCS#11 calls when freed (an unfinished search calls
    C_FindObjectsFinal in ``__del__``), so they must die here, not on the
    event loop's thread when the error is dropped there.
    """
    try:
        return fn()
    except BaseException as e:
        _drop_frames(e)
        raise


# --- process-wide PKCS#11 state (PKCS#11 thread only) -----------------------------

# Loaded modules by real path: python-pkcs11 caches per path *string*, and a
# second string for the same file (Debian's /usr/lib/softhsm/libsofthsm2.so is
# a symlink) fails with CKR_CRYPTOKI_ALREADY_INITIALIZED. Never finalised:
# other backends may still use them.
_LIBS: dict[str, Pkcs11Lib] = {}

# Open token sessions by (module real path, token label).
_CONNS: dict[tuple[str, str], _TokenConn] = {}


def _load_library(module: str) -> tuple[str, Pkcs11Lib]:
    """Load (once) and initialise the PKCS#11 module; return (real path, lib)."""
    _on_pkcs11_thread()
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
        raise BackendError(f"cannot load PKCS#11 module {module}: {_describe(e)}") from e
    return real, lib


def _maybe_reinitialize(lib_key: str, lib: Pkcs11Lib) -> None:
    """Re-run C_Initialize so the module rescans its slots, if nothing of ours is open.

    SoftHSM builds its slot list at C_Initialize: a token created later (or by
    a racing process) stays invisible until the library is re-initialised,
    which closes every session of this process on that module.
    """
    if any(key[0] == lib_key for key in _CONNS):
        log.warning(
            "PKCS#11 module %s has open sessions; not re-initialising it to rescan tokens",
            lib_key,
        )
        return
    try:
        lib.reinitialize()
    except p11.PKCS11Error as e:
        log.warning("re-initialising PKCS#11 module %s failed: %s", lib_key, _describe(e))


def _describe(e: BaseException | None) -> str:
    """Short text for an exception from python-pkcs11 (which never includes PINs)."""
    if e is None:
        return "unknown error"
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _find_one(session: pkcs11.Session, attrs: dict[Attribute, Any]) -> pkcs11.Object | None:
    """Return the only object matching ``attrs``, or None.

    The search is always run to its end here: python-pkcs11 ends an abandoned
    search (C_FindObjectsFinal) from whichever thread drops it, which could be
    the event loop's.
    """
    found = list(session.get_objects(attrs))
    if len(found) > 1:
        raise BackendError(f"{len(found)} objects match one key handle; the token is inconsistent")
    return found[0] if found else None


def _check_private_key_attributes(attrs: Mapping[Attribute, Any]) -> None:
    """Check a new private key against ``_REQUIRED_PRIVATE_ATTRIBUTES`` (P1).

    Raises:
        BackendError: naming every attribute the token did not honour.
    """
    wrong = [
        f"CKA_{attr.name}={want}"
        for attr, want in _REQUIRED_PRIVATE_ATTRIBUTES.items()
        if attr not in attrs or bool(attrs[attr]) is not want
    ]
    if wrong:
        raise BackendError("the token did not honour " + ", ".join(wrong))


@dataclass(frozen=True)
class _PublicParts:
    """Public-key attributes read on the PKCS#11 thread, converted elsewhere."""

    ec_point: bytes = b""
    modulus: bytes = b""
    public_exponent: bytes = b""

    def to_crypto(self, algorithm: Algorithm) -> PublicKeyTypes:
        if algorithm is Algorithm.ED25519:
            return _pubkey.ed25519_public_key(self.ec_point)
        if algorithm is Algorithm.ECDSA_P256:
            return _pubkey.ecdsa_p256_public_key(self.ec_point)
        return _pubkey.rsa_public_key(self.modulus, self.public_exponent)


@dataclass(frozen=True)
class _CachedKey:
    key: pkcs11.types.SignMixin
    algorithm: Algorithm | None  # None: not a key of any algorithm we support


def _algorithm_of(key: pkcs11.Object) -> Algorithm | None:
    """Which supported algorithm a key is for, from its type and domain parameters."""
    key_type = key[Attribute.KEY_TYPE]
    if key_type == KeyType.EC_EDWARDS:
        params = key[Attribute.EC_PARAMS]
        return Algorithm.ED25519 if params in _ED25519_PARAMS_ACCEPTED else None
    if key_type == KeyType.EC:
        params = key[Attribute.EC_PARAMS]
        return Algorithm.ECDSA_P256 if params == _P256_PARAMS else None
    if key_type == KeyType.RSA:
        modulus: bytes = key[Attribute.MODULUS]
        bits = int.from_bytes(modulus, "big").bit_length()
        return Algorithm.RSA_3072_PSS if bits == _pubkey.RSA_BITS else None
    return None


class _TokenConn:
    """The one logged-in read/write session on one token, shared and refcounted.

    Touched only on the PKCS#11 thread.
    """

    def __init__(self, key: tuple[str, str], lib: Pkcs11Lib, session: pkcs11.Session, pin: str):
        self.key = key
        self.lib = lib
        self.session: pkcs11.Session | None = session
        self.users = 1
        self.keys: dict[bytes, _CachedKey] = {}
        self.disabled: set[bytes] = set()
        self._pin_key = os.urandom(32)
        self._pin_mac = self._mac(pin)

    @property
    def label(self) -> str:
        return self.key[1]

    def _mac(self, pin: str) -> bytes:
        return hmac.new(self._pin_key, pin.encode("utf-8"), hashlib.sha256).digest()

    def pin_matches(self, pin: str) -> bool:
        return hmac.compare_digest(self._mac(pin), self._pin_mac)

    def require_session(self) -> pkcs11.Session:
        if self.session is None:
            raise BackendUnavailableError(f"PKCS#11 token {self.label!r} has no open session")
        return self.session

    def reopen(self, pin: str) -> None:
        """Close the session (ignoring errors), open a new one and log in again.

        Raises:
            BackendUnavailableError: the token cannot be reopened.
        """
        old, self.session = self.session, None
        self.keys.clear()  # python-pkcs11 objects are bound to their session
        if old is not None:
            try:
                old.close()
            except p11.PKCS11Error as e:
                log.debug("closing broken session on %r: %s", self.label, _describe(e))
        try:
            token = self.lib.get_token(token_label=self.label)
            try:
                self.session = token.open(rw=True, user_pin=pin)
                self._pin_mac = self._mac(pin)
            except p11.UserAlreadyLoggedIn:
                # The login outlived the old session (a session python-pkcs11
                # could not close is still open); a plain session inherits it
                # (PKCS#11 v2.40 §5.6), but the PIN must still be the known one.
                if not self.pin_matches(pin):
                    raise BackendError(f"PIN rejected by token {self.label!r}") from None
                self.session = token.open(rw=True)
        except p11.PKCS11Error as e:
            raise BackendUnavailableError(
                f"PKCS#11 token {self.label!r} unavailable: reopening the session failed "
                f"({_describe(e)})"
            ) from e
        log.info("reopened session on PKCS#11 token %r", self.label)

    def close(self) -> None:
        session, self.session = self.session, None
        self.keys.clear()
        if session is not None:
            try:
                session.close()  # C_Logout, then C_CloseSession
            except p11.PKCS11Error as e:
                log.warning("closing session on PKCS#11 token %r: %s", self.label, _describe(e))


class _Transient(Exception):
    """A startup failure worth retrying; carries the PKCS#11 error as __cause__."""


# --- the backend -------------------------------------------------------------------


# Most signatures per trip of the PKCS#11 thread before their callers are woken.
_DRAIN_GROUP = 64


@dataclass
class _SignJob:
    key_id: bytes
    algorithm: Algorithm
    message: bytes
    hashed: bool  # ECDSA: message is already the SHA-256 digest
    future: asyncio.Future[bytes]


def _drop_frames(error: BaseException) -> None:
    """Free what an error's frames hold while still on the PKCS#11 thread (see _confined)."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        e = pending.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        traceback.clear_frames(e.__traceback__)
        pending += (e.__cause__, e.__context__)


class Pkcs11Backend(KeyBackend):
    """Keys in a PKCS#11 token, found by label and unlocked with a user PIN.

    Keys are generated in the token as sensitive and non-extractable (P1).
    A key's handle is the hex of its CKA_ID (16 random bytes), shared by the
    private and public key objects.

    Args:
        name: the backend's name in the configuration.
        module: path of the PKCS#11 module (e.g. ``libsofthsm2.so``).
        token_label: CKA_LABEL of the token (at most 32 bytes).
        pin: returns the user PIN when called; read only when logging in, and
            never stored, logged or shown by ``repr``.
        startup_attempts: how often ``start`` tries to open the token.
        sleep: blocking sleep used between startup attempts (injected by tests);
            run off the event loop.

    Raises:
        ConfigError: ``startup_attempts`` is below 1.
    """

    def __init__(
        self,
        name: str,
        module: Path | str,
        token_label: str,
        pin: Callable[[], str],
        *,
        startup_attempts: int = 5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if startup_attempts < 1:
            raise ConfigError(f"backend {name!r}: startup_attempts must be at least 1")
        self.name = name
        self._module = str(module)
        self._token_label = token_label
        self._pin_provider = pin
        self._startup_attempts = startup_attempts
        self._sleep = sleep
        self._conn: _TokenConn | None = None  # PKCS#11 thread only
        # Concurrent signs wait here and go to the PKCS#11 thread together.
        self._queue: list[_SignJob] = []
        self._queue_lock = threading.Lock()
        self._draining = False

    def __repr__(self) -> str:
        return (
            f"Pkcs11Backend(name={self.name!r}, module={self._module!r}, "
            f"token_label={self._token_label!r})"
        )

    # --- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Load the module, find the token by label, open a session and log in.

        Transient failures (NoSuchToken, GeneralError, ...: processes racing to
        open one token, DESIGN §4) are retried ``startup_attempts`` times with
        exponential backoff. Idempotent.

        Raises:
            BackendError: the module cannot be loaded, the PIN is rejected, or
                the label matches several tokens.
            BackendUnavailableError: the token cannot be opened after all attempts.
        """
        loop = asyncio.get_running_loop()
        for attempt in range(1, self._startup_attempts + 1):
            try:
                await _run(self._start_once)
                return
            except _Transient as e:
                cause = e.__cause__
                if attempt == self._startup_attempts:
                    raise BackendUnavailableError(
                        f"PKCS#11 token {self._token_label!r} not available after "
                        f"{attempt} attempt(s): {_describe(cause)}"
                    ) from cause
                # Jitter spreads out processes that started together.
                delay = min(_BACKOFF_FIRST * 2 ** (attempt - 1), _BACKOFF_MAX)
                delay *= random.uniform(0.5, 1.5)  # noqa: S311 - not for security
                log.warning(
                    "backend %r: PKCS#11 token %r not ready (%s), attempt %d of %d; "
                    "retrying in %.2fs",
                    self.name,
                    self._token_label,
                    _describe(cause),
                    attempt,
                    self._startup_attempts,
                    delay,
                )
                await loop.run_in_executor(None, self._sleep, delay)

    def _start_once(self) -> None:
        _on_pkcs11_thread()
        if self._conn is not None:
            return
        label = self._token_label
        lib_key, lib = _load_library(self._module)
        pin = self._pin()
        conn = _CONNS.get((lib_key, label))
        if conn is not None:
            # The token is already logged in for this process, so C_Login
            # cannot check this PIN; compare it with the one that logged in.
            if not conn.pin_matches(pin):
                raise BackendError(f"PIN rejected by token {label!r}")
            conn.users += 1
            self._conn = conn
            log.info("backend %r joined the open session on PKCS#11 token %r", self.name, label)
            return
        try:
            token = lib.get_token(token_label=label)
            # A failed login leaves python-pkcs11's just-opened session open
            # until the module is re-initialised; harmless, but not closable.
            session = token.open(rw=True, user_pin=pin)
        except _PIN_ERRORS as e:
            raise BackendError(f"PIN rejected by token {label!r} ({type(e).__name__})") from e
        except p11.MultipleTokensReturned as e:
            raise BackendError(f"more than one PKCS#11 token is labelled {label!r}") from e
        except p11.UserAlreadyLoggedIn as e:
            raise BackendError(
                f"PKCS#11 token {label!r} is already logged in by code outside "
                "Pkcs11Backend in this process"
            ) from e
        except p11.UserPinNotInitialized as e:
            raise BackendError(f"PKCS#11 token {label!r} has no user PIN set") from e
        except _STARTUP_TRANSIENT as e:
            _maybe_reinitialize(lib_key, lib)
            raise _Transient() from e
        except p11.PKCS11Error as e:
            raise BackendUnavailableError(
                f"cannot open PKCS#11 token {label!r}: {_describe(e)}"
            ) from e
        conn = _TokenConn((lib_key, label), lib, session, pin)
        _CONNS[conn.key] = conn
        self._conn = conn
        log.info("backend %r logged in to PKCS#11 token %r", self.name, label)

    async def close(self) -> None:
        """Leave the token; the last backend on it logs out and closes the session.

        The module stays loaded and initialised (other backends may use it).
        Idempotent; never raises.
        """
        await _run(self._close_blocking)

    def _close_blocking(self) -> None:
        _on_pkcs11_thread()
        conn, self._conn = self._conn, None
        if conn is None:
            return
        conn.users -= 1
        if conn.users == 0:
            _CONNS.pop(conn.key, None)
            conn.close()
            log.info("logged out of PKCS#11 token %r", conn.label)

    async def check(self) -> None:
        """Probe the token and the session (C_GetTokenInfo, C_GenerateRandom).

        Raises:
            BackendUnavailableError: not started, or the token does not answer.
        """
        try:
            await _run(lambda: self._call("health check", self._check_op))
        except BackendUnavailableError:
            raise
        except BackendError as e:
            raise BackendUnavailableError(e.reason) from e

    def _check_op(self, conn: _TokenConn) -> None:
        session = conn.require_session()
        session.token.slot.get_token()
        session.generate_random(64)

    # --- keys --------------------------------------------------------------------

    async def create(self, algorithm: Algorithm, label: str) -> NewKey:
        """Generate a key pair in the token and return its handle and public key.

        The private key is a token object with SENSITIVE, PRIVATE and SIGN set,
        EXTRACTABLE unset; after generation the attributes are read back and the
        pair is destroyed if the token did not honour them (P1).

        Args:
            algorithm: what the key is for.
            label: CKA_LABEL of both key objects.

        Raises:
            BackendError: generation failed or the token did not honour the template.
            BackendUnavailableError: not started, or the token is gone.
        """
        key_id, parts = await _run(
            lambda: self._call("key generation", lambda c: self._create_op(c, algorithm, label))
        )
        public = _pubkey.to_sslib_key(parts.to_crypto(algorithm), algorithm)
        handle = key_id.hex()
        log.info(
            "backend %r created %s key %s (label %r) on token %r",
            self.name,
            algorithm.value,
            handle,
            label,
            self._token_label,
        )
        return NewKey(handle=handle, public_key=public)

    def _create_op(
        self, conn: _TokenConn, algorithm: Algorithm, label: str
    ) -> tuple[bytes, _PublicParts]:
        session = conn.require_session()
        key_id = os.urandom(_KEY_ID_BYTES)
        private_template: dict[Attribute, Any] = {
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.SIGN: True,
        }
        public_template: dict[Attribute, Any] = {Attribute.TOKEN: True, Attribute.VERIFY: True}
        options: dict[str, Any] = {
            "id": key_id,
            "label": label,
            "store": True,
            "capabilities": MechanismFlag.SIGN | MechanismFlag.VERIFY,
            "private_template": private_template,
        }
        if algorithm is Algorithm.RSA_3072_PSS:
            public_template[Attribute.PUBLIC_EXPONENT] = _RSA_EXPONENT
            pub, priv = session.generate_keypair(
                KeyType.RSA, _pubkey.RSA_BITS, public_template=public_template, **options
            )
        else:
            key_type, params = (
                (KeyType.EC_EDWARDS, _ED25519_PARAMS)
                if algorithm is Algorithm.ED25519
                else (KeyType.EC, _P256_PARAMS)
            )
            domain = session.create_domain_parameters(
                key_type, {Attribute.EC_PARAMS: params}, local=True
            )
            pub, priv = domain.generate_keypair(public_template=public_template, **options)
        try:
            attrs = priv.get_attributes(list(_REQUIRED_PRIVATE_ATTRIBUTES))
            _check_private_key_attributes(attrs)
            parts = self._public_parts(pub, algorithm)
        except (BackendError, p11.PKCS11Error) as e:
            log.error(
                "backend %r: destroying new key %s on token %r: %s",
                self.name,
                key_id.hex(),
                self._token_label,
                e,
            )
            for obj in (priv, pub):
                try:
                    obj.destroy()
                except p11.PKCS11Error as destroy_error:
                    log.error("could not destroy key object: %s", _describe(destroy_error))
            raise
        return key_id, parts

    async def public_key(self, handle: str, algorithm: Algorithm) -> SSlibKey:
        """Read the public key stored under ``handle``.

        Raises:
            BackendError: no such key, or it is not an ``algorithm`` key.
            BackendUnavailableError: not started, or the token is gone.
        """
        key_id = _parse_handle(handle)
        parts = await _run(
            lambda: self._call(
                "public key read", lambda c: self._public_key_op(c, key_id, algorithm)
            )
        )
        return _pubkey.to_sslib_key(parts.to_crypto(algorithm), algorithm)

    def _public_key_op(self, conn: _TokenConn, key_id: bytes, algorithm: Algorithm) -> _PublicParts:
        obj = _find_one(
            conn.require_session(), {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.ID: key_id}
        )
        if obj is None:
            raise BackendError(
                f"no public key with handle {key_id.hex()} on token {self._token_label!r}"
            )
        return self._public_parts(obj, algorithm)

    def _public_parts(self, obj: pkcs11.Object, algorithm: Algorithm) -> _PublicParts:
        found = _algorithm_of(obj)
        if found is not algorithm:
            raise BackendError(_wrong_algorithm(_key_hex(obj), found, algorithm))
        if algorithm is Algorithm.RSA_3072_PSS:
            return _PublicParts(
                modulus=obj[Attribute.MODULUS], public_exponent=obj[Attribute.PUBLIC_EXPONENT]
            )
        return _PublicParts(ec_point=obj[Attribute.EC_POINT])

    async def sign(self, handle: str, algorithm: Algorithm, data: bytes) -> bytes:
        """Sign ``data`` in the token.

        Ed25519: CKM_EDDSA over ``data``. ECDSA P-256: CKM_ECDSA over SHA-256 of
        ``data`` (SoftHSM has no CKM_ECDSA_SHA256), returned as DER. RSA:
        CKM_SHA256_RSA_PKCS_PSS with MGF1-SHA-256 and a 32-byte salt.

        A lost session is reopened (and logged in) once, and the signature
        retried once.

        Raises:
            BackendError: unknown or disabled handle, a key of another
                algorithm, or the token refused to sign.
            BackendUnavailableError: not started, or the token is gone.
        """
        (result,) = await self.sign_batch([(handle, algorithm, data)])
        if isinstance(result, BaseException):
            raise result
        return result

    async def sign_batch(
        self,
        items: Sequence[tuple[str, Algorithm, bytes]],
        digests: Sequence[bytes] | None = None,
    ) -> list[bytes | BackendError]:
        """Sign many payloads in one trip to the PKCS#11 thread; errors per item.

        Concurrent calls coalesce: while the PKCS#11 thread signs one group,
        later calls queue up and go together in the next trip, so a burst
        costs one thread hand-off per group rather than per signature.

        Raises:
            BackendUnavailableError: not started (every item would fail alike).
        """
        loop = asyncio.get_running_loop()
        jobs = []
        for i, (handle, algorithm, data) in enumerate(items):
            # SoftHSM has no CKM_ECDSA_SHA256: ECDSA signs a SHA-256 digest. Use
            # the caller's; else hash on the PKCS#11 thread (hashlib releases
            # the GIL there), not here: the event loop is the busier thread.
            digest = digests[i] if digests is not None else None
            if algorithm is Algorithm.ECDSA_P256 and digest is not None:
                if len(digest) != hashlib.sha256().digest_size:
                    raise ValueError("digests must be SHA-256 digests")
                message, hashed = digest, True
            else:
                message, hashed = data, False
            jobs.append(
                _SignJob(_parse_handle(handle), algorithm, message, hashed, loop.create_future())
            )
        with self._queue_lock:
            self._queue.extend(jobs)
            start = not self._draining
            self._draining = True
        if start:
            _pkcs11_thread().submit(_confined, self._drain)
        results: list[bytes | BackendError] = []
        for job in jobs:
            try:
                results.append(self._finish(job.algorithm, await job.future))
            except BackendError as e:
                results.append(e)
        return results

    def _drain(self) -> None:
        """PKCS#11 thread: sign queued jobs, group by group, until none are left.

        A group is at most ``_DRAIN_GROUP`` jobs: its callers get their
        signatures as soon as it is done, rather than after everything queued
        (under SignBatch load, thousands), so their records go to the audit
        writer while this thread signs on.
        """
        while True:
            with self._queue_lock:
                jobs = self._queue[:_DRAIN_GROUP]
                del self._queue[:_DRAIN_GROUP]
                if not jobs:
                    self._draining = False
                    return
            outcomes: list[tuple[_SignJob, bytes | BaseException]] = []
            for job in jobs:
                try:
                    signature: bytes | BaseException = self._call(
                        "signing",
                        lambda c, j=job: self._sign_op(c, j),  # type: ignore[misc]
                    )
                except BackendError as e:
                    _drop_frames(e)
                    signature = e
                except Exception as e:
                    _drop_frames(e)
                    signature = BackendError(f"signing failed: {type(e).__name__}")
                outcomes.append((job, signature))
            # Callers may wait on different event loops (threads with their own).
            resolve_threadsafe((job.future, outcome) for job, outcome in outcomes)

    def _finish(self, algorithm: Algorithm, signature: bytes) -> bytes:
        """Loop thread: check a signature's size and put it in securesystemslib's format."""
        if algorithm is Algorithm.ECDSA_P256:
            return _pubkey.ecdsa_raw_to_der(signature)
        expected = (
            _ED25519_SIGNATURE_BYTES if algorithm is Algorithm.ED25519 else _RSA_SIGNATURE_BYTES
        )
        if len(signature) != expected:
            raise BackendError(
                f"token returned a {algorithm.value} signature of {len(signature)} bytes, "
                f"not {expected}"
            )
        return signature

    def _sign_op(self, conn: _TokenConn, job: _SignJob) -> bytes:
        key = self._private_key(conn, job.key_id, job.algorithm)
        if job.algorithm is Algorithm.ED25519:
            return key.sign(job.message, mechanism=Mechanism.EDDSA)
        if job.algorithm is Algorithm.ECDSA_P256:
            digest = job.message if job.hashed else hashlib.sha256(job.message).digest()
            return key.sign(digest, mechanism=Mechanism.ECDSA)
        return key.sign(
            job.message, mechanism=Mechanism.SHA256_RSA_PKCS_PSS, mechanism_param=_PSS_PARAMS
        )

    def _private_key(
        self, conn: _TokenConn, key_id: bytes, algorithm: Algorithm
    ) -> pkcs11.types.SignMixin:
        if key_id in conn.disabled:
            raise BackendError(f"key {key_id.hex()} is disabled")
        cached = conn.keys.get(key_id)
        if cached is None:
            obj = _find_one(
                conn.require_session(),
                {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.ID: key_id},
            )
            if obj is None:
                raise BackendError(
                    f"no private key with handle {key_id.hex()} on token {self._token_label!r}"
                )
            # python-pkcs11 adds the sign method only when CKA_SIGN is true.
            if not isinstance(obj, pkcs11.types.SignMixin):
                raise BackendError(f"key {key_id.hex()} cannot sign (CKA_SIGN is false)")
            cached = _CachedKey(obj, _algorithm_of(obj))
            conn.keys[key_id] = cached
        if cached.algorithm is not algorithm:
            raise BackendError(_wrong_algorithm(key_id.hex(), cached.algorithm, algorithm))
        return cached.key

    async def disable(self, handle: str) -> None:
        """Stop a retired key from signing; the key itself is kept.

        Retired keys stay in the token so that old metadata stays verifiable.
        Sets CKA_SIGN false on the private key where the token allows it, and
        in any case refuses to sign with it in this process from now on.

        Raises:
            BackendError: no such key.
            BackendUnavailableError: not started, or the token is gone.
        """
        key_id = _parse_handle(handle)
        await _run(lambda: self._call("disabling a key", lambda c: self._disable_op(c, key_id)))

    def _disable_op(self, conn: _TokenConn, key_id: bytes) -> None:
        obj = _find_one(
            conn.require_session(),
            {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.ID: key_id},
        )
        if obj is None:
            raise BackendError(
                f"no private key with handle {key_id.hex()} on token {self._token_label!r}"
            )
        conn.keys.pop(key_id, None)
        conn.disabled.add(key_id)
        try:
            obj[Attribute.SIGN] = False
        except p11.PKCS11Error as e:
            if isinstance(e, _SESSION_ERRORS):
                raise
            log.info(
                "backend %r: token %r refused to clear CKA_SIGN on key %s (%s); "
                "it stays unusable in this process only",
                self.name,
                self._token_label,
                key_id.hex(),
                _describe(e),
            )
        else:
            log.info("backend %r: disabled key %s", self.name, key_id.hex())

    # --- plumbing (PKCS#11 thread) ---------------------------------------------------

    def _pin(self) -> str:
        try:
            pin = self._pin_provider()
        except Exception as e:
            raise BackendError(
                f"PIN provider for token {self._token_label!r} failed ({type(e).__name__})"
            ) from e
        if not isinstance(pin, str):
            raise BackendError(f"PIN provider for token {self._token_label!r} returned no text")
        return pin

    def _call(self, what: str, op: Callable[[_TokenConn], _T]) -> _T:
        """Run ``op`` on the shared session, wrapping every PKCS#11 error.

        A session or device error reopens the session and logs in once, then
        ``op`` is retried once; a stale object handle is looked up again once.
        """
        _on_pkcs11_thread()
        conn = self._conn
        if conn is None:
            raise BackendUnavailableError(f"backend {self.name!r} is not started")
        if conn.session is None:  # an earlier reopen failed; try again
            conn.reopen(self._pin())
        try:
            return op(conn)
        except _STALE_OBJECT_ERRORS as e:
            log.warning("%s on token %r: %s; retrying", what, self._token_label, _describe(e))
            conn.keys.clear()
        except _SESSION_ERRORS as e:
            log.warning(
                "%s on token %r: %s; reopening the session", what, self._token_label, _describe(e)
            )
            conn.reopen(self._pin())
        except p11.PKCS11Error as e:
            raise BackendError(
                f"{what} failed on token {self._token_label!r}: {_describe(e)}"
            ) from e
        try:
            return op(conn)
        except (*_SESSION_ERRORS, *_STALE_OBJECT_ERRORS) as e:
            raise BackendUnavailableError(
                f"PKCS#11 token {self._token_label!r} unavailable ({what}): {_describe(e)}"
            ) from e
        except p11.PKCS11Error as e:
            raise BackendError(
                f"{what} failed on token {self._token_label!r}: {_describe(e)}"
            ) from e


def _parse_handle(handle: str) -> bytes:
    """CKA_ID bytes from a handle (lowercase or uppercase hex)."""
    try:
        key_id = bytes.fromhex(handle)
    except ValueError:
        key_id = b""
    if not key_id or len(key_id) > 64:
        raise BackendError(f"malformed PKCS#11 key handle {handle[:80]!r}")
    return key_id


def _wrong_algorithm(key_hex: str, found: Algorithm | None, wanted: Algorithm) -> str:
    what = f"a {found.value} key" if found else "of an unsupported type"
    return f"key {key_hex} is {what}, not {wanted.value}"


def _key_hex(obj: pkcs11.Object) -> str:
    try:
        key_id: bytes = obj[Attribute.ID]
    except p11.PKCS11Error:
        return "?"
    return key_id.hex()
