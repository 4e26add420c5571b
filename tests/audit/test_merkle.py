"""The RFC 6962 Merkle tree: test vectors, a reference built from the RFC's
definitions, property tests, bad input, and a cross-check with Go's sumdb/tlog."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuf_signer.audit._merkle import (
    EMPTY_ROOT,
    HashReader,
    LeafHashes,
    MemoryHashes,
    Node,
    ProofError,
    TreeRangeError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    stored_hashes_for_append,
    tree_hash,
    verify_consistency,
    verify_inclusion,
)
from tuf_signer.errors import RequestError, StoreError

# --- the certificate-transparency test data (RFC 6962 implementations share it) ---------
# Leaves, roots and proofs as in transparency-dev/merkle testonly/constants.go,
# proof/verify_test.go and the consistency proofs of the CT C++ merkle_tree_test.

CT_LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",  # size 0
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# Interior hashes of the 8-leaf tree, named by the leaves they cover.
H1 = "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"  # leaf 1
H4 = "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"  # leaf 4
H23 = "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"  # MTH(D[2:4])
H45 = "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"  # MTH(D[4:6])
H67 = "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"  # MTH(D[6:8])
H4567 = "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"  # MTH(D[4:8])
CT_INCLUSION = [  # (index, size, audit path); CT_ROOTS[n] is MTH(D[0:n])
    (0, 1, []),
    (0, 2, [H1]),
    (1, 2, [CT_ROOTS[1]]),
    (2, 3, [CT_ROOTS[2]]),
    (1, 5, [CT_ROOTS[1], H23, H4]),
    (0, 8, [H1, H23, H4567]),
    (5, 8, [H4, H67, CT_ROOTS[4]]),
]
CT_CONSISTENCY = [  # (old size, new size, proof)
    (1, 1, []),
    (1, 8, [H1, H23, H4567]),
    (6, 8, [H45, H67, CT_ROOTS[4]]),
    (2, 5, [H23, H4]),
]


def _readers(leaves: Sequence[bytes]) -> list[HashReader]:
    """Both in-memory forms: the plain leaf list and the stored-hash store."""
    memory = MemoryHashes()
    for data in leaves:
        memory.append(leaf_hash(data))
    return [LeafHashes(leaf_hash(d) for d in leaves), memory]


CT_READERS = _readers(CT_LEAVES)
READER_IDS = ["leaf-list", "stored-hashes"]


@pytest.mark.parametrize(
    ("value", "want"),
    [
        pytest.param(EMPTY_ROOT, CT_ROOTS[0], id="empty-tree"),
        pytest.param(leaf_hash(b""), CT_ROOTS[1], id="empty-leaf"),
        pytest.param(
            leaf_hash(b"L123456"),
            "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56",
            id="leaf",
        ),
        pytest.param(
            node_hash(b"N123", b"N456"),
            "aa217fe888e47007fa15edab33c2b492a722cb106c64667fc2b044444de66bbb",
            id="node",
        ),
    ],
)
def test_hashes_match_the_rfc6962_vectors(value: bytes, want: str) -> None:
    assert value.hex() == want


@pytest.mark.parametrize("reader", CT_READERS, ids=READER_IDS)
@pytest.mark.parametrize("size", range(9))
def test_tree_hash_matches_the_vectors(reader: HashReader, size: int) -> None:
    assert tree_hash(size, reader).hex() == CT_ROOTS[size]


@pytest.mark.parametrize("reader", CT_READERS, ids=READER_IDS)
@pytest.mark.parametrize(
    ("index", "size", "path"), CT_INCLUSION, ids=[f"{i}-of-{n}" for i, n, _ in CT_INCLUSION]
)
def test_inclusion_proof_matches_the_vectors(
    reader: HashReader, index: int, size: int, path: list[str]
) -> None:
    proof = inclusion_proof(index, size, reader)
    assert [h.hex() for h in proof] == path
    root = bytes.fromhex(CT_ROOTS[size])
    verify_inclusion(leaf_hash(CT_LEAVES[index]), index, size, proof, root)


@pytest.mark.parametrize("reader", CT_READERS, ids=READER_IDS)
@pytest.mark.parametrize(
    ("old", "new", "path"), CT_CONSISTENCY, ids=[f"{m}-to-{n}" for m, n, _ in CT_CONSISTENCY]
)
def test_consistency_proof_matches_the_vectors(
    reader: HashReader, old: int, new: int, path: list[str]
) -> None:
    proof = consistency_proof(old, new, reader)
    assert [h.hex() for h in proof] == path
    old_root, new_root = bytes.fromhex(CT_ROOTS[old]), bytes.fromhex(CT_ROOTS[new])
    verify_consistency(old, new, proof, old_root, new_root)


def test_the_size_is_bound_by_the_checkpoint_not_the_proof() -> None:
    # RFC 9162 §2.1.3.2 binds the leaf and index to a root, not the size: leaf 0's
    # path in the 6-leaf tree also checks as a 7-leaf tree with the same root, in
    # every RFC verifier (Go's too). Only the signed checkpoint pairs size and root.
    reader = CT_READERS[1]
    root6 = tree_hash(6, reader)
    proof = inclusion_proof(0, 6, reader)
    verify_inclusion(leaf_hash(CT_LEAVES[0]), 0, 7, proof, root6)
    with pytest.raises(ProofError, match="too short"):
        verify_inclusion(leaf_hash(CT_LEAVES[0]), 0, 9, proof, root6)


# --- a reference written from the RFC 6962 §2.1 definitions, recursion and all --------


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(leaves: Sequence[bytes]) -> bytes:
    """MTH(D[n]) exactly as RFC 6962 §2.1 defines it."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = _k(len(leaves))
    return hashlib.sha256(b"\x01" + ref_mth(leaves[:k]) + ref_mth(leaves[k:])).digest()


