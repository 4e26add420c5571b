"""The native path-to-bin check (``_cbins``) equals its Python reference (issue 16).

``check_bin_payload`` asks which target path, if any, hashes outside the bin's
range of SHA-256 prefixes. The reference (``first_path_outside_reference``) is
the oracle: hand cases, a hypothesis property over arbitrary text (lone
surrogates included) and ranges, the whole check with and without the
extension, and a bounded atheris run.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuf_signer.errors import PayloadError
from tuf_signer.model import BinsDelegation, RoleRule
from tuf_signer.policy import _bins, bin_for_path, bins_pattern, check_bin_payload

from ._native import check_warning_free, native_or_skip, run_atheris

SOURCE = Path(_bins.__file__).with_name("_cbins.c")
NATIVE = native_or_skip("_cbins", "gcc, python3-dev and libssl-dev")

from .fuzz_bins import check_one  # noqa: E402

FULL = (0, 2**32 - 1)


def prefix(path: str) -> int:
    return int.from_bytes(hashlib.sha256(path.encode("utf-8")).digest()[:4], "big")


def test_extension_is_built_and_used() -> None:
    assert NATIVE is not None
    if os.environ.get("TUF_SIGNER_NATIVE") != "0":
        assert _bins._cbins is NATIVE


def test_source_is_warning_free() -> None:
    check_warning_free(SOURCE)


A, B, C = "packages/a.whl", "packages/b.whl", "é/😀 ü"  # prefixes below
P = {p: prefix(p) for p in (A, B, C)}

CASES = [
    pytest.param({}, *FULL, None, id="no-paths"),
    pytest.param({A: 1, B: 2, C: 3}, *FULL, None, id="full-range"),
    pytest.param({A: 1}, P[A], P[A], None, id="exact-prefix"),
    pytest.param({A: 1}, P[A] + 1, 2**32 - 1, A, id="one-below"),
    pytest.param({A: 1}, 0, P[A] - 1, A, id="one-above"),
    pytest.param({A: 1, B: 2}, P[A], P[A], B, id="second-outside"),
    pytest.param({B: 1, A: 2}, P[A], P[A], B, id="first-outside"),
    pytest.param({C: 1, A: 2}, P[C], P[C], A, id="non-ascii-inside"),
    pytest.param({A: 1, C: 2}, P[A], P[A], C, id="non-ascii-outside"),
    pytest.param({"": 1}, prefix(""), prefix(""), None, id="empty-path"),
    pytest.param({A: 1}, 1, 0, A, id="empty-range"),
    pytest.param({A: 1, "\ud800": 2}, *FULL, UnicodeEncodeError, id="surrogate"),
    pytest.param({"\ud800": 1}, P[A], P[A], UnicodeEncodeError, id="surrogate-first"),
    pytest.param({B: 1, "\ud800": 2}, P[A], P[A], B, id="outside-before-surrogate"),
]


@pytest.mark.parametrize(("targets", "low", "high", "expected"), CASES)
def test_hand_cases(targets: dict[str, Any], low: int, high: int, expected: Any) -> None:
    got = check_one(targets, low, high)  # native == reference
    if isinstance(expected, type):
        assert got == ("raised", expected)
    else:
        assert got == ("path", expected)


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        pytest.param(([A], 0, 1), TypeError, "paths must be a dict", id="list"),
        pytest.param(({1: None}, 0, 1), TypeError, "not a str", id="int-key"),
        pytest.param(({b"a": None}, 0, 1), TypeError, "not a str", id="bytes-key"),
        pytest.param(({A: 1}, -1, 1), ValueError, "low must be in", id="negative"),
        pytest.param(({A: 1}, 0, 2**32), ValueError, "high must be in", id="too-big"),
        pytest.param(({A: 1}, 0, 2**64), ValueError, "high must be in", id="huge"),
        pytest.param(({A: 1}, 0.0, 1), TypeError, "low must be an int", id="float"),
        pytest.param(({A: 1}, 0), TypeError, "takes 3 arguments", id="two-args"),
    ],
)
def test_bad_arguments(args: tuple[Any, ...], error: type[Exception], match: str) -> None:
    assert NATIVE is not None
    with pytest.raises(error, match=match):
        NATIVE.first_outside(*args)


RANGES = st.one_of(
    st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    # A bin of bit length b: the ranges check_bin_payload asks for.
    st.integers(1, 32).flatmap(
        lambda b: st.integers(0, 2**b - 1).map(lambda n: (n << (32 - b), ((n + 1) << (32 - b)) - 1))
    ),
)


@settings(max_examples=2000, deadline=None)
@given(
    paths=st.lists(st.text(st.characters(codec=None), max_size=40), max_size=12),
    bounds=RANGES,
)
def test_native_equals_reference(paths: list[str], bounds: tuple[int, int]) -> None:
    check_one(dict.fromkeys(paths), *bounds)


@settings(max_examples=300, deadline=None)
@given(paths=st.lists(st.text(max_size=30), min_size=1, max_size=20), bits=st.integers(1, 16))
def test_each_path_is_inside_its_own_bin(paths: list[str], bits: int) -> None:
    """A path's own bin (python-tuf's rule, bin_for_path) is always a range that holds it."""
    bins = BinsDelegation(prefix="bins", bit_length=bits)
    for path in paths:
        n = int(bin_for_path(bins, path).rpartition("-")[2], 16)
        low, high = n << (32 - bits), ((n + 1) << (32 - bits)) - 1
        assert check_one({path: None}, low, high) == ("path", None)


@pytest.mark.parametrize("native", [True, False])
def test_check_bin_payload_names_the_stray_path(
    monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    """The whole check gives the same reason with and without the extension."""
    if not native:
        monkeypatch.setattr(_bins, "_cbins", None)
    bins = BinsDelegation(prefix="bins", bit_length=8)
    rule = RoleRule(pattern=bins_pattern(bins), max_validity=86400)
    home = bin_for_path(bins, A)
    other = bin_for_path(bins, B)
    assert home != other
    check_bin_payload(home, {"targets": {A: {}}}, rule, bins, "k")
    with pytest.raises(PayloadError, match=f"'{B}' belongs in bin '{other}', not '{home}'"):
        check_bin_payload(home, {"targets": {A: {}, B: {}}}, rule, bins, "k")


FUZZ_SECONDS = 10


def test_atheris_bounded(tmp_path: Path) -> None:
    """``fuzz_bins.py`` under atheris for FUZZ_SECONDS: no disagreement, no crash."""
    run_atheris(Path(__file__).with_name("fuzz_bins.py"), tmp_path, FUZZ_SECONDS, "-max_len=512")
