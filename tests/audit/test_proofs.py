"""Proofs against signed checkpoints (issue 13, "Proofs"), and records by payload digest.

Run against every store (conftest.py). Checkpoints are signed with a software
key (``_logkeys``); what is handed out is checked with our verifiers and with
Go's ``sumdb/note`` and ``sumdb/tlog`` (``gocheck_proof``).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from tests.audit._logkeys import ORIGIN, SoftwareLogKey, SoftwareWitness, build_go_proof
from tuf_signer.audit import (
    AuditStore,
    Consistency,
    NoCheckpointError,
    consistency,
    find_checkpoint,
    format_consistency,
    merkle_inclusion,
    parse_consistency,
    record_leaf,
    tlog_proof,
)
from tuf_signer.audit._checkpoint import (
    Checkpoint,
    open_checkpoint,
    parse_tlog_proof,
    sign_checkpoint,
    verify_tlog_proof,
)
from tuf_signer.audit._merkle import ProofError, TreeRangeError, leaf_hash, verify_consistency
from tuf_signer.audit._note import NoteFormatError
from tuf_signer.errors import AuditChainError, NotFoundError, RequestError
from tuf_signer.model import Outcome

if TYPE_CHECKING:
    from conftest import AuditFactory

N = 13  # records
SIZES = (3, 8, 11)  # checkpoints; the newest, 11, does not cover records 12 and 13


@pytest.fixture
def log_key() -> SoftwareLogKey:
    return SoftwareLogKey.generate()


@pytest.fixture
def logged(store: AuditStore, make: AuditFactory, log_key: SoftwareLogKey) -> AuditStore:
    """N records in uneven batches, checkpoints of SIZES signed as they were reached."""
    done = 0
    while done < N:
        batch = min(N - done, done % 3 + 1)
        store.append([make.note(detail={"i": done + i}) for i in range(batch)])
        done += batch
        for size in SIZES:
            if size <= done and store.checkpoint_at(ORIGIN, size) is None:
                log_key.checkpoint(store, size)
    return store


@pytest.fixture(scope="module")
def go_proof(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., list[dict[str, Any]]]:
    return build_go_proof(tmp_path_factory)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _leaves(store: AuditStore) -> list[bytes]:
    return [record_leaf(r) for r in store.records()]


# --- records by payload digest ------------------------------------------------------------


def test_find_records_by_payload_digest(store: AuditStore, make: AuditFactory) -> None:
    store.append([make.create_key(), make.sign(2, "a"), make.sign(3, "b")])
    # The same payload again (a replay), then as a rollback (refused): all on the record.
    out = store.append([make.sign(2, "a"), make.note(), make.sign(3, "b"), make.sign(1, "a")])
    assert [c.status for c in out] == ["FAILED_PRECONDITION", "OK", "OK", "FAILED_PRECONDITION"]
    found = store.find_records(make.digest("a"))
    assert [r.seq for r in found] == [2, 4, 7]
    assert [r.event.outcome for r in found] == [Outcome.GRANTED, Outcome.REFUSED, Outcome.REFUSED]
    assert found == [r for r in store.records() if r.seq in (2, 4, 7)]
    assert [r.seq for r in store.find_records(make.digest("a"), limit=2)] == [2, 4]
    assert store.find_records(make.digest("never signed")) == []


def test_find_records_stops_at_the_limit(store: AuditStore, make: AuditFactory) -> None:
    store.append([make.create_key(), *(make.sign(v, "same") for v in range(1, 150))])
    found = store.find_records(make.digest("same"))
    assert [r.seq for r in found] == list(range(2, 102))  # 100, oldest first


@pytest.mark.parametrize(
    ("digest", "limit", "match"),
    [
        pytest.param("A" * 64, 100, "64 lowercase hex", id="uppercase"),
        pytest.param("a" * 63, 100, "64 lowercase hex", id="short"),
        pytest.param("a" * 65, 100, "64 lowercase hex", id="long"),
        pytest.param("g" * 64, 100, "64 lowercase hex", id="not-hex"),
        pytest.param("", 100, "64 lowercase hex", id="empty"),
        pytest.param("a" * 63 + "\0", 100, "64 lowercase hex", id="nul"),
        pytest.param("a" * 62 + "é", 100, "64 lowercase hex", id="non-ascii"),
        pytest.param(b"a" * 64, 100, "must be a string", id="bytes"),
        pytest.param("a" * 64, 0, "between 1 and 1000", id="limit-0"),
        pytest.param("a" * 64, 1001, "between 1 and 1000", id="limit-1001"),
        pytest.param("a" * 64, True, "between 1 and 1000", id="limit-bool"),
    ],
)
def test_find_records_refuses_bad_requests(
    store: AuditStore, digest: Any, limit: Any, match: str
) -> None:
    with pytest.raises(RequestError, match=match) as caught:
        store.find_records(digest, limit)
    assert caught.value.code == "INVALID_ARGUMENT"


def test_a_hostile_digest_is_not_echoed_whole(store: AuditStore) -> None:
    with pytest.raises(RequestError) as caught:
        store.find_records("\x1b[2J" + "x" * 100_000)
    assert "\x1b" not in caught.value.reason and len(caught.value.reason) < 200


# --- inclusion proofs -----------------------------------------------------------------------


def test_every_record_has_a_proof_against_every_checkpoint_that_covers_it(
    logged: AuditStore, log_key: SoftwareLogKey
) -> None:
    leaves = _leaves(logged)
    for size in SIZES:
        for seq in range(1, size + 1):
            text = tlog_proof(logged, ORIGIN, seq, size, log_key=log_key.key)
            proof = parse_tlog_proof(text)
            assert proof.format() == text  # one reading
            assert (proof.index, proof.checkpoint) == (
                seq - 1,
                logged.checkpoint_at(ORIGIN, size).note,
            )
            signed = verify_tlog_proof(
                proof,
                leaf_hash=leaf_hash(leaves[seq - 1]),
                origin=ORIGIN,
                log_key=log_key.key,
                verify_inclusion=merkle_inclusion,
            )
            assert signed.checkpoint.size == size


def test_without_a_size_the_newest_checkpoint(logged: AuditStore, log_key: SoftwareLogKey) -> None:
    assert tlog_proof(logged, ORIGIN, 5) == tlog_proof(logged, ORIGIN, 5, 11)
    # Another record's leaf does not verify: the proof is of record 5.
    with pytest.raises(ProofError):
        verify_tlog_proof(
            parse_tlog_proof(tlog_proof(logged, ORIGIN, 5)),
            leaf_hash=leaf_hash(_leaves(logged)[5]),
            origin=ORIGIN,
            log_key=log_key.key,
            verify_inclusion=merkle_inclusion,
        )


def test_the_proof_carries_the_cosignatures(logged: AuditStore, log_key: SoftwareLogKey) -> None:
    witness = SoftwareWitness.generate()
    line = witness.cosign(logged, ORIGIN, 11)
    proof = parse_tlog_proof(tlog_proof(logged, ORIGIN, 2))
    assert proof.checkpoint.endswith(line.encode() + b"\n")
    signed = verify_tlog_proof(
        proof,
        leaf_hash=leaf_hash(_leaves(logged)[1]),
        origin=ORIGIN,
        log_key=log_key.key,
        cosigners=[witness.key],
        quorum=1,
        verify_inclusion=merkle_inclusion,
    )
    assert [v.key for v in signed.cosignatures] == [witness.key]


def test_go_verifies_our_inclusion_proofs(
    logged: AuditStore, log_key: SoftwareLogKey, go_proof: Callable[..., list[dict[str, Any]]]
) -> None:
    SoftwareWitness.generate().cosign(logged, ORIGIN, 8)  # Go ignores an unknown cosigner
    leaves = _leaves(logged)
    cases = [(seq, size) for size in SIZES for seq in range(1, size + 1)]
    requests = [
        {
            "op": "inclusion",
            "proof": _b64(tlog_proof(logged, ORIGIN, seq, size)),
            "leaf": _b64(leaves[seq - 1]),
            "vkey": log_key.key.text(),
        }
        for seq, size in cases
    ]
    answers = go_proof(*requests)
    assert answers == [
        {"index": seq - 1, "size": size, "old_size": 0, "origin": ORIGIN} for seq, size in cases
    ]
    # And Go refuses the wrong leaf, a flipped hash and another log's key.
    proof = tlog_proof(logged, ORIGIN, 4, 8)
    head, _, rest = proof.partition(b"\n\n")
    lines = head.split(b"\n")
    flipped = bytearray(base64.b64decode(lines[2]))
    flipped[0] ^= 1
    lines[2] = base64.b64encode(bytes(flipped))
    bad = [
        {"proof": _b64(proof), "leaf": _b64(leaves[4]), "vkey": log_key.key.text()},
        {
            "proof": _b64(b"\n".join(lines) + b"\n\n" + rest),
            "leaf": _b64(leaves[3]),
            "vkey": log_key.key.text(),
        },
        {
            "proof": _b64(proof),
            "leaf": _b64(leaves[3]),
            "vkey": SoftwareLogKey.generate().key.text(),
        },
    ]
    for answer in go_proof(*({"op": "inclusion", **b} for b in bad)):
        assert answer.get("error"), answer


# --- consistency proofs --------------------------------------------------------------------


def test_consistency_from_every_size_to_every_checkpoint(
    logged: AuditStore, log_key: SoftwareLogKey
) -> None:
    for to in SIZES:
        note = logged.checkpoint_at(ORIGIN, to).note
        root = open_checkpoint(note, origin=ORIGIN, log_key=log_key.key).checkpoint.root_hash
        for old in range(1, to + 1):
            proof = consistency(logged, ORIGIN, old, to, log_key=log_key.key)
            assert proof.checkpoint == note
            verify_consistency(old, to, proof.hashes, logged.tree_hash(old), root)
            assert parse_consistency(format_consistency(proof)) == proof
    assert consistency(logged, ORIGIN, 3) == consistency(logged, ORIGIN, 3, 11)


def test_the_consistency_text(logged: AuditStore) -> None:
    proof = consistency(logged, ORIGIN, 3, 8)
    text = format_consistency(proof)
    hashes, _, note = text.partition(b"\n\n")
    assert hashes.split(b"\n") == [base64.b64encode(h) for h in proof.hashes]
    assert note == logged.checkpoint_at(ORIGIN, 8).note
    # From a size to itself: no hash, the text starts with the empty line.
    same = consistency(logged, ORIGIN, 8, 8)
    assert same.hashes == ()
    assert format_consistency(same) == b"\n" + same.checkpoint
    assert parse_consistency(format_consistency(same)) == same


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(b"no empty line", id="no-separator"),
        pytest.param(b"AAAA\n\n", id="short-hash"),
        pytest.param(b"\xff\n\n", id="not-ascii"),
        pytest.param(b"\n" + b"not a note", id="bad-note"),
        pytest.param(("A" * 43 + "=\n") * 127 + "\n", id="too-many"),
    ],
)
def test_parse_consistency_refuses_malformed_text(text: bytes | str) -> None:
    data = text.encode() if isinstance(text, str) else text
    with pytest.raises(NoteFormatError):
        parse_consistency(data)


def test_go_verifies_our_consistency_proofs(
    logged: AuditStore, log_key: SoftwareLogKey, go_proof: Callable[..., list[dict[str, Any]]]
) -> None:
    pairs = [(3, 8), (3, 11), (8, 11), (11, 11), (3, 3)]
    requests = [
        {
            "op": "consistency",
            "proof": _b64(format_consistency(consistency(logged, ORIGIN, old, new))),
            "old": _b64(logged.checkpoint_at(ORIGIN, old).note),
            "vkey": log_key.key.text(),
        }
        for old, new in pairs
    ]
    assert go_proof(*requests) == [
        {"index": 0, "size": new, "old_size": old, "origin": ORIGIN} for old, new in pairs
    ]
    # The proof from 3 to 11 does not prove 8 to 11.
    wrong = {**requests[1], "old": _b64(logged.checkpoint_at(ORIGIN, 8).note)}
    (answer,) = go_proof(wrong)
    assert answer.get("error"), answer


# --- bad requests --------------------------------------------------------------------------

BAD_REQUESTS = [
    # (call, error, status, reason)
    (lambda s: tlog_proof(s, ORIGIN, 0), RequestError, "INVALID_ARGUMENT", "seq must be between 1"),
    (lambda s: tlog_proof(s, ORIGIN, -3), RequestError, "INVALID_ARGUMENT", "between 1 and"),
    (lambda s: tlog_proof(s, ORIGIN, True), RequestError, "INVALID_ARGUMENT", "integer"),
    (lambda s: tlog_proof(s, ORIGIN, 2**63), RequestError, "INVALID_ARGUMENT", "2\\*\\*63-1"),
    (lambda s: tlog_proof(s, ORIGIN, 1, 0), RequestError, "INVALID_ARGUMENT", "tree size must"),
    (
        lambda s: tlog_proof(s, ORIGIN, 12),
        NoCheckpointError,
        "FAILED_PRECONDITION",
        r"record 12 is not covered by a checkpoint yet \(the newest covers 11\); retry after "
        "audit.checkpoint_interval_seconds",
    ),
    (lambda s: tlog_proof(s, ORIGIN, 14), TreeRangeError, "OUT_OF_RANGE", "beyond the log's 13"),
    (lambda s: tlog_proof(s, ORIGIN, 9, 8), TreeRangeError, "OUT_OF_RANGE", "not in the tree of"),
    (lambda s: tlog_proof(s, ORIGIN, 1, 14), TreeRangeError, "OUT_OF_RANGE", "size 14 is beyond"),
    (
        lambda s: tlog_proof(s, ORIGIN, 1, 5),
        NotFoundError,
        "NOT_FOUND",
        r"no checkpoint of tree size 5 is stored \(the newest is of size 11;",
    ),
    (
        lambda s: tlog_proof(s, "other.test/log", 1),
        NoCheckpointError,
        "FAILED_PRECONDITION",
        "'other.test/log' has no checkpoint yet",
    ),
    (lambda s: consistency(s, ORIGIN, 0), RequestError, "INVALID_ARGUMENT", "from size must be"),
    (lambda s: consistency(s, ORIGIN, 1, 0), RequestError, "INVALID_ARGUMENT", "to size must be"),
    (
        lambda s: consistency(s, ORIGIN, 9, 8),
        RequestError,
        "INVALID_ARGUMENT",
        "9 is above to size 8",
    ),
    (
        lambda s: consistency(s, ORIGIN, 12),
        NoCheckpointError,
        "FAILED_PRECONDITION",
        r"tree size 12 is not covered by a checkpoint yet \(the newest is of size 11\)",
    ),
    (lambda s: consistency(s, ORIGIN, 14), TreeRangeError, "OUT_OF_RANGE", "beyond the log's 13"),
    (lambda s: consistency(s, ORIGIN, 1, 14), TreeRangeError, "OUT_OF_RANGE", "beyond the log"),
    (lambda s: consistency(s, ORIGIN, 1, 9), NotFoundError, "NOT_FOUND", "no checkpoint of tree"),
    (lambda s: find_checkpoint(s, ORIGIN, 14), TreeRangeError, "OUT_OF_RANGE", "beyond the log"),
    (lambda s: find_checkpoint(s, ORIGIN, 4), NotFoundError, "NOT_FOUND", "size 4 is stored"),
    (lambda s: find_checkpoint(s, ORIGIN, -1), RequestError, "INVALID_ARGUMENT", "between 0"),
]


@pytest.mark.parametrize(
    ("call", "error", "status", "reason"),
    BAD_REQUESTS,
    ids=[
        "seq-0", "seq-negative", "seq-bool", "seq-2^63", "size-0", "seq-not-yet-covered",
        "seq-beyond-log", "seq-above-size", "size-beyond-log", "size-not-a-checkpoint",
        "other-origin", "from-0", "to-0", "from-above-to", "from-not-yet-covered",
        "from-beyond-log", "to-beyond-log", "to-not-a-checkpoint", "checkpoint-beyond-log",
        "checkpoint-not-stored", "checkpoint-negative",
    ],
)  # fmt: skip
def test_bad_requests_are_refused_with_a_reason(
    logged: AuditStore,
    call: Callable[[AuditStore], object],
    error: type[Exception],
    status: str,
    reason: str,
) -> None:
    with pytest.raises(error, match=reason) as caught:
        call(logged)
    assert caught.value.code == status  # type: ignore[attr-defined]


def test_no_checkpoint_yet(store: AuditStore, make: AuditFactory) -> None:
    store.append([make.note()])
    for call in (
        lambda: tlog_proof(store, ORIGIN, 1),
        lambda: consistency(store, ORIGIN, 1),
        lambda: find_checkpoint(store, ORIGIN),
    ):
        with pytest.raises(NoCheckpointError, match="has no checkpoint yet; retry after"):
            call()
    with pytest.raises(NotFoundError, match=r"\(none is stored yet;"):
        tlog_proof(store, ORIGIN, 1, 1)


# --- a store that no longer matches what the audit key signed ---------------------------------


def _forged(store: AuditStore, key: SoftwareLogKey, size: int, root: bytes) -> None:
    note = sign_checkpoint(Checkpoint(ORIGIN, size, root), key.key, key.private.sign).format()
    store.add_checkpoint(ORIGIN, size, note, "2025-01-01T00:00:00Z")


def test_a_checkpoint_of_another_tree_gives_no_proof(
    logged: AuditStore, log_key: SoftwareLogKey
) -> None:
    # A forked or restored store: the audit key signed a root this tree does not have.
    _forged(logged, log_key, 12, logged.tree_hash(11))
    for call in (
        lambda: tlog_proof(logged, ORIGIN, 1),
        lambda: consistency(logged, ORIGIN, 3),
        lambda: find_checkpoint(logged, ORIGIN),
    ):
        with pytest.raises(AuditChainError, match="size 12 does not match the store: its root"):
            call()
    # The older checkpoints still prove what they cover.
    assert tlog_proof(logged, ORIGIN, 1, 11)


def test_a_checkpoint_by_another_key_gives_no_proof(
    logged: AuditStore, log_key: SoftwareLogKey
) -> None:
    _forged(logged, SoftwareLogKey.generate(), 12, logged.tree_hash(12))
    assert tlog_proof(logged, ORIGIN, 1)  # no key given: the root matches
    with pytest.raises(AuditChainError, match=r"size 12 does not match the store: .*not signed by"):
        tlog_proof(logged, ORIGIN, 1, log_key=log_key.key)


def test_consistency_is_a_named_tuple(logged: AuditStore) -> None:
    hashes, note = consistency(logged, ORIGIN, 3, 8)
    assert Consistency(hashes, note) == consistency(logged, ORIGIN, 3, 8)


def test_an_edited_tree_hash_on_the_path_gives_no_proof(
    tmp_path: Any, make: AuditFactory, log_key: SoftwareLogKey
) -> None:
    # Leaf 1's stored hash is on record 1's path but not under the root's own
    # reads (the complete subtree of leaves 0..7 is stored whole): only the
    # check of the path against the signed root sees the edit.
    import sqlite3

    from tuf_signer.audit import SqliteAuditStore

    with SqliteAuditStore(tmp_path / "audit.db") as store:
        store.append([make.note(detail={"i": i}) for i in range(11)])
        log_key.checkpoint(store)
        assert tlog_proof(store, ORIGIN, 1)
    conn = sqlite3.connect(tmp_path / "audit.db")
    conn.execute("UPDATE audit_tree SET hash = ? WHERE level = 0 AND idx = 1", ("ab" * 32,))
    conn.execute("DELETE FROM audit_tree WHERE level = 0 AND idx = 9")
    conn.commit()
    conn.close()
    with SqliteAuditStore(tmp_path / "audit.db") as store:
        with pytest.raises(
            AuditChainError, match="size 11 does not match the store: the inclusion"
        ):
            tlog_proof(store, ORIGIN, 1)
        with pytest.raises(AuditChainError, match="the tree hash of record 10 is missing"):
            tlog_proof(store, ORIGIN, 10)
        assert tlog_proof(store, ORIGIN, 5)  # a path that avoids both