def ref_path(m: int, lo: int, hi: int) -> list[tuple[int, int]]:
    """PATH(m, D[lo:hi]) of RFC 6962 §2.1.1, as the leaf ranges whose MTH it lists."""
    if hi - lo == 1:
        return []
    k = _k(hi - lo)
    if m < k:
        return [*ref_path(m, lo, lo + k), (lo + k, hi)]
    return [*ref_path(m - k, lo + k, hi), (lo, lo + k)]


def ref_subproof(m: int, lo: int, hi: int, b: bool) -> list[tuple[int, int]]:
    """SUBPROOF(m, D[lo:hi], b) of RFC 6962 §2.1.2, as leaf ranges."""
    if m == hi - lo:
        return [] if b else [(lo, hi)]
    k = _k(hi - lo)
    if m <= k:
        return [*ref_subproof(m, lo, lo + k, b), (lo + k, hi)]
    return [*ref_subproof(m - k, lo + k, hi, False), (lo, lo + k)]


def _data(n: int, salt: int = 0) -> list[bytes]:
    return [f"record {salt}/{i}".encode() for i in range(n)]  # distinct leaves


def _hashes(leaves: Sequence[bytes], ranges: Sequence[tuple[int, int]]) -> list[bytes]:
    return [ref_mth(leaves[lo:hi]) for lo, hi in ranges]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 200), data=st.data())
def test_everything_matches_the_reference(n: int, data: st.DataObject) -> None:
    leaves = _data(n)
    for reader in _readers(leaves):
        sizes = data.draw(st.lists(st.integers(1, n), min_size=1, max_size=4), label="sizes")
        for size in sizes:
            root = ref_mth(leaves[:size])
            assert tree_hash(size, reader) == root
            index = data.draw(st.integers(0, size - 1), label="index")
            proof = inclusion_proof(index, size, reader)
            assert list(proof) == _hashes(leaves, ref_path(index, 0, size))
            verify_inclusion(leaf_hash(leaves[index]), index, size, proof, root)
            old = data.draw(st.integers(0, size), label="old")
            proof = consistency_proof(old, size, reader)
            want = [] if old in (0, size) else _hashes(leaves, ref_subproof(old, 0, size, True))
            assert list(proof) == want
            verify_consistency(old, size, proof, ref_mth(leaves[:old]), root)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 300))
