"""Pkcs11Backend against a real SoftHSM token (see tests/conftest.py).

The backend-generic cases (signatures that verify, keys of another algorithm,
rotation, retirement) are in test_backend_contract.py, which runs them on this
backend too; these are the ones only PKCS#11 has, or checked more closely.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pkcs11
import pytest
from pkcs11 import Attribute, ObjectClass
from securesystemslib.exceptions import UnverifiedSignatureError
from securesystemslib.formats import encode_canonical
from securesystemslib.signer import Signature, SSlibKey

from tests.conftest import SoftHsm
from tuf_signer.errors import BackendError, BackendUnavailableError, ConfigError
from tuf_signer.keys import NewKey, Pkcs11Backend
from tuf_signer.keys.pkcs11 import _algorithms, _session, _thread
from tuf_signer.model import Algorithm
from tuf_signer.testing.softhsm import init_token

T = TypeVar("T")

ALGORITHMS = [
    pytest.param(Algorithm.ED25519, id="ed25519"),
    pytest.param(Algorithm.ECDSA_P256, id="ecdsa-p256"),
    pytest.param(Algorithm.RSA_3072_PSS, id="rsa-3072-pss"),
]

# The attribute that holds each key type's secret (PKCS#11 Current Mechanisms).
SECRET_ATTRIBUTE = {
    Algorithm.ED25519: Attribute.VALUE,
    Algorithm.ECDSA_P256: Attribute.VALUE,
    Algorithm.RSA_3072_PSS: Attribute.PRIVATE_EXPONENT,
}


@pytest.fixture(scope="module")
def keys(softhsm: SoftHsm) -> dict[Algorithm, NewKey]:
    """One key per algorithm for the module (RSA-3072 generation is slow)."""

    async def create_all() -> dict[Algorithm, NewKey]:
        backend = softhsm.backend("setup")
        await backend.start()
        try:
            return {alg: await backend.create(alg, f"module-{alg.value}") for alg in Algorithm}
        finally:
            await backend.close()

    return asyncio.run(create_all())


async def on_pkcs11_thread(fn: Callable[[], T]) -> T:
    """White-box access to PKCS#11 objects, on the one thread allowed to touch them."""
    return await _thread.run(fn)


def session_of(backend: Pkcs11Backend) -> pkcs11.Session:
    assert backend._conn is not None
    assert backend._conn.session is not None
    return backend._conn.session


def verify(key: SSlibKey, data: bytes, signature: bytes) -> None:
    key.verify_signature(Signature(key.keyid, signature.hex()), data)


def error_chain(e: BaseException | None) -> Iterator[BaseException]:
    while e is not None:
        yield e
        e = e.__cause__ or e.__context__


# --- create / public key ------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_create_returns_tuf_public_key(
    pkcs11_backend: Pkcs11Backend, algorithm: Algorithm
) -> None:
    new = await pkcs11_backend.create(algorithm, "created")

    assert len(bytes.fromhex(new.handle)) == 16
    assert new.public_key.keytype == algorithm.keytype
    assert new.public_key.scheme == algorithm.scheme
    # securesystemslib's default keyid: SHA-256 of the canonical key dict.
    canonical = encode_canonical(new.public_key.to_dict())
    assert isinstance(canonical, str)
    assert new.public_key.keyid == hashlib.sha256(canonical.encode()).hexdigest()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_public_key_is_stable_across_reads_and_restarts(
    softhsm: SoftHsm,
    pkcs11_backend: Pkcs11Backend,
    keys: dict[Algorithm, NewKey],
    algorithm: Algorithm,
) -> None:
    handle, created = keys[algorithm].handle, keys[algorithm].public_key

    first = await pkcs11_backend.public_key(handle, algorithm)
    second = await pkcs11_backend.public_key(handle.upper(), algorithm)
    # A second backend while the first is open shares its session.
    sibling = softhsm.backend("sibling")
    await sibling.start()
    from_sibling = await sibling.public_key(handle, algorithm)
    await sibling.close()
    # A "restart": every backend closed (logged out), then a new one.
    await pkcs11_backend.close()
    restarted = softhsm.backend("restarted")
    await restarted.start()
    try:
        after_restart = await restarted.public_key(handle, algorithm)
    finally:
        await restarted.close()

    assert {k.keyid for k in (first, second, from_sibling, after_restart)} == {created.keyid}
    assert first.to_dict() == after_restart.to_dict() == created.to_dict()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_private_key_is_sensitive_and_not_extractable(
    pkcs11_backend: Pkcs11Backend, keys: dict[Algorithm, NewKey], algorithm: Algorithm
) -> None:
    key_id = bytes.fromhex(keys[algorithm].handle)

    def inspect() -> dict[Attribute, Any]:
        (private,) = list(
            session_of(pkcs11_backend).get_objects(
                {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.ID: key_id}
            )
        )
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            private[SECRET_ATTRIBUTE[algorithm]]
        return private.get_attributes(list(_algorithms.REQUIRED_PRIVATE_ATTRIBUTES))

    attrs = await on_pkcs11_thread(inspect)

    assert attrs == _algorithms.REQUIRED_PRIVATE_ATTRIBUTES


