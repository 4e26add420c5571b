"""The Merkle tree the stores keep (issue 13, P5): run against every store (conftest.py).

The reference is the pure ``_merkle`` module over the lines ``audit export``
prints; Go's ``sumdb/tlog`` checks the stored hashes and the store's proofs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tuf_signer.audit import AuditStore, verify_store
from tuf_signer.audit._chain import chain
from tuf_signer.audit._merkle import (
    EMPTY_ROOT,
    LeafHashes,
    MemoryHashes,
    TreeRangeError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    tree_hash,
    verify_consistency,
    verify_inclusion,
)
from tuf_signer.audit._sql import SqlAuditStore
from tuf_signer.audit._store import GENESIS_HASH
from tuf_signer.audit._tree import Frontier, chain_with_leaf, frontier_nodes, record_leaf
from tuf_signer.cli import _main
from tuf_signer.errors import AuditChainError, RequestError, StoreError
from tuf_signer.model import KeyState, Outcome

if TYPE_CHECKING:
    from conftest import AuditFactory


def _exported(
    open_store: Callable[[], AuditStore], monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> list[bytes]:
    """The lines ``tuf-signer audit export`` prints, as bytes, from the command's own code."""
    monkeypatch.setattr(_main, "_open_store", lambda config: open_store())
    capsys.readouterr()
    assert _main.cmd_audit_export(argparse.Namespace(config="unused", start=1)) == 0
    out: str = capsys.readouterr().out
    return [line.encode("utf-8") for line in out.splitlines()]


def _assert_tree_is_the_export(store: AuditStore, leaves: Sequence[bytes]) -> None:
    """The stored tree is exactly the RFC 6962 tree over ``leaves``."""
    assert [record_leaf(r) for r in store.records()] == list(leaves)
    memory = MemoryHashes()
    for leaf in leaves:
        memory.append(leaf_hash(leaf))
    stored = store.stored_hashes(0)
    assert [(s.node, s.hash) for s in stored] == sorted(memory.hashes.items())
    reference = LeafHashes(leaf_hash(leaf) for leaf in leaves)
    assert store.tree_size() == len(leaves)
    assert store.tree_hash() == tree_hash(len(leaves), reference)
    for size in range(len(leaves) + 1):
        assert store.tree_hash(size) == tree_hash(size, reference)


def _scenario_single(store: AuditStore, make: AuditFactory) -> None:
    for i in range(9):
        store.append([make.note(detail={"i": i, "ü": "😀"})])


def _scenario_batches(store: AuditStore, make: AuditFactory) -> None:
    for size in (1, 2, 3, 5, 8, 13):
        store.append([make.note(detail={"n": size}) for _ in range(size)])


def _scenario_refusals(store: AuditStore, make: AuditFactory) -> None:
    store.append([make.create_key(), make.sign(2)])
    out = store.append([make.sign(1), make.sign(2, "other"), make.create_key(), make.sign(3)])
    assert [c.status for c in out] == ["FAILED_PRECONDITION"] * 2 + ["ALREADY_EXISTS", "OK"]
    store.append([make.note(outcome=Outcome.REFUSED, status="PERMISSION_DENIED", reason="no")])


def _scenario_key_changes(store: AuditStore, make: AuditFactory) -> None:
    # Key changes flush the batch's pending writes in the middle of it.
    store.append(
        [
            make.create_key(),
            make.sign(1),
            make.add_version(),
            make.sign(2),
            make.set_state(),
            make.sign(3, key_version=2),
            make.set_state(version=1, state=KeyState.RETIRED),
        ]
    )
    store.append([make.reset(1, key_version=2), make.sign(2, "x", key_version=2)])


def _scenario_more_than_a_page(store: AuditStore, make: AuditFactory) -> None:
    store.append([make.note(detail={"i": i}) for i in range(1030)])
    store.append([make.note()])


SCENARIOS = [
    pytest.param(_scenario_single, id="single-appends"),
    pytest.param(_scenario_batches, id="batches"),
    pytest.param(_scenario_refusals, id="refusals"),
    pytest.param(_scenario_key_changes, id="key-changes"),
    pytest.param(_scenario_more_than_a_page, id="more-than-a-page"),
]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_stored_tree_is_the_tree_of_the_exported_lines(
    store: AuditStore,
    open_store: Callable[[], AuditStore],
    make: AuditFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
    scenario: Callable[[AuditStore, AuditFactory], None],
) -> None:
    scenario(store, make)
    _assert_tree_is_the_export(store, _exported(open_store, monkeypatch, capsys))
    verify_store(store)


def test_an_empty_store_has_the_empty_tree(store: AuditStore) -> None:
    assert store.tree_size() == 0
    assert store.tree_hash() == store.tree_hash(0) == EMPTY_ROOT
    assert store.stored_hashes(0) == []
    assert store.consistency_proof(0) == ()