def test_stored_hashes_are_exactly_the_complete_subtrees(n: int) -> None:
    leaves = _data(n)
    memory = MemoryHashes()
    for i, data in enumerate(leaves):
        stored = memory.append(leaf_hash(data))
        # Go's tlog stores 1 + trailing ones of the index; the last one is the
        # biggest subtree the new leaf completes.
        assert len(stored) == 1 + (len(bin(i)) - len(bin(i).rstrip("1")))
        top = stored[-1].node
        assert (top.index + 1) << top.level == i + 1
    complete = {
        Node(level, index) for level in range(n.bit_length()) for index in range(n >> level)
    }
    assert set(memory.hashes) == complete
    assert len(memory.hashes) == 2 * n - bin(n).count("1")
    for node, value in memory.hashes.items():
        lo = node.index << node.level
        assert value == ref_mth(leaves[lo : lo + (1 << node.level)])


# --- single-bit changes -----------------------------------------------------------------

Expr = Any  # a proof position (int), an atom ("LEAF", "OLD") or a pair of Exprs


def _sym(lo: int, hi: int, known: dict[tuple[int, int], Expr]) -> Expr:
    """MTH(D[lo:hi]) as an expression over the hashes a proof gives (RFC 6962 §2.1)."""
    if (lo, hi) in known:
        return known[(lo, hi)]
    if hi - lo <= 1:
        return None  # a leaf the proof does not give: nothing to compute it from
    k = _k(hi - lo)
    left, right = _sym(lo, lo + k, known), _sym(lo + k, hi, known)
    return None if left is None or right is None else (left, right)


def _inclusion_shape(index: int, size: int, length: int) -> Expr:
    """What an RFC verifier computes from a proof of ``length`` hashes, or None if it must fail."""
    if not 0 <= index < size < 2**64:
        return None
    ranges = ref_path(index, 0, size)
    if len(ranges) != length:
        return None
    known: dict[tuple[int, int], Expr] = {r: j for j, r in enumerate(ranges)}
    known[(index, index + 1)] = "LEAF"
    return _sym(0, size, known)


def _consistency_shape(old: int, new: int, length: int) -> tuple[Expr, Expr] | None:
    if not 0 < old < new < 2**64:
        return None
    ranges = ref_subproof(old, 0, new, True)
    if len(ranges) != length:
        return None
    known: dict[tuple[int, int], Expr] = {r: j for j, r in enumerate(ranges)}
    if old & (old - 1) == 0:
        known[(0, old)] = "OLD"  # RFC 9162 §2.1.4.2 step 2: the verifier's old root
    return _sym(0, old, known), _sym(0, new, known)


def _substitute(expr: Expr, atom: str, value: Expr) -> Expr:
    if expr == atom:
        return value
    if isinstance(expr, tuple):
        return tuple(_substitute(e, atom, value) for e in expr)
    return expr


def _flip(value: bytes, bit: int) -> bytes:
    bit %= len(value) * 8
    changed = bytearray(value)
    changed[bit // 8] ^= 1 << (bit % 8)
    return bytes(changed)


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(1, 130),
    data=st.data(),
    target=st.sampled_from(["leaf", "root", "proof", "index", "size"]),
    bit=st.integers(0, 255),
)
def test_inclusion_fails_on_any_single_bit_change(
    n: int, data: st.DataObject, target: str, bit: int
) -> None:
    leaves = _data(n)
    reader = LeafHashes(leaf_hash(d) for d in leaves)
    index = data.draw(st.integers(0, n - 1), label="index")
    leaf, root = leaf_hash(leaves[index]), tree_hash(n, reader)
    proof = list(inclusion_proof(index, n, reader))
    args: dict[str, Any] = {"leaf": leaf, "index": index, "size": n, "proof": proof, "root": root}
    if target in ("leaf", "root"):
        args[target] = _flip(args[target], bit)
        should_pass = False
    elif target == "proof":
        if not proof:
            return
        at = data.draw(st.integers(0, len(proof) - 1), label="at")
        args["proof"] = [*proof[:at], _flip(proof[at], bit), *proof[at + 1 :]]
        should_pass = False
    else:
        args[target] ^= 1 << (bit % 64)
        # A changed index or size may still describe the same hashing steps (see
        # test_the_size_is_bound_by_the_checkpoint_not_the_proof); the RFC 6962
        # reference says exactly when.
        changed = _inclusion_shape(args["index"], args["size"], len(proof))
        should_pass = changed is not None and changed == _inclusion_shape(index, n, len(proof))
    if should_pass:
        verify_inclusion(**args)
    else:
        with pytest.raises(ProofError):
            verify_inclusion(**args)


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(2, 130),
    data=st.data(),
    target=st.sampled_from(["old_root", "new_root", "proof", "old_size", "new_size"]),
    bit=st.integers(0, 255),
)
def test_consistency_fails_on_any_single_bit_change(
    n: int, data: st.DataObject, target: str, bit: int
) -> None:
    leaves = _data(n)
    reader = LeafHashes(leaf_hash(d) for d in leaves)
    old = data.draw(st.integers(1, n - 1), label="old")
    proof = list(consistency_proof(old, n, reader))
    args: dict[str, Any] = {
        "old_size": old,
        "new_size": n,
        "proof": proof,
        "old_root": tree_hash(old, reader),
        "new_root": tree_hash(n, reader),
    }
    should_pass = False
    if target in ("old_root", "new_root"):
        args[target] = _flip(args[target], bit)
    elif target == "proof":
        at = data.draw(st.integers(0, len(proof) - 1), label="at")
        args["proof"] = [*proof[:at], _flip(proof[at], bit), *proof[at + 1 :]]
    else:
        args[target] ^= 1 << (bit % 64)
        was = _consistency_shape(old, n, len(proof))
        now = _consistency_shape(args["old_size"], args["new_size"], len(proof))
        assert was is not None
        if now is not None:
            # "OLD" is the old root the caller passes, whatever size it claims.
            real_old = was[0]
            should_pass = (
                _substitute(now[0], "OLD", real_old) == real_old
                and _substitute(now[1], "OLD", real_old) == was[1]
            )
    if should_pass:
        verify_consistency(**args)
    else:
        with pytest.raises(ProofError):
            verify_consistency(**args)


