"""Fixtures for the policy tests: TUF payloads built by python-tuf, the reference producer."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from securesystemslib.formats import encode_canonical
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Snapshot,
    SuccinctRoles,
    TargetFile,
    Targets,
    Timestamp,
)

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


def fold_free(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` without the keys that fold together with an earlier one.

    For hypothesis strategies of objects a TUF signer must accept: parse_canonical
    refuses keys alike under case folding or NFKC (issue 10, finding 2).
    """
    from tuf_signer.policy._canonical import _fold

    seen: set[str] = set()
    out = {}
    for key, value in obj.items():
        folded = _fold(key)
        if folded not in seen:
            seen.add(folded)
            out[key] = value
    return out


_MISSING = object()

PayloadFactory = Callable[..., bytes]
BinFactory = Callable[..., Metadata[Targets]]


@pytest.fixture
def now() -> datetime:
    """The frozen 'now' every policy test checks against."""
    return NOW


def _timestamp_dict() -> dict[str, Any]:
    md = Metadata(
        Timestamp(version=7, expires=NOW + timedelta(hours=12), snapshot_meta=MetaFile(7))
    )
    return md.signed.to_dict()


@pytest.fixture
def make_payload() -> PayloadFactory:
    """Build canonical JSON of a timestamp ``signed`` dict with fields overridden.

    Pass ``field=value`` to set a field (``_type`` as ``type_``), or
    ``field=DELETE`` to drop it. The result is canonical (securesystemslib's
    encoder), so only the field under test is wrong.
    """

    def build(**overrides: Any) -> bytes:
        signed = _timestamp_dict()
        for name, value in overrides.items():
            key = "_type" if name == "type_" else name
            if value is _MISSING:
                signed.pop(key, None)
            else:
                signed[key] = value
        encoded = encode_canonical(signed)
        assert isinstance(encoded, str)
        return encoded.encode("utf-8")

    return build


@pytest.fixture
def delete() -> object:
    """Sentinel for ``make_payload``: remove the field."""
    return _MISSING


def _target(i: int, path_prefix: str = "packages") -> TargetFile:
    data = f"distribution {i}".encode()
    sha256 = hashlib.sha256(data).hexdigest()
    blake2b = hashlib.blake2b(data, digest_size=32).hexdigest()
    # A PyPI-like path: packages/<2>/<2>/<60 hex>/<filename>.
    path = (
        f"{path_prefix}/{blake2b[:2]}/{blake2b[2:4]}/{blake2b[4:]}/"
        f"example_distribution_project_{i:05d}-{i % 50}.{i % 7}.{i % 13}"
        "-cp312-cp312-manylinux_2_17_x86_64.whl"
    )
    return TargetFile(
        length=10_000 + 37 * i,
        hashes={"blake2b-256": blake2b, "sha256": sha256},
        path=path,
        unrecognized_fields={"custom": {"backend": "pypi-file-store", "index": i}},
    )


def _targets_in(bins: SuccinctRoles, role: str) -> Iterator[TargetFile]:
    """PyPI-like targets whose paths python-tuf puts in bin ``role``, deterministically."""
    return (t for t in map(_target, itertools.count()) if bins.get_role_for_target(t.path) == role)


@pytest.fixture
def make_bin() -> BinFactory:
    """Build a PEP 458 hashed-bin targets metadata (default ~54 KB, 139 targets).

    With ``bins=(prefix, bit_length)`` and ``role``, every target path hashes into
    that bin (python-tuf's ``SuccinctRoles``); without, the paths fall anywhere.
    """

    def build(
        n_targets: int = 139,
        *,
        version: int = 3,
        valid_for: timedelta = timedelta(hours=23),
        bins: tuple[str, int] | None = None,
        role: str = "",
    ) -> Metadata[Targets]:
        if bins is None:
            chosen = [_target(i) for i in range(n_targets)]
        else:
            succinct = SuccinctRoles([], 1, bins[1], bins[0])
            assert role in succinct.get_roles(), f"{role!r} is not a bin of {bins}"
            chosen = list(itertools.islice(_targets_in(succinct, role), n_targets))
        targets = {t.path: t for t in chosen}
        return Metadata(Targets(version=version, expires=NOW + valid_for, targets=targets))

    return build


@pytest.fixture
def timestamp_md() -> Metadata[Timestamp]:
    """A valid timestamp, expiring in 12 hours."""
    return Metadata(
        Timestamp(version=42, expires=NOW + timedelta(hours=12), snapshot_meta=MetaFile(41))
    )


@pytest.fixture
def snapshot_md() -> Metadata[Snapshot]:
    """A valid snapshot listing 256 bins and the top-level targets."""
    meta = {f"bins-{i:02x}.json": MetaFile(version=i + 1) for i in range(256)}
    meta["targets.json"] = MetaFile(version=9)
    return Metadata(Snapshot(version=41, expires=NOW + timedelta(hours=20), meta=meta))