def test_concurrent_appends_from_several_connections(
    open_store: Callable[[], AuditStore], make: AuditFactory
) -> None:
    stores = [open_store() for _ in range(4)]
    errors: list[BaseException] = []

    def writer(store: AuditStore, n: int) -> None:
        try:
            for i in range(15):
                store.append([make.note(detail={"w": n, "i": i}) for _ in range(1 + i % 3)])
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(s, n)) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert stores[0].tree_size() == 4 * (5 * 1 + 5 * 2 + 5 * 3)
    _assert_tree_is_the_export(stores[1], [record_leaf(r) for r in stores[2].records()])
    verify_store(stores[3])


# --- proofs ------------------------------------------------------------------------------

N = 23


@pytest.fixture
def filled(store: AuditStore, make: AuditFactory) -> tuple[AuditStore, list[bytes]]:
    """A store of N records written in uneven batches, and their leaves."""
    done = 0
    while done < N:
        batch = min(N - done, done % 4 + 1)
        store.append([make.note(detail={"i": done + i}) for i in range(batch)])
        done += batch
    return store, [record_leaf(r) for r in store.records()]


def test_every_proof_verifies(filled: tuple[AuditStore, list[bytes]]) -> None:
    store, leaves = filled
    reference = LeafHashes(leaf_hash(leaf) for leaf in leaves)
    roots = [store.tree_hash(size) for size in range(N + 1)]
    for size in range(1, N + 1):
        for seq in range(1, size + 1):
            proof = store.inclusion_proof(seq, size)
            assert proof == inclusion_proof(seq - 1, size, reference)
            verify_inclusion(leaf_hash(leaves[seq - 1]), seq - 1, size, proof, roots[size])
        for old in range(size + 1):
            proof = store.consistency_proof(old, size)
            assert proof == consistency_proof(old, size, reference)
            verify_consistency(old, size, proof, roots[old], roots[size])
    assert store.inclusion_proof(N) == store.inclusion_proof(N, N)
    assert store.consistency_proof(5) == store.consistency_proof(5, N)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        pytest.param(lambda s: s.tree_hash(N + 1), TreeRangeError, "beyond", id="root-beyond"),
        pytest.param(lambda s: s.tree_hash(-1), RequestError, "between", id="root-negative"),
        pytest.param(lambda s: s.tree_hash("1"), RequestError, "integer", id="root-not-int"),
        pytest.param(lambda s: s.inclusion_proof(0), TreeRangeError, "start at", id="seq-0"),
        pytest.param(lambda s: s.inclusion_proof(N + 1), TreeRangeError, "not in", id="seq-past"),
        pytest.param(lambda s: s.inclusion_proof(5, 4), TreeRangeError, "not in", id="seq>size"),
        pytest.param(lambda s: s.inclusion_proof(1, 0), TreeRangeError, "not in", id="size-0"),
        pytest.param(lambda s: s.inclusion_proof(1, N + 1), TreeRangeError, "beyond", id="size>"),
        pytest.param(lambda s: s.inclusion_proof(True), RequestError, "integer", id="seq-bool"),
        pytest.param(lambda s: s.consistency_proof(5, 4), RequestError, "above", id="old>new"),
        pytest.param(lambda s: s.consistency_proof(N + 1), RequestError, "above", id="old>head"),
        pytest.param(lambda s: s.consistency_proof(1, N + 1), TreeRangeError, "beyond", id="new>"),
        pytest.param(lambda s: s.consistency_proof(-1), RequestError, "between", id="old<0"),
    ],
)
def test_bad_proof_requests_are_refused(
    filled: tuple[AuditStore, list[bytes]],
    call: Callable[[AuditStore], object],
    error: type[Exception],
    match: str,
) -> None:
    with pytest.raises(error, match=match):
        call(filled[0])


# --- the hot path: one SELECT and one INSERT of the tree per batch ---------------------------


def test_one_tree_select_and_one_tree_insert_per_batch(tmp_path: Path, make: AuditFactory) -> None:
    from tuf_signer.audit import SqliteAuditStore

    with SqliteAuditStore(tmp_path / "audit.db") as store:
        store.append([make.note() for _ in range(7)])
        statements: list[str] = []
        store._sqlite_connection().set_trace_callback(statements.append)
        store.append([make.note() for _ in range(9)])  # sizes 7..15: many left siblings
        tree = [s.split()[0] for s in statements if "audit_tree" in s]
        # executemany traces each row's INSERT; the SELECT is one statement.
        assert tree == ["SELECT"] + ["INSERT"] * len(store.stored_hashes(7, 16))


# --- failures leave nothing behind ------------------------------------------------------------