# --- bad input -----------------------------------------------------------------------------

R8 = CT_READERS[1]
ROOT8, ROOT6 = tree_hash(8, R8), tree_hash(6, R8)
LEAF5 = leaf_hash(CT_LEAVES[5])
PATH5 = list(inclusion_proof(5, 8, R8))
CONS68 = list(consistency_proof(6, 8, R8))
JUNK = b"\x42" * 32


# fmt: off
BAD_INPUT: list[tuple[str, Callable[..., object], tuple[Any, ...], type[Exception], str]] = [
    # generation: a request beyond the tree (the store's caller maps these)
    ("prove-index-eq-size", inclusion_proof, (8, 8, R8),
     TreeRangeError, "leaf index 8 is not in a tree of size 8"),
    ("prove-size-0", inclusion_proof, (0, 0, R8),
     TreeRangeError, "not in a tree of size 0"),
    ("prove-negative-index", inclusion_proof, (-1, 8, R8),
     RequestError, "leaf index -1 is not between"),
    ("prove-bool-index", inclusion_proof, (True, 8, R8),
     RequestError, "must be an integer"),
    ("prove-size-2**64", inclusion_proof, (0, 2**64, R8),
     RequestError, "tree size .* not between"),
    ("prove-from-gt-to", consistency_proof, (8, 6, R8),
     RequestError, "old tree size 8 is above the new tree size 6"),
    ("tree-hash-negative", tree_hash, (-1, R8),
     RequestError, "tree size -1"),
    ("tree-hash-beyond-store", tree_hash, (9, R8),
     StoreError, "no stored hash"),
    ("append-short-hash", stored_hashes_for_append, (8, b"short", R8),
     RequestError, "32 bytes"),
    ("append-full", stored_hashes_for_append, (2**64 - 1, JUNK, R8),
     RequestError, "full"),
    # inclusion verification (RFC 9162 §2.1.3.2)
    ("verify-index-eq-size", verify_inclusion, (LEAF5, 8, 8, PATH5, ROOT8),
     ProofError, "leaf index 8 is not in a tree of size 8"),
    ("verify-size-0", verify_inclusion, (LEAF5, 0, 0, [], EMPTY_ROOT),
     ProofError, "not in a tree of size 0"),
    ("verify-path-too-long", verify_inclusion, (LEAF5, 5, 8, [*PATH5, JUNK], ROOT8),
     ProofError, "too long"),
    ("verify-path-too-short", verify_inclusion, (LEAF5, 5, 8, PATH5[:-1], ROOT8),
     ProofError, "too short"),
    ("verify-path-preceding-junk", verify_inclusion, (LEAF5, 5, 8, [JUNK, *PATH5], ROOT8),
     ProofError, "too long"),
    ("verify-path-huge", verify_inclusion, (LEAF5, 5, 8, [JUNK] * 65, ROOT8),
     ProofError, "more than 64"),
    ("verify-wrong-root", verify_inclusion, (LEAF5, 5, 8, PATH5, ROOT6),
     ProofError, "does not lead to the root"),
    ("verify-wrong-leaf", verify_inclusion, (JUNK, 5, 8, PATH5, ROOT8),
     ProofError, "does not lead to the root"),
    ("verify-short-leaf", verify_inclusion, (LEAF5[:31], 5, 8, PATH5, ROOT8),
     ProofError, "leaf hash is not a 32-byte"),
    ("verify-hex-in-path", verify_inclusion, (LEAF5, 5, 8, [PATH5[0].hex()], ROOT8),
     ProofError, "proof hash 0 is not"),
    ("verify-empty-root", verify_inclusion, (LEAF5, 5, 8, PATH5, b""),
     ProofError, "root is not"),
    ("verify-negative-index", verify_inclusion, (LEAF5, -1, 8, PATH5, ROOT8),
     ProofError, "leaf index is not"),
    ("verify-size-2**64", verify_inclusion, (LEAF5, 5, 2**64, PATH5, ROOT8),
     ProofError, "tree size is not"),
    # consistency verification (RFC 9162 §2.1.4.2, c2sp.org/tlog-witness edge cases)
    ("verify-from-gt-to", verify_consistency, (8, 6, CONS68, ROOT8, ROOT6),
     ProofError, "old tree size 8 is above new tree size 6"),
    ("verify-empty-proof", verify_consistency, (6, 8, [], ROOT6, ROOT8),
     ProofError, "from 6 to 8 is empty"),
    ("verify-cons-too-short", verify_consistency, (6, 8, CONS68[:-1], ROOT6, ROOT8),
     ProofError, "too short"),
    ("verify-cons-too-long", verify_consistency, (6, 8, [*CONS68, JUNK], ROOT6, ROOT8),
     ProofError, "too long"),
    ("verify-cons-wrong-old-root", verify_consistency, (6, 8, CONS68, ROOT8, ROOT8),
     ProofError, "old root of size 6"),
    ("verify-cons-wrong-new-root", verify_consistency, (6, 8, CONS68, ROOT6, ROOT6),
     ProofError, "new root of size 8"),
    ("verify-same-size-nonempty", verify_consistency, (8, 8, [JUNK], ROOT8, ROOT8),
     ProofError, "from 8 to 8 must be empty"),
    ("verify-same-size-other-root", verify_consistency, (8, 8, [], ROOT6, ROOT8),
     ProofError, "old root does not match"),
    ("verify-from-0-nonempty", verify_consistency, (0, 8, [JUNK], EMPTY_ROOT, ROOT8),
     ProofError, "from 0 to 8 must be empty"),
    ("verify-from-0-wrong-root", verify_consistency, (0, 8, [], ROOT6, ROOT8),
     ProofError, "tree of size 0"),
    ("verify-short-old-root", verify_consistency, (6, 8, CONS68, ROOT6[:16], ROOT8),
     ProofError, "old root is not"),
]
# fmt: on


