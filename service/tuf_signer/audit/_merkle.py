"""The RFC 6962 Merkle tree over the audit records (issue 13, P5), as pure functions.

The hashing rules are those of RFC 6962 §2.1 (unchanged in RFC 9162 §2.1), so
that any Certificate Transparency or ``c2sp.org/tlog-*`` tool checks our trees::

    leaf_hash(d)      = SHA-256(0x00 || d)
    node_hash(l, r)   = SHA-256(0x01 || l || r)
    MTH({})           = SHA-256("")                      (the empty tree)
    MTH(D[n])         = node_hash(MTH(D[0:k]), MTH(D[k:n]))
                        where k is the largest power of two < n

Proofs are generated from the hashes of *complete subtrees*: the node
``Node(level, index)`` covers the leaves ``[index * 2**level, (index + 1) * 2**level)``.
These are the hashes that ``c2sp.org/tlog-tiles`` stores in its tiles and that
Go's ``golang.org/x/mod/sumdb/tlog`` stores under ``StoredHashIndex(level, index)``.
Appending leaf ``n`` stores ``stored_hashes_for_append(n, ...)``: the leaf's hash
and the hash of every subtree that leaf completes (1 + the number of trailing one
bits of ``n``, under two on average). A tree hash, an inclusion proof or a
consistency proof then needs one batched read of at most about ``2 * log2(n)``
stored hashes (``HashReader.read_hashes``).

Nothing here does I/O; the store answers ``HashReader`` and keeps the stored
hashes in the same transaction as the record they belong to.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from tuf_signer.errors import RequestError, StoreError, TufSignerError

HASH_SIZE = 32
# RFC 6962 §2.1: "The hash of an empty list is the hash of an empty string".
# (Go's sumdb/tlog.TreeHash returns 32 zero bytes for size 0 instead; we follow the RFC.)
EMPTY_ROOT = hashlib.sha256(b"").digest()
# Tree sizes and indexes are uint64 in checkpoints (c2sp.org/tlog-checkpoint).
MAX_SIZE = 2**64 - 1

_LEAF_PREFIX = b"\x00"  # RFC 6962 §2.1: domain separation of leaves...
_NODE_PREFIX = b"\x01"  # ...and interior nodes (second-preimage resistance)


class ProofError(TufSignerError):
    """A Merkle proof, root, size or index does not hold together; the reason says which.

    As it stands the log cannot be trusted; a caller checking someone else's proof
    (a witness, a client) may re-raise it with its own status.
    """

    code = "DATA_LOSS"


class TreeRangeError(RequestError):
    """A proof was asked for a leaf or tree size outside the tree (seq beyond the end...)."""

    code = "OUT_OF_RANGE"


@dataclass(frozen=True, order=True)
class Node:
    """A complete subtree: leaves ``[index << level, (index + 1) << level)``.

    ``Node(0, i)`` is leaf ``i``; ``Node(level, index)`` is tlog-tiles' hash
    ``index`` at level ``level`` and Go tlog's ``StoredHashIndex(level, index)``.
    """

    level: int
    index: int


@dataclass(frozen=True)
class StoredHash:
    """One hash a store keeps for a complete subtree."""

    node: Node
    hash: bytes


class HashReader(Protocol):
    """Reads stored hashes of complete subtrees (what a store implements)."""

    def read_hashes(self, nodes: Sequence[Node]) -> Sequence[bytes]:
        """Return the stored hash of each node, in the order asked.

        Raises:
            StoreError: a hash cannot be read (missing, store down).
        """
        ...


def leaf_hash(data: bytes) -> bytes:
    """The Merkle leaf hash of one record: SHA-256(0x00 || data)."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of an interior node: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """RFC 6962 §2.1: the largest power of two smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def _range_nodes(lo: int, hi: int) -> list[Node]:
    """The complete subtrees whose hashes make up MTH(D[lo:hi]), left to right.

    In every range that RFC 6962's recursion visits, ``lo`` is a multiple of the
    largest power of two not above ``hi - lo``, so the range splits into aligned
    complete subtrees of decreasing size, and MTH is their right fold.
    """
    nodes = []
    while lo < hi:
        level = (hi - lo).bit_length() - 1
        nodes.append(Node(level, lo >> level))
        lo += 1 << level
    return nodes


def _fold(hashes: Sequence[bytes]) -> bytes:
    """MTH of a range from its complete subtrees' hashes: h0 + (h1 + (h2 + ...))."""
    result = hashes[-1]
    for h in reversed(hashes[:-1]):
        result = node_hash(h, result)
    return result