def test_a_rolled_back_append_leaves_no_hashes(store: AuditStore, make: AuditFactory) -> None:
    assert isinstance(store, SqlAuditStore)
    store.append([make.note() for _ in range(3)])
    before = store.stored_hashes(0)

    def fail() -> None:
        raise StoreError("the disk is full")

    store._check_before_commit = fail  # type: ignore[method-assign]
    with pytest.raises(StoreError, match="disk is full"):
        store.append([make.note() for _ in range(5)])
    del store._check_before_commit
    assert store.stored_hashes(0) == before
    assert store.tree_size() == 3
    store.append([make.note() for _ in range(5)])  # the same leaf positions again
    assert store.tree_size() == 8
    verify_store(store)


def _execute(store: AuditStore, *sql: str) -> None:
    """Run ``sql`` on the store's own connection, outside the store: a tamperer."""
    assert isinstance(store, SqlAuditStore)
    conn = store._connection()
    cur = conn.cursor()
    for stmt in sql:
        cur.execute(stmt)
    conn.commit()
    cur.close()


def test_a_missing_frontier_hash_stops_appends(store: AuditStore, make: AuditFactory) -> None:
    store.append([make.note() for _ in range(6)])  # frontier: (2, 0), (1, 2)
    _execute(store, "DELETE FROM audit_tree WHERE level = 1 AND idx = 2")
    with pytest.raises(StoreError, match="no tree hash at level 1, index 2"):
        store.append([make.note()])
    assert store.tree_size() == 6


# --- audit verify -------------------------------------------------------------------------------

TAMPER = [
    pytest.param(
        "UPDATE audit_tree SET hash = '{zero}' WHERE level = 0 AND idx = 3",
        r"^Merkle tree: the hash at level 0, index 3 does not match the records \(edited\?\)$",
        4,
        id="edit-leaf-hash",
    ),
    pytest.param(
        "UPDATE audit_tree SET hash = '{zero}' WHERE level = 2 AND idx = 1",
        r"^Merkle tree: the hash at level 2, index 1 does not match the records \(edited\?\)$",
        8,
        id="edit-subtree-hash",
    ),
    pytest.param(
        "UPDATE audit_tree SET hash = '{zero}' WHERE level = 10 AND idx = 1",
        r"^Merkle tree: the hash at level 10, index 1 does not match the records",
        2048,
        id="edit-in-a-later-chunk",
    ),
    pytest.param(
        "DELETE FROM audit_tree WHERE level = 1 AND idx = 900",
        r"^Merkle tree: the hash at level 1, index 900 is missing \(deleted\?\)$",
        1802,
        id="delete-hash",
    ),
    pytest.param(
        "INSERT INTO audit_tree (level, idx, hash) VALUES (2, 525, '{zero}')",
        r"^Merkle tree: a hash is stored at level 2, index 525 but the log ends at record 2100 ",
        2101,
        id="insert-hash-beyond",
    ),
    pytest.param(
        "DELETE FROM audit_log WHERE seq = 2100",
        r"^Merkle tree: a hash is stored at level 0, index 2099 but the log ends at record 2099 "
        r"\(records deleted from the end\?\)$",
        2100,
        id="delete-last-record",
    ),
    pytest.param(
        "UPDATE audit_tree SET hash = 'not hex' WHERE level = 0 AND idx = 0",
        r"unreadable tree hash at level 0, index 0",
        None,
        id="garbage-hash",
    ),
]


@pytest.mark.parametrize(("sql", "match", "seq"), TAMPER)
def test_verify_names_the_bad_tree_hash(
    store: AuditStore, make: AuditFactory, sql: str, match: str, seq: int | None
) -> None:
    store.append([make.note(detail={"i": i}) for i in range(2100)])
    verify_store(store)
    _execute(store, sql.format(zero="00" * 32))
    with pytest.raises((AuditChainError, StoreError), match=match) as caught:
        verify_store(store)
    if seq is not None:
        assert isinstance(caught.value, AuditChainError)
        assert caught.value.seq == seq


# --- migration from schema version 2 ------------------------------------------------------------


def _as_version_2(store: AuditStore) -> None:
    _execute(store, "DROP TABLE audit_tree", "UPDATE schema_version SET version = 2")


def test_a_version_2_store_gets_its_tree(
    open_store: Callable[[], AuditStore], make: AuditFactory
) -> None:
    store = open_store()
    _scenario_key_changes(store, make)
    store.append([make.note(detail={"i": i}) for i in range(1010)])  # more than a page
    expected = store.stored_hashes(0)
    root = store.tree_hash()
    _as_version_2(store)
    store.close()
    migrated = open_store()
    assert migrated.stored_hashes(0) == expected
    assert migrated.tree_hash() == root
    _assert_tree_is_the_export(migrated, [record_leaf(r) for r in migrated.records()])
    migrated.append([make.note()])
    verify_store(migrated)