@pytest.mark.parametrize(
    ("call", "args", "error", "match"),
    [pytest.param(*row[1:], id=row[0]) for row in BAD_INPUT],
)
def test_bad_input_is_refused(
    call: Callable[..., object], args: tuple[Any, ...], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        call(*args)


def test_trivial_consistency_is_accepted() -> None:
    verify_consistency(0, 8, [], EMPTY_ROOT, ROOT8)
    verify_consistency(8, 8, [], ROOT8, ROOT8)
    assert consistency_proof(0, 8, R8) == ()
    assert consistency_proof(8, 8, R8) == ()


class _Short:
    def read_hashes(self, nodes: Sequence[Node]) -> list[bytes]:
        return [JUNK] * (len(nodes) - 1)


class _Garbage:
    def read_hashes(self, nodes: Sequence[Node]) -> list[bytes]:
        return [b"x"] * len(nodes)


@pytest.mark.parametrize("reader", [_Short(), _Garbage()], ids=["too-few", "not-hashes"])
@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda r: tree_hash(7, r), id="tree-hash"),
        pytest.param(lambda r: inclusion_proof(0, 7, r), id="inclusion"),
        pytest.param(lambda r: consistency_proof(3, 7, r), id="consistency"),
        pytest.param(lambda r: stored_hashes_for_append(7, JUNK, r), id="append"),
    ],
)
def test_a_bad_hash_store_fails_closed(
    reader: HashReader, call: Callable[[HashReader], object]
) -> None:
    with pytest.raises(StoreError, match="the hash store answered"):
        call(reader)


