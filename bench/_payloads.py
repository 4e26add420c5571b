"""Deterministic TUF payloads for the benchmarks, as canonical JSON bytes.

Bins are built as strings, not through python-tuf objects: 16,384 bins of
~139 targets is 2.3 million target entries, which python-tuf would take tens
of seconds to build. ``self_check`` proves the strings are canonical JSON
(securesystemslib's encoder gives the same bytes) and that python-tuf parses
them; the server's own canonical-JSON check refuses anything else anyway.

Sizes follow PEP 458: bins average ~139 targets and ~54 KB; the snapshot
lists every bin; the timestamp is a few hundred bytes.

Coherence (issue 14): the signer refuses a snapshot that lists a bin at a
version its key never signed, or below what its last snapshot listed, and a
timestamp that names a snapshot version it never signed. So a snapshot is
built from the versions actually signed (``snapshot`` takes them), and a
timestamp names a snapshot that was signed.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import random
from array import array
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path

# python-tuf's SPECIFICATION_VERSION (``self_check`` compares): not imported
# here, so the baseline processes start without loading python-tuf.
SPEC = "1.0.31"
# Well inside the one-day maximum PEP 458 gives online roles (and the bench keys' policy).
VALIDITY = timedelta(hours=12)
BIN_BITS = 14  # PEP 458: 16,384 bins
TARGETS_PER_BIN = 139  # PEP 458's average


def expires() -> str:
    """TUF ``expires`` (ISO 8601, UTC, no fraction), 12 hours from now."""
    return (datetime.now(UTC) + VALIDITY).strftime("%Y-%m-%dT%H:%M:%SZ")


def bin_name(i: int) -> str:
    """The name of bin ``i`` as python-tuf's succinct hash bins give it (``bins-0a3f``)."""
    return f"bins-{i % (1 << BIN_BITS):04x}"


def timestamp(version: int, snapshot_version: int, exp: str) -> bytes:
    """A timestamp ``signed`` object (~190 bytes)."""
    return (
        f'{{"_type":"timestamp","expires":"{exp}","meta":{{"snapshot.json":'
        f'{{"version":{snapshot_version}}}}},"spec_version":"{SPEC}","version":{version}}}'
    ).encode()


TARGETS_VERSION = 1  # top-level targets, signed offline by another key: listed, never signed here


def snapshot(version: int, listed: Mapping[int, int], exp: str) -> bytes:
    """A snapshot listing bin ``i`` at version ``listed[i]``, and top-level targets.

    ``listed`` must hold exactly the bins signed so far, each at the version it
    was last signed at: the signer refuses any other listing (issue 14).
    PEP 458's 16,384 bins make ~500 KB.
    """
    # Canonical order: fixed-width lower-case hex sorts as the numbers do, and
    # every "bins-" key sorts before "targets.json".
    entries = [f'"{bin_name(i)}.json":{{"version":{listed[i]}}}' for i in sorted(listed)]
    entries.append(f'"targets.json":{{"version":{TARGETS_VERSION}}}')
    return (
        f'{{"_type":"snapshot","expires":"{exp}","meta":{{{",".join(entries)}}},'
        f'"spec_version":"{SPEC}","version":{version}}}'
    ).encode()


def bulk_snapshot(version: int, n_bins: int, bins_version: int, exp: str) -> bytes:
    """The snapshot after a bulk re-sign of bins 0..``n_bins``-1, all at ``bins_version``."""
    return snapshot(version, dict.fromkeys(range(n_bins), bins_version), exp)


def _path(k: int) -> tuple[str, str, str]:
    """Target ``k``'s PyPI-like path ``HH/HH/<60 hex>/<distribution file>`` and hashes."""
    name = f"project{k % 1997:04d}-{k % 39 + 1}.{k}.0"
    dist = f"{name}-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
    h = hashlib.blake2b(dist.encode(), digest_size=32).hexdigest()
    return f"{h[:2]}/{h[2:4]}/{h[4:]}/{dist}", h, hashlib.sha256(dist.encode()).hexdigest()


def _entry(k: int, rng: random.Random) -> tuple[str, str]:
    """Target entry ``k``: its path and its JSON text (blake2b-256 and sha256, a length).

    With both hashes an entry is ~390 bytes, which gives PEP 458's ~54 KB for 139 targets.
    """
    path, h, s = _path(k)
    return path, (
        f'"{path}":{{"custom":{{"upload-time":"2024-{1 + k % 12:02d}-{1 + k % 28:02d}T'
        f'{k % 24:02d}:{k % 60:02d}:{(k * 7) % 60:02d}Z"}},'
        f'"hashes":{{"blake2b-256":"{h}","sha256":"{s}"}},'
        f'"length":{rng.randrange(10_000, 90_000_000)}}}'
    )


def _bin_of(path: str) -> int:
    """python-tuf's succinct hash bin of a target path (TAP 15), as the signer checks it."""
    return int.from_bytes(hashlib.sha256(path.encode()).digest()[:4], "big") >> (32 - BIN_BITS)


# Where the entry numbers of each bin are kept between runs (git-ignored).
_CACHE = Path(__file__).resolve().parent / ".build" / "payloads"