# --- sign -----------------------------------------------------------------------------


# Empty and small payloads: test_backend_contract.py; this size is PKCS#11's own case.
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("data", [pytest.param(os.urandom(256 * 1024), id="256KiB")])
async def test_signature_verifies_with_securesystemslib(
    pkcs11_backend: Pkcs11Backend,
    keys: dict[Algorithm, NewKey],
    algorithm: Algorithm,
    data: bytes,
) -> None:
    key = keys[algorithm]

    signature = await pkcs11_backend.sign(key.handle, algorithm, data)

    verify(key.public_key, data, signature)
    with pytest.raises(UnverifiedSignatureError):
        verify(key.public_key, data + b"x", signature)


async def test_concurrent_signing_from_tasks_and_threads(
    pkcs11_backend: Pkcs11Backend, keys: dict[Algorithm, NewKey]
) -> None:
    loop = asyncio.get_running_loop()
    signed: list[tuple[Algorithm, bytes, bytes]] = []

    async def sign_one(algorithm: Algorithm, data: bytes) -> None:
        signature = await pkcs11_backend.sign(keys[algorithm].handle, algorithm, data)
        signed.append((algorithm, data, signature))

    def jobs(tag: str, n: int) -> list[tuple[Algorithm, bytes]]:
        return [(alg, f"{tag} {i} {alg.value}".encode()) for i in range(n) for alg in Algorithm]

    def thread_through_main_loop(tag: str) -> None:
        for alg, data in jobs(tag, 5):
            asyncio.run_coroutine_threadsafe(sign_one(alg, data), loop).result(timeout=60)

    def thread_with_own_loop(tag: str) -> None:
        async def run() -> None:
            await asyncio.gather(*(sign_one(alg, data) for alg, data in jobs(tag, 5)))

        asyncio.run(run())

    await asyncio.gather(
        *(sign_one(alg, data) for alg, data in jobs("task", 30)),  # 90 coroutines
        *(asyncio.to_thread(thread_through_main_loop, f"main-loop-{i}") for i in range(2)),
        *(asyncio.to_thread(thread_with_own_loop, f"own-loop-{i}") for i in range(2)),
    )

    assert len(signed) == 90 + 4 * 15
    for algorithm, data, signature in signed:
        verify(keys[algorithm].public_key, data, signature)
    assert [t.name for t in threading.enumerate() if t.name.startswith("pkcs11")] == ["pkcs11_0"]


async def test_lost_session_is_reopened_once(
    softhsm: SoftHsm, keys: dict[Algorithm, NewKey]
) -> None:
    key = keys[Algorithm.ED25519]
    backend = softhsm.backend("reopen")
    await backend.start()
    try:
        await backend.sign(key.handle, Algorithm.ED25519, b"warm the key cache")
        await on_pkcs11_thread(session_of(backend).close)  # the token drops our session

        signature = await backend.sign(key.handle, Algorithm.ED25519, b"after")

        verify(key.public_key, b"after", signature)
        await backend.check()
    finally:
        await backend.close()


# python-pkcs11 0.10.1 marks a search active before C_FindObjectsInit; when that
# fails on the dead session, the search's __del__ (on the PKCS#11 thread) fails too.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_session_that_cannot_be_reopened_is_unavailable_until_it_can(
    softhsm: SoftHsm, keys: dict[Algorithm, NewKey]
) -> None:
    key = keys[Algorithm.ED25519]
    # The token refuses the PIN once (a wrong one in the pin file), then the right one is back.
    pins = iter([softhsm.pin, "0000", softhsm.pin])
    backend = softhsm.backend("reopen-fails", pin=lambda: next(pins))
    await backend.start()
    try:
        await on_pkcs11_thread(session_of(backend).close)

        with pytest.raises(BackendUnavailableError, match="refused the PIN"):
            await backend.sign(key.handle, Algorithm.ED25519, b"x")
        signature = await backend.sign(key.handle, Algorithm.ED25519, b"y")  # reopens

        verify(key.public_key, b"y", signature)
    finally:
        await backend.close()