def test_a_version_2_store_with_a_gap_is_not_migrated(
    open_store: Callable[[], AuditStore], make: AuditFactory
) -> None:
    store = open_store()
    store.append([make.note() for _ in range(5)])
    _as_version_2(store)
    _execute(store, "DELETE FROM audit_log WHERE seq = 3")
    store.close()
    with pytest.raises(StoreError, match=r"version 2 must be migrated.*record 3 is missing"):
        open_store()
    with pytest.raises(StoreError, match="version 2 must be migrated"):  # still version 2
        open_store()


# --- cross-check with Go's golang.org/x/mod/sumdb/tlog ------------------------------------------

# The Go checker (``go_checker``) is built by tests/audit/conftest.py.


def test_go_tlog_agrees_with_the_store(
    go_checker: Path, filled: tuple[AuditStore, list[bytes]]
) -> None:
    store, leaves = filled
    # The hashes each append stored, in the order tlog.StoredHashes returns them.
    stored = [
        [
            {"level": s.node.level, "index": s.node.index, "hash": s.hash.hex()}
            for s in store.stored_hashes(n, n + 1)
        ]
        for n in range(N)
    ]
    roots = [store.tree_hash(size) for size in range(N + 1)]
    inclusion, consistency = [], []
    for size in range(1, N + 1):
        for seq in (1, (size + 1) // 2, size):
            proof = [h.hex() for h in store.inclusion_proof(seq, size)]
            inclusion.append(
                {
                    "index": seq - 1,
                    "size": size,
                    "leaf": leaf_hash(leaves[seq - 1]).hex(),
                    "root": roots[size].hex(),
                    "proof": proof,
                }
            )
        for old in (1, (size + 1) // 2, size):
            proof = [h.hex() for h in store.consistency_proof(old, size)]
            consistency.append(
                {
                    "index": old,
                    "size": size,
                    "old": roots[old].hex(),
                    "root": roots[size].hex(),
                    "proof": proof,
                }
            )
    case = {
        "leaves": [leaf.hex() for leaf in leaves],
        "stored": stored,
        "inclusion": inclusion,
        "consistency": consistency,
    }
    out = subprocess.run(
        [str(go_checker)], input=json.dumps(case).encode(), capture_output=True, timeout=60
    )
    assert out.returncode == 0, out.stderr.decode()
    result = json.loads(out.stdout)
    assert result["stored_problems"] == []
    assert result["tree_hashes"] == [r.hex() for r in roots[1:]]
    assert result["inclusion"] == [""] * len(inclusion)
    assert result["consistency"] == [""] * len(consistency)
    assert result["go_inclusion"] == [c["proof"] for c in inclusion]
    assert result["go_consistency"] == [c["proof"] for c in consistency]


def test_the_leaf_is_ascii_and_one_line(store: AuditStore, make: AuditFactory) -> None:
    store.append([make.note(detail={"s": "a\nb\u2028é😀\x00"}, reason="x\ny")])
    (record,) = store.records()
    leaf = record_leaf(record)
    assert leaf.isascii() and b"\n" not in leaf
    assert json.loads(leaf)["event"]["detail"] == {"s": "a\nb\u2028é😀\x00"}


def test_the_writer_path_chains_and_leaves_as_the_readers_do(
    store: AuditStore, make: AuditFactory
) -> None:
    # The writer builds the record and its leaf from one event object
    # (chain_with_leaf); export, proofs and verify use chain and record_leaf.
    store.append([make.note(detail={"s": "é\n", "n": [1, None, True]}, reason="r")])
    store.append([make.note(outcome=Outcome.REFUSED, reason="refused: x")])
    for stored in store.records():
        record, leaf = chain_with_leaf(stored.prev_hash, stored.seq, stored.event)
        assert record == chain(stored.prev_hash, stored.seq, stored.event) == stored
        assert leaf == record_leaf(stored)
    with pytest.raises(ValueError, match="floating-point"):
        chain_with_leaf(GENESIS_HASH, 1, make.note(detail={"f": 1.5}).event)


def test_the_frontier_keeps_only_what_later_appends_need() -> None:
    # Migration and verify_store append millions of leaves: memory must stay O(log n).
    frontier, leaves = Frontier(), [b"%d" % i for i in range(1000)]
    for leaf in leaves:
        frontier.append(leaf)
    assert sorted(frontier.read_hashes(frontier_nodes(1000))) == sorted(frontier._hashes.values())
    reference = LeafHashes(leaf_hash(leaf) for leaf in leaves)
    assert tree_hash(1000, frontier) == tree_hash(1000, reference)
