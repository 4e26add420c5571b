"""Fixtures for the policy tests: TUF payloads built by python-tuf, the reference producer."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from securesystemslib.formats import encode_canonical
from tuf.api.metadata import Metadata, MetaFile, Snapshot, TargetFile, Targets, Timestamp

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)

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


@pytest.fixture
def make_bin() -> BinFactory:
    """Build a PEP 458 hashed-bin targets metadata (default ~54 KB, 139 targets)."""

    def build(
        n_targets: int = 139, *, version: int = 3, valid_for: timedelta = timedelta(hours=23)
    ) -> Metadata[Targets]:
        targets = {t.path: t for t in (_target(i) for i in range(n_targets))}
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