# --- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("other_backend_open", [False, True], ids=["login", "joining-session"])
async def test_wrong_pin_is_rejected_without_showing_it(
    softhsm: SoftHsm, other_backend_open: bool
) -> None:
    other = softhsm.backend("other")
    if other_backend_open:
        await other.start()
    backend = softhsm.backend("wrong-pin", pin="98765")
    try:
        with pytest.raises(BackendError, match="PIN rejected by token 'test'") as raised:
            await backend.start()
    finally:
        await other.close()

    assert not isinstance(raised.value, BackendUnavailableError)
    assert all("98765" not in str(e) for e in error_chain(raised.value))
    assert "98765" not in repr(backend)
    with pytest.raises(BackendUnavailableError, match="not started"):
        await backend.sign("00" * 16, Algorithm.ED25519, b"x")


async def test_unknown_token_is_unavailable_after_retries(softhsm: SoftHsm) -> None:
    sleeps: list[float] = []
    backend = softhsm.backend(
        "nowhere", token_label="no-such-token", startup_attempts=3, sleep=sleeps.append
    )

    with pytest.raises(BackendUnavailableError, match=r"'no-such-token'.*after 3") as raised:
        await backend.start()

    assert len(sleeps) == 2
    assert all(0 < s <= 1.5 for s in sleeps)
    assert all(softhsm.pin not in str(e) for e in error_chain(raised.value))


def test_startup_attempts_must_be_positive(softhsm: SoftHsm) -> None:
    with pytest.raises(ConfigError, match="startup_attempts"):
        softhsm.backend("bad", startup_attempts=0)


async def test_missing_module_is_a_backend_error(softhsm: SoftHsm) -> None:
    backend = Pkcs11Backend("bad", "/nonexistent/libpkcs11.so", "test", lambda: softhsm.pin)

    with pytest.raises(BackendError, match=re.escape("module /nonexistent/libpkcs11.so not found")):
        await backend.start()


@pytest.mark.parametrize(
    ("handle", "operation", "message"),
    [
        pytest.param(os.urandom(16).hex(), "sign", "no private key with handle", id="sign"),
        pytest.param(os.urandom(16).hex(), "public_key", "no public key with handle", id="read"),
        pytest.param(os.urandom(16).hex(), "disable", "no private key with handle", id="disable"),
        pytest.param("not-hex", "sign", "malformed PKCS#11 key handle", id="malformed"),
        pytest.param("", "public_key", "malformed PKCS#11 key handle", id="empty"),
    ],
)
async def test_unknown_handle_is_a_backend_error(
    pkcs11_backend: Pkcs11Backend, handle: str, operation: str, message: str
) -> None:
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "sign": lambda: pkcs11_backend.sign(handle, Algorithm.ED25519, b"x"),
        "public_key": lambda: pkcs11_backend.public_key(handle, Algorithm.ED25519),
        "disable": lambda: pkcs11_backend.disable(handle),
    }

    with pytest.raises(BackendError, match=message) as raised:
        await calls[operation]()

    assert type(raised.value) is BackendError  # INTERNAL, not UNAVAILABLE


# --- disable, health, close -------------------------------------------------------------


async def test_disabled_key_stops_signing_but_stays_readable(softhsm: SoftHsm) -> None:
    backend = softhsm.backend("retire")
    await backend.start()
    try:
        new = await backend.create(Algorithm.ED25519, "to-retire")
        await backend.sign(new.handle, Algorithm.ED25519, b"before")

        await backend.disable(new.handle)

        with pytest.raises(BackendError, match="is disabled"):
            await backend.sign(new.handle, Algorithm.ED25519, b"after")
    finally:
        await backend.close()

    # After a restart the token itself refuses: CKA_SIGN is false.
    restarted = softhsm.backend("retire-restarted")
    await restarted.start()
    try:
        with pytest.raises(BackendError, match=r"CKA_SIGN is false"):
            await restarted.sign(new.handle, Algorithm.ED25519, b"after restart")
        assert (await restarted.public_key(new.handle, Algorithm.ED25519)) == new.public_key
    finally:
        await restarted.close()


async def test_check_close_and_restart(softhsm: SoftHsm) -> None:
    backend = softhsm.backend("health")
    with pytest.raises(BackendUnavailableError, match="not started"):
        await backend.check()

    await backend.start()
    await backend.start()  # idempotent
    await backend.check()
    await backend.close()
    await backend.close()  # idempotent

    with pytest.raises(BackendUnavailableError, match="not started"):
        await backend.check()
    await backend.start()
    await backend.check()
    await backend.close()


def test_repr_does_not_show_the_pin(softhsm: SoftHsm) -> None:
    backend = softhsm.backend("shown", pin="24680")

    assert "24680" not in repr(backend)
    assert "'test'" in repr(backend)


# --- more than one token ----------------------------------------------------------------


