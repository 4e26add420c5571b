"""Signed checkpoints and cosignatures in both stores (issue 13; audit/_checkpoints.py).

The store keeps what it is given and never vouches for it; these tests check
that what comes back is exactly what a verifier needs: the log's note with
every stored cosignature line, for the right size, in both SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tuf_signer.audit import AuditStore
from tuf_signer.audit._checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from tuf_signer.audit._note import COSIGNATURE_V1, ED25519, VerifierKey, cosign_text

from .conftest import AuditFactory

ORIGIN = "tuf-signer.test/audit"
T = "2026-12-01T00:00:00.000000Z"


def _key(name: str, sig_type: int) -> tuple[VerifierKey, Callable[[bytes], bytes]]:
    private = Ed25519PrivateKey.generate()
    raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return VerifierKey(name, sig_type, raw), private.sign


LOG_KEY, LOG_SIGN = _key(ORIGIN, ED25519)
W1, W1_SIGN = _key("w1.test/witness", COSIGNATURE_V1)
W2, W2_SIGN = _key("w2.test/witness", COSIGNATURE_V1)


def _checkpoint(store: AuditStore) -> tuple[int, bytes]:
    size = store.tree_size()
    note = sign_checkpoint(Checkpoint(ORIGIN, size, store.tree_hash(size)), LOG_KEY, LOG_SIGN)
    return size, note.format()


def _cosign(note: bytes, key: VerifierKey, sign: Callable[[bytes], bytes], at: int) -> str:
    body = note.decode().split("\n\n", 1)[0] + "\n"
    return cosign_text(body, key, at, sign).line().rstrip("\n")


def test_a_checkpoint_comes_back_with_its_cosignatures(
    store: AuditStore, make: AuditFactory
) -> None:
    assert store.latest_checkpoint(ORIGIN) is None
    store.append([make.note(), make.note()])
    size, note = _checkpoint(store)
    store.add_checkpoint(ORIGIN, size, note, T)
    stored = store.latest_checkpoint(ORIGIN)
    assert stored is not None
    assert (stored.size, stored.note, stored.witnesses) == (2, note, ())
    assert store.latest_witnessed(ORIGIN) is None
    lines = [(W2.name, _cosign(note, W2, W2_SIGN, 7)), (W1.name, _cosign(note, W1, W1_SIGN, 5))]
    store.add_cosignatures(ORIGIN, size, lines, T)
    stored = store.checkpoint_at(ORIGIN, size)
    assert stored is not None and stored.witnesses == (W1.name, W2.name)
    signed = open_checkpoint(
        stored.note, origin=ORIGIN, log_key=LOG_KEY, cosigners=[W1, W2], quorum=2
    )
    assert signed.checkpoint.root_hash == store.tree_hash(2)
    assert sorted(v.timestamp for v in signed.cosignatures) == [5, 7]


def test_a_second_checkpoint_of_the_same_size_is_ignored(
    store: AuditStore, make: AuditFactory
) -> None:
    store.append([make.note()])
    size, note = _checkpoint(store)
    store.add_checkpoint(ORIGIN, size, note, T)
    store.add_checkpoint(ORIGIN, size, note, "2027-01-01T00:00:00.000000Z")
    stored = store.latest_checkpoint(ORIGIN)
    assert stored is not None and stored.created_at == T


def test_a_witness_newer_cosignature_replaces_its_older_one(
    store: AuditStore, make: AuditFactory
) -> None:
    store.append([make.note()])
    size, note = _checkpoint(store)
    store.add_checkpoint(ORIGIN, size, note, T)
    store.add_cosignatures(ORIGIN, size, [(W1.name, _cosign(note, W1, W1_SIGN, 5))], T)
    newer = _cosign(note, W1, W1_SIGN, 9)
    store.add_cosignatures(ORIGIN, size, [(W1.name, newer)], T)
    stored = store.latest_checkpoint(ORIGIN)
    assert stored is not None and stored.note == note + (newer + "\n").encode()


def test_latest_and_latest_witnessed_by_quorum(store: AuditStore, make: AuditFactory) -> None:
    sizes = {}
    for _ in range(3):
        store.append([make.note()])
        size, note = _checkpoint(store)
        store.add_checkpoint(ORIGIN, size, note, T)
        sizes[size] = note
    # Size 1: both witnesses; size 2: one; size 3: none.
    for size, keys in ((1, [(W1, W1_SIGN), (W2, W2_SIGN)]), (2, [(W1, W1_SIGN)])):
        lines = [(k.name, _cosign(sizes[size], k, s, 1)) for k, s in keys]
        store.add_cosignatures(ORIGIN, size, lines, T)
    latest = store.latest_checkpoint(ORIGIN)
    one = store.latest_witnessed(ORIGIN, 1)
    two = store.latest_witnessed(ORIGIN, 2)
    assert latest is not None and latest.size == 3
    assert one is not None and one.size == 2
    assert two is not None and two.size == 1
    assert store.latest_witnessed(ORIGIN, 3) is None
    # Another origin (a new log after a restore) shares nothing with this one.
    assert store.latest_checkpoint("tuf-signer.test/audit-2") is None
    assert store.checkpoint_at(ORIGIN, 4) is None