@lru_cache(maxsize=4)
def _targets_by_bin(n_bins: int, per_bin: int) -> dict[int, tuple[int, ...]]:
    """``_deal_targets``, computed once per machine and kept in ``bench/.build``.

    Dealing PEP 458's 16,384 bins hashes ~3M paths (~10 s). Processes started
    together (the raw loops) would each do it, at different speeds, and their
    timed loops would then start seconds apart: the first one computes it
    under an exclusive lock while the others wait, and all then read the file.
    """
    _CACHE.mkdir(parents=True, exist_ok=True)
    path = _CACHE / f"bins-{BIN_BITS}-{n_bins}-{per_bin}.u32"
    with open(_CACHE / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            dealt = _deal_targets(n_bins, per_bin)
            flat = array("I", (k for i in range(n_bins) for k in dealt[i]))
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(flat.tobytes())
            tmp.replace(path)
    flat = array("I")
    flat.frombytes(path.read_bytes())
    return {i: tuple(flat[i * per_bin : (i + 1) * per_bin]) for i in range(n_bins)}


def _deal_targets(n_bins: int, per_bin: int) -> dict[int, tuple[int, ...]]:
    """Entry numbers whose paths hash into each of bins 0..n_bins-1, ``per_bin`` each.

    The signer signs a bin only if every path in it hashes into it, so entries
    are drawn in order and dealt to the bin their path belongs in: about
    16,384 x ``per_bin`` paths hashed once (a few seconds for PEP 458's scale).
    """
    found: dict[int, list[int]] = {i: [] for i in range(n_bins)}
    short = n_bins
    for k in itertools.count():
        i = _bin_of(_path(k)[0])
        if i < n_bins and len(found[i]) < per_bin:
            found[i].append(k)
            if len(found[i]) == per_bin:
                short -= 1
                if not short:
                    break
    return {i: tuple(ks) for i, ks in found.items()}


_MAX_PER_BIN = 175  # realistic_bins draws 104..174 targets


def bin_payload(i: int, version: int, exp: str, n_targets: int = TARGETS_PER_BIN) -> bytes:
    """Bin ``i`` (targets metadata) of ``n_targets`` entries whose paths hash into it."""
    n_bins = 1 << BIN_BITS if i >= 64 else 64  # small runs need not deal all 16,384 bins
    ks = _targets_by_bin(n_bins, max(_MAX_PER_BIN, n_targets))[i % (1 << BIN_BITS)][:n_targets]
    rng = random.Random(458 + i)
    body = ",".join(entry for _, entry in sorted(_entry(k, rng) for k in ks))
    return (
        f'{{"_type":"targets","expires":"{exp}","spec_version":"{SPEC}",'
        f'"targets":{{{body}}},"version":{version}}}'
    ).encode()


def realistic_bins(
    n: int, version: int, exp: str, start: int = 0, stop: int | None = None
) -> Iterator[tuple[str, bytes]]:
    """Bins ``start`` to ``stop`` of ``n`` bins of PEP 458 size: 139 targets ±25%, ~54 KB.

    The sizes depend on ``n`` only, so any slice has the bytes of the whole.
    """
    rng = random.Random(n)
    for i in range(n if stop is None else min(n, stop)):
        n_targets = rng.randrange(104, 175)
        if i >= start:
            yield bin_name(i), bin_payload(i, version, exp, n_targets)


def small_bin(i: int, version: int, exp: str, size: int = 512) -> bytes:
    """A one-target bin padded to exactly ``size`` bytes (at least ~420), distinct in ``i``.

    Its one path hashes into bin ``i`` (``bin_name(i)``), as the signer requires.
    """
    (k,) = _targets_by_bin(1 << BIN_BITS if i % (1 << BIN_BITS) >= 64 else 64, 1)[
        i % (1 << BIN_BITS)
    ]
    _, entry = _entry(k, random.Random(i))
    head = f'{{"_type":"targets","expires":"{exp}","spec_version":"{SPEC}","targets":{{'
    tail = f'}},"version":{version}}}'
    # The pad is a custom field sorting after "upload-time" in the entry's "custom" object.
    path, _, rest = entry.partition(":")
    pad = max(0, size - len(head) - len(tail) - len(entry) - len(',"x-pad":""'))
    custom_end = rest.index("}")
    entry = f'{path}:{rest[:custom_end]},"x-pad":"{"x" * pad}"{rest[custom_end:]}'
    return (head + entry + tail).encode()


def self_check() -> None:
    """Raise unless every kind of payload is canonical JSON that python-tuf accepts.

    Raises:
        AssertionError: a builder produced non-canonical or invalid metadata.
    """
    from securesystemslib.formats import encode_canonical
    from tuf.api.metadata import SPECIFICATION_VERSION, Metadata

    assert ".".join(SPECIFICATION_VERSION) == SPEC, SPECIFICATION_VERSION
    exp = expires()
    samples = [
        timestamp(3, 2, exp),
        bulk_snapshot(4, 64, 3, exp),
        snapshot(5, {0: 2, 17: 3}, exp),
        bin_payload(5, 6, exp),
        small_bin(7, 8, exp),
        next(realistic_bins(1, 1, exp))[1],
    ]
    for payload in samples:
        obj = json.loads(payload)
        assert encode_canonical(obj).encode() == payload, payload[:200]
        Metadata.from_dict({"signatures": [], "signed": obj})