async def test_two_tokens_in_one_process(
    softhsm: SoftHsm, pkcs11_backend: Pkcs11Backend, keys: dict[Algorithm, NewKey]
) -> None:
    other = softhsm.backend("second", token_label="test-2")
    await other.start()
    try:
        theirs = await other.create(Algorithm.ED25519, "second-token")
        ours = keys[Algorithm.ED25519]

        results = await asyncio.gather(
            *(other.sign(theirs.handle, Algorithm.ED25519, b"%d" % i) for i in range(20)),
            *(pkcs11_backend.sign(ours.handle, Algorithm.ED25519, b"%d" % i) for i in range(20)),
        )

        for i, signature in enumerate(results):
            key = theirs if i < 20 else ours
            verify(key.public_key, b"%d" % (i % 20), signature)
        # Keys stay in their token.
        with pytest.raises(BackendError, match="no private key"):
            await other.sign(ours.handle, Algorithm.ED25519, b"x")
    finally:
        await other.close()


async def test_token_created_after_the_library_was_loaded(softhsm: SoftHsm) -> None:
    """SoftHSM lists slots at C_Initialize; start() re-initialises only when idle."""
    assert not _session._CONNS, "another test left a Pkcs11Backend open"
    holder = softhsm.backend("holder")
    await holder.start()  # the library is loaded and a session is open
    label = f"late-{os.getpid()}"
    init_token(softhsm.conf, label, softhsm.pin, softhsm.so_pin)
    late = softhsm.backend("late", token_label=label, startup_attempts=2, sleep=lambda s: None)

    with pytest.raises(BackendUnavailableError, match=f"'{label}'"):
        await late.start()  # cannot rescan: it would close holder's session
    await holder.close()
    await late.start()  # nothing open: re-initialised, the token appears

    try:
        new = await late.create(Algorithm.ED25519, "late-key")
        verify(new.public_key, b"x", await late.sign(new.handle, Algorithm.ED25519, b"x"))
    finally:
        await late.close()


# --- pure helpers -------------------------------------------------------------------------


def _flipped(attr: Attribute) -> dict[Attribute, Any]:
    attrs = dict(_algorithms.REQUIRED_PRIVATE_ATTRIBUTES)
    attrs[attr] = not attrs[attr]
    return attrs


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        pytest.param(
            _flipped(Attribute.ALWAYS_SENSITIVE), "CKA_ALWAYS_SENSITIVE=True", id="was-clear"
        ),
        pytest.param(_flipped(Attribute.EXTRACTABLE), "CKA_EXTRACTABLE=False", id="extractable"),
        pytest.param(
            _flipped(Attribute.NEVER_EXTRACTABLE),
            "CKA_NEVER_EXTRACTABLE=True",
            id="was-extractable",
        ),
        pytest.param(_flipped(Attribute.SENSITIVE), "CKA_SENSITIVE=True", id="not-sensitive"),
        pytest.param(_flipped(Attribute.TOKEN), "CKA_TOKEN=True", id="session-object"),
        pytest.param(_flipped(Attribute.DECRYPT), "CKA_DECRYPT=False", id="can-decrypt"),
        pytest.param(
            {
                k: v
                for k, v in _algorithms.REQUIRED_PRIVATE_ATTRIBUTES.items()
                if k != Attribute.PRIVATE
            },
            "CKA_PRIVATE=True",
            id="missing",
        ),
    ],
)
def test_private_key_attribute_check_refuses(attrs: dict[Attribute, Any], message: str) -> None:
    with pytest.raises(BackendError, match=f"did not honour {message}"):
        _algorithms.check_private_key_attributes(attrs)


def test_private_key_attribute_check_accepts_the_template() -> None:
    _algorithms.check_private_key_attributes(dict(_algorithms.REQUIRED_PRIVATE_ATTRIBUTES))


async def test_pkcs11_state_is_guarded_against_other_threads() -> None:
    with pytest.raises(BackendError, match="outside the PKCS#11 thread"):
        _thread.require_pkcs11_thread()


async def test_module_loaded_once_under_two_paths(
    softhsm: SoftHsm, pkcs11_backend: Pkcs11Backend, keys: dict[Algorithm, NewKey]
) -> None:
    # Debian's /usr/lib/softhsm/libsofthsm2.so is a symlink; python-pkcs11 alone
    # would load it twice and fail with CKR_CRYPTOKI_ALREADY_INITIALIZED.
    real = await asyncio.to_thread(os.path.realpath, softhsm.module)
    other = Pkcs11Backend("real-path", real, softhsm.token_label, lambda: softhsm.pin)
    await other.start()
    try:
        key = keys[Algorithm.ED25519]
        verify(key.public_key, b"x", await other.sign(key.handle, Algorithm.ED25519, b"x"))
        assert list(_session._LIBS) == [real]
    finally:
        await other.close()