def _checked_read(reader: HashReader, nodes: list[Node]) -> list[bytes]:
    """One batched read; a store that answers garbage fails closed."""
    got = list(reader.read_hashes(nodes)) if nodes else []
    if len(got) != len(nodes) or any(not isinstance(h, bytes) or len(h) != HASH_SIZE for h in got):
        raise StoreError(f"the hash store answered {len(got)} values for {len(nodes)} hashes")
    return got


def _read(reader: HashReader, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
    """MTH(D[lo:hi]) of each range, from one batched read of complete subtrees."""
    groups = [_range_nodes(lo, hi) for lo, hi in ranges]
    got = _checked_read(reader, [node for group in groups for node in group])
    out = []
    for group in groups:
        out.append(_fold(got[: len(group)]))
        del got[: len(group)]
    return out


def _request_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{name} must be an integer")
    if not 0 <= value <= MAX_SIZE:
        raise RequestError(f"{name} {value} is not between 0 and 2**64-1")
    return value


def tree_hash(size: int, reader: HashReader) -> bytes:
    """The Merkle Tree Hash MTH(D[size]) (RFC 6962 §2.1) from stored subtree hashes.

    ``size`` 0 gives ``EMPTY_ROOT``; ``reader`` holds the first ``size`` leaves' subtrees.

    Raises:
        RequestError: ``size`` is not an integer in [0, 2**64-1].
        StoreError: the reader failed or answered garbage.
    """
    size = _request_int(size, "tree size")
    if size == 0:
        return EMPTY_ROOT
    return _read(reader, [(0, size)])[0]


def inclusion_proof(index: int, size: int, reader: HashReader) -> tuple[bytes, ...]:
    """The audit path PATH(index, D[size]) of RFC 6962 §2.1.1 (RFC 9162 §2.1.3.1).

    Leaf-side sibling first, the root's other child last.

    Raises:
        RequestError: ``index`` or ``size`` is not an integer in [0, 2**64-1].
        TreeRangeError: ``index >= size`` (including any index of an empty tree).
        StoreError: the reader failed or answered garbage.
    """
    index = _request_int(index, "leaf index")
    size = _request_int(size, "tree size")
    if index >= size:
        raise TreeRangeError(f"leaf index {index} is not in a tree of size {size}")
    # PATH(m, D[n]) = PATH(m, D[0:k]) : MTH(D[k:n])       for m < k
    #               = PATH(m - k, D[k:n]) : MTH(D[0:k])   for m >= k
    # walked from the root down, so the siblings come out root first.
    siblings: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            siblings.append((lo + k, hi))
            hi = lo + k
        else:
            siblings.append((lo, lo + k))
            lo += k
    return tuple(reversed(_read(reader, siblings)))


def consistency_proof(old_size: int, new_size: int, reader: HashReader) -> tuple[bytes, ...]:
    """The consistency proof PROOF(old_size, D[new_size]) of RFC 6962 §2.1.2.

    Empty when ``old_size`` is 0 or equal to ``new_size`` (nothing to prove:
    c2sp.org/tlog-witness expects an empty proof then).

    Raises:
        RequestError: a size is not an integer in [0, 2**64-1], or
            ``old_size > new_size``.
        StoreError: the reader failed or answered garbage.
    """
    old_size = _request_int(old_size, "old tree size")
    new_size = _request_int(new_size, "new tree size")
    if old_size > new_size:
        raise RequestError(f"old tree size {old_size} is above the new tree size {new_size}")
    if old_size in (0, new_size):
        return ()
    # SUBPROOF(m, D[m], true)  = {}
    # SUBPROOF(m, D[m], false) = {MTH(D[m])}
    # SUBPROOF(m, D[n], b)     = SUBPROOF(m, D[0:k], b) : MTH(D[k:n])           m <= k
    #                          = SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])   m > k
    parts: list[tuple[int, int]] = []
    lo, hi, m, whole_old_tree = 0, new_size, old_size, True
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            parts.append((lo + k, hi))
            hi = lo + k
        else:
            parts.append((lo, lo + k))
            lo += k
            m -= k
            whole_old_tree = False
    if not whole_old_tree:
        parts.append((lo, hi))
    return tuple(reversed(_read(reader, parts)))


def stored_hashes_for_append(
    size: int, new_leaf_hash: bytes, reader: HashReader
) -> tuple[StoredHash, ...]:
    """The hashes to store when leaf number ``size`` (zero-based) is appended.

    The leaf's own hash, then the hash of each complete subtree that the leaf
    completes, lowest level first: the same hashes, in the same order, as Go's
    ``tlog.StoredHashesForRecordHash(size, new_leaf_hash, r)``. It reads the left
    sibling of each new subtree (at most log2(size) hashes, in one call).

    ``size`` is the tree size before the append; ``new_leaf_hash`` is ``leaf_hash(record)``.

    Raises:
        RequestError: ``size`` is out of range or ``new_leaf_hash`` is not 32 bytes.
        StoreError: the reader failed or answered garbage.
    """
    size = _request_int(size, "tree size")
    if size == MAX_SIZE:
        raise RequestError("the tree is full")
    if not isinstance(new_leaf_hash, bytes) or len(new_leaf_hash) != HASH_SIZE:
        raise RequestError(f"a leaf hash must be {HASH_SIZE} bytes")
    # Each trailing one bit of ``size`` is a subtree the new leaf completes; its
    # left half Node(level, 2j) is stored already, its right half is the new chain.
    completed = ((size + 1) & -(size + 1)).bit_length() - 1
    lefts = [Node(level, ((size + 1) >> level) - 2) for level in range(completed)]
    left_hashes = _checked_read(reader, lefts)
    stored = [StoredHash(Node(0, size), new_leaf_hash)]
    current = new_leaf_hash
    for level, left in enumerate(left_hashes, start=1):
        current = node_hash(left, current)
        stored.append(StoredHash(Node(level, ((size + 1) >> level) - 1), current))
    return tuple(stored)


def _proof_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SIZE:
        raise ProofError(f"{name} is not an integer between 0 and 2**64-1")
    return value


def _proof_hash(value: object, name: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise ProofError(f"{name} is not a {HASH_SIZE}-byte hash")
    return value


def _proof_hashes(proof: Iterable[bytes], limit: int) -> list[bytes]:
    hashes = []
    for i, h in enumerate(proof):
        if i >= limit:  # longer than any proof in a 2**64-leaf tree
            raise ProofError(f"the proof has more than {limit} hashes")
        hashes.append(_proof_hash(h, f"proof hash {i}"))
    return hashes


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf`` is leaf ``index`` of the tree of ``size`` leaves with ``root``.

    RFC 9162 §2.1.3.2, step by step. The proof binds the leaf and its position
    to ``root``; the size is bound to the root by whoever signed them together
    (a checkpoint), as in every RFC 6962 verifier.

    ``leaf`` is ``leaf_hash(record)``; ``proof`` is what ``inclusion_proof`` returns.

    Raises:
        ProofError: naming what failed (index not below size, malformed hash,
            a proof too long or too short, a root that does not match).
    """
    index = _proof_int(index, "the leaf index")
    size = _proof_int(size, "the tree size")
    r = _proof_hash(leaf, "the leaf hash")
    root = _proof_hash(root, "the root")
    path = _proof_hashes(proof, 64)
    # 1. If leaf_index is greater than or equal to tree_size, then fail.
    if index >= size:
        raise ProofError(f"leaf index {index} is not in a tree of size {size}")
    # 2. Set fn to leaf_index and sn to tree_size - 1.  3. Set r to hash.
    fn, sn = index, size - 1
    # 4. For each value p in the inclusion_path array:
    for p in path:
        # a. If sn is 0, then stop the iteration and fail the proof verification.
        if sn == 0:
            raise ProofError(f"the inclusion proof is too long for leaf {index} of {size}")
        # b. If LSB(fn) is set, or if fn is equal to sn, then:
        if fn & 1 or fn == sn:
            r = node_hash(p, r)  # i. Set r to HASH(0x01 || p || r).
            # ii. If LSB(fn) is not set, then right-shift both fn and sn
            #     equally until either LSB(fn) is set or fn is 0.
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)  # Otherwise: set r to HASH(0x01 || r || p).
        # c. Finally, right-shift both fn and sn one time.
        fn >>= 1
        sn >>= 1
    # 5. Compare sn to 0. Compare r against the root. If sn is equal to 0 and
    #    r and the root are equal, then the log has proven the inclusion.
    if sn != 0:
        raise ProofError(f"the inclusion proof is too short for leaf {index} of {size}")
    if r != root:
        raise ProofError(
            f"the inclusion proof of leaf {index} does not lead to the root of size {size}"
        )


def verify_consistency(
    old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes
) -> None:
    """Check that the tree ``(new_size, new_root)`` extends ``(old_size, old_root)``.

    RFC 9162 §2.1.4.2 for ``0 < old_size < new_size``. The cases the RFC leaves
    out are those of c2sp.org/tlog-witness: ``old_size == new_size`` needs an
    empty proof and equal roots; ``old_size == 0`` needs an empty proof and
    ``old_root == EMPTY_ROOT`` (MTH of no leaves, RFC 6962 §2.1).

    Raises:
        ProofError: naming what failed (old size above new size, malformed hash,
            a proof of the wrong length, either root not matching).
    """
    first = _proof_int(old_size, "the old tree size")
    second = _proof_int(new_size, "the new tree size")
    first_hash = _proof_hash(old_root, "the old root")
    second_hash = _proof_hash(new_root, "the new root")
    path = _proof_hashes(proof, 128)
    if first > second:
        raise ProofError(f"old tree size {first} is above new tree size {second}")
    if first in (0, second):
        if path:
            raise ProofError(f"a consistency proof from {first} to {second} must be empty")
        expected = EMPTY_ROOT if first == 0 else second_hash
        if first_hash != expected:
            raise ProofError(f"the old root does not match the tree of size {first}")
        return
    # 1. If consistency_path is an empty array, stop and fail the proof verification.
    if not path:
        raise ProofError(f"the consistency proof from {first} to {second} is empty")
    # 2. If first is an exact power of 2, then prepend first_hash to the consistency_path.
    if first & (first - 1) == 0:
        path.insert(0, first_hash)
    # 3. Set fn to first - 1 and sn to second - 1.
    fn, sn = first - 1, second - 1
    # 4. If LSB(fn) is set, then right-shift both fn and sn equally until LSB(fn) is not set.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5. Set both fr and sr to the first value in the consistency_path array.
    fr = sr = path[0]
    # 6. For each subsequent value c in the consistency_path array:
    for c in path[1:]:
        # a. If sn is 0, then stop the iteration and fail the proof verification.
        if sn == 0:
            raise ProofError(f"the consistency proof from {first} to {second} is too long")
        # b. If LSB(fn) is set, or if fn is equal to sn, then:
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)  # i. Set fr to HASH(0x01 || c || fr).
            sr = node_hash(c, sr)  # ii. Set sr to HASH(0x01 || c || sr).
            # iii. If LSB(fn) is not set, then right-shift both fn and sn
            #      equally until either LSB(fn) is set or fn is 0.
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)  # Otherwise: set sr to HASH(0x01 || sr || c).
        # c. Finally, right-shift both fn and sn one time.
        fn >>= 1
        sn >>= 1
    # 7. After completing iterating through the consistency_path array as
    #    described above, verify that the fr calculated is equal to the
    #    first_hash supplied, that the sr calculated is equal to the second_hash
    #    supplied, and that sn is 0.
    if sn != 0:
        raise ProofError(f"the consistency proof from {first} to {second} is too short")
    if fr != first_hash:
        raise ProofError(f"the consistency proof does not lead to the old root of size {first}")
    if sr != second_hash:
        raise ProofError(f"the consistency proof does not lead to the new root of size {second}")


class LeafHashes:
    """A ``HashReader`` over a plain list of leaf hashes (computes every subtree)."""

    def __init__(self, leaves: Iterable[bytes] = ()) -> None:
        self.leaves = list(leaves)

    def read_hashes(self, nodes: Sequence[Node]) -> list[bytes]:
        """Hash each subtree from its leaves (O(2**level) work per node).

        Raises:
            StoreError: a node reaches past the last leaf.
        """
        out = []
        for node in nodes:
            lo, hi = node.index << node.level, (node.index + 1) << node.level
            if node.level < 0 or node.index < 0 or hi > len(self.leaves):
                raise StoreError(f"no complete subtree {node} in {len(self.leaves)} leaves")
            level = self.leaves[lo:hi]
            while len(level) > 1:
                level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level), 2)]
            out.append(level[0])
        return out


class MemoryHashes:
    """A ``HashReader`` that keeps what ``stored_hashes_for_append`` returns, as a store would."""

    def __init__(self) -> None:
        self.size = 0
        self.hashes: dict[Node, bytes] = {}

    def append(self, new_leaf_hash: bytes) -> tuple[StoredHash, ...]:
        """Append one leaf; return the hashes stored for it.

        Raises:
            RequestError: ``new_leaf_hash`` is not 32 bytes.
        """
        stored = stored_hashes_for_append(self.size, new_leaf_hash, self)
        self.hashes.update((s.node, s.hash) for s in stored)
        self.size += 1
        return stored

    def read_hashes(self, nodes: Sequence[Node]) -> list[bytes]:
        """The stored hashes of the nodes asked for.

        Raises:
            StoreError: a node was never stored (not a complete subtree yet).
        """
        try:
            return [self.hashes[node] for node in nodes]
        except KeyError as e:
            raise StoreError(f"no stored hash for {e.args[0]} at size {self.size}") from e