def test_leaf_list_refuses_incomplete_subtrees() -> None:
    with pytest.raises(StoreError, match="no complete subtree"):
        LeafHashes([JUNK] * 3).read_hashes([Node(1, 1)])


# --- cross-check with Go's golang.org/x/mod/sumdb/tlog ---------------------------------

# The Go checker (``go_checker``) is built by tests/audit/conftest.py.


def _go(binary: Path, case: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run(
        [str(binary)], input=json.dumps(case).encode(), capture_output=True, timeout=60, check=True
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 150), seed=st.integers(0, 2**32))
def test_go_tlog_agrees(go_checker: Path, n: int, seed: int) -> None:
    rnd = random.Random(seed)
    leaves = [rnd.randbytes(rnd.randrange(0, 40)) for _ in range(n)]
    memory = MemoryHashes()
    stored = [
        [
            {"level": s.node.level, "index": s.node.index, "hash": s.hash.hex()}
            for s in memory.append(leaf_hash(d))
        ]
        for d in leaves
    ]
    roots = [tree_hash(size, memory) for size in range(n + 1)]
    inclusion, consistency, tampered_i, tampered_c = [], [], [], []
    for _ in range(12):
        size = rnd.randint(1, n)
        index = rnd.randrange(size)
        proof = [h.hex() for h in inclusion_proof(index, size, memory)]
        case = {"index": index, "size": size, "leaf": leaf_hash(leaves[index]).hex()}
        inclusion.append({**case, "root": roots[size].hex(), "proof": proof})
        # The same claim against a wrong root must fail in Go too.
        tampered_i.append(
            {**case, "root": _flip(roots[size], rnd.randrange(256)).hex(), "proof": proof}
        )
        old = rnd.randint(1, size)
        proof = [h.hex() for h in consistency_proof(old, size, memory)]
        case = {"index": old, "size": size, "old": roots[old].hex()}
        consistency.append({**case, "root": roots[size].hex(), "proof": proof})
        tampered_c.append(
            {**case, "root": _flip(roots[size], rnd.randrange(256)).hex(), "proof": proof}
        )
    result = _go(
        go_checker,
        {
            "leaves": [d.hex() for d in leaves],
            "stored": stored,
            "inclusion": inclusion + tampered_i,
            "consistency": consistency + tampered_c,
        },
    )
    # Our stored hashes are tlog's, at tlog's StoredHashIndex positions.
    assert result["stored_problems"] == []
    # tlog computes our roots from our stored hashes (size 0 differs by definition:
    # tlog uses 32 zero bytes, RFC 6962 the SHA-256 of nothing).
    assert result["tree_hashes"] == [r.hex() for r in roots[1:]]
    # tlog.CheckRecord / CheckTree accept every proof of ours and refuse the tampered ones.
    k = len(inclusion)
    assert result["inclusion"][:k] == [""] * k
    assert all(err for err in result["inclusion"][k:])
    assert result["consistency"][:k] == [""] * k
    assert all(err for err in result["consistency"][k:])
    # tlog's own proofs (from its own stored hashes) are ours, and we verify them.
    for case, go_proof in zip(inclusion, result["go_inclusion"][:k], strict=True):
        assert go_proof == case["proof"]
        verify_inclusion(
            bytes.fromhex(case["leaf"]),
            case["index"],
            case["size"],
            [bytes.fromhex(h) for h in go_proof],
            bytes.fromhex(case["root"]),
        )
    for case, go_proof in zip(consistency, result["go_consistency"][:k], strict=True):
        assert go_proof == case["proof"]
        verify_consistency(
            case["index"],
            case["size"],
            [bytes.fromhex(h) for h in go_proof],
            bytes.fromhex(case["old"]),
            bytes.fromhex(case["root"]),
        )
