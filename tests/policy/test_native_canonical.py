"""The native canonical-JSON check (``_ccanonical``) equals the pure-Python reference.

The reference (``_canonical._parse_reference``) is the oracle: the native scan
may only accept what it accepts (and read the same object), may only refuse what
it refuses, and ``parse_canonical`` keeps every refusal's reason. Hand cases per
class, hypothesis differential properties, and a bounded atheris run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from securesystemslib.formats import encode_canonical
from tuf.api.metadata import Metadata, TargetFile, Targets

from tuf_signer.errors import PayloadError, TufSignerError
from tuf_signer.model import BinsDelegation, RoleRule
from tuf_signer.policy import (
    _canonical,
    _checks,
    bin_for_path,
    check_sign_request,
    pep458_online_rules,
)

from ._native import check_warning_free, native_or_skip, run_atheris

SOURCE = Path(_canonical.__file__).with_name("_ccanonical.c")
NATIVE = native_or_skip("_ccanonical", "gcc and python3-dev")

from .conftest import NOW, BinFactory  # noqa: E402
from .fuzz_canonical import SEEDS, check_one, same, write_seeds  # noqa: E402


def test_extension_is_built_and_used() -> None:
    """``make test`` sets TUF_SIGNER_REQUIRE_NATIVE=1: a missing extension fails here."""
    assert NATIVE is not None, "tuf_signer.policy._ccanonical did not build (python3-dev, gcc?)"
    if os.environ.get("TUF_SIGNER_NATIVE") != "0":
        assert _canonical._scan is NATIVE.scan
    assert (_canonical._ACCEPT, _canonical._ACCEPT_JSON) == (NATIVE.ACCEPT, NATIVE.ACCEPT_JSON)
    assert len({NATIVE.ACCEPT, NATIVE.ACCEPT_JSON, NATIVE.REFUSE, NATIVE.UNDECIDED}) == 4


def test_source_is_warning_free() -> None:
    check_warning_free(SOURCE)


# --- hand cases ------------------------------------------------------------------

ACCEPT, ACCEPT_JSON, REFUSE, UNDECIDED = "accept", "accept-json", "refuse", "undecided"


def verdict_name(payload: bytes, max_depth: int = 64) -> str:
    assert NATIVE is not None
    code = NATIVE.scan(payload, max_depth, sys.get_int_max_str_digits())
    return {
        NATIVE.ACCEPT: ACCEPT,
        NATIVE.ACCEPT_JSON: ACCEPT_JSON,
        NATIVE.REFUSE: REFUSE,
        NATIVE.UNDECIDED: UNDECIDED,
    }[code]


def nest(depth: int, inner: bytes = b"{}") -> bytes:
    """An object nested ``depth`` levels deep (the top level counts as 1)."""
    return b'{"a":' * (depth - 1) + inner + b"}" * (depth - 1)


DIGITS = sys.get_int_max_str_digits()

CASES = [
    # structure
    pytest.param(b"{}", 64, ACCEPT, id="empty-object"),
    pytest.param(b'{"a":[],"b":{},"c":[{}]}', 64, ACCEPT, id="empty-containers"),
    pytest.param(b'{"a":[1,"x",true,false,null,[-1]]}', 64, ACCEPT, id="every-kind"),
    pytest.param(b"[]", 64, REFUSE, id="top-array"),
    pytest.param(b'"x"', 64, REFUSE, id="top-string"),
    pytest.param(b"1", 64, REFUSE, id="top-number"),
    pytest.param(b"null", 64, REFUSE, id="top-null"),
    pytest.param(b"", 64, REFUSE, id="empty"),
    pytest.param(b"{", 64, REFUSE, id="open"),
    pytest.param(b'{"a":1', 64, REFUSE, id="truncated"),
    pytest.param(b'{"a":1}{}', 64, REFUSE, id="trailing-data"),
    pytest.param(b'{"a":1}}', 64, REFUSE, id="extra-close"),
    pytest.param(b'{"a"}', 64, REFUSE, id="no-colon"),
    pytest.param(b'{"a":}', 64, REFUSE, id="no-value"),
    pytest.param(b'{"a":1,}', 64, REFUSE, id="trailing-comma"),
    pytest.param(b'{"a":[1,]}', 64, REFUSE, id="array-trailing-comma"),
    pytest.param(b'{"a":[,1]}', 64, REFUSE, id="array-leading-comma"),
    pytest.param(b'{"a":[1]]}', 64, REFUSE, id="mismatched-close"),
    pytest.param(b'{"a":{]}', 64, REFUSE, id="object-closed-by-bracket"),
    pytest.param(b'{"a":"x}', 64, REFUSE, id="unterminated-string"),
    pytest.param(b'{"a":"\\', 64, REFUSE, id="ends-in-backslash"),
    pytest.param(b"{1:2}", 64, REFUSE, id="number-key"),
    # whitespace, BOM
    pytest.param(b'{ "a":1}', 64, REFUSE, id="space"),
    pytest.param(b'{"a": 1}', 64, REFUSE, id="space-after-colon"),
    pytest.param(b'{"a":1}\n', 64, REFUSE, id="trailing-newline"),
    pytest.param(b'{"a":1} ', 64, REFUSE, id="trailing-space"),
    pytest.param(b'{"a":[1] }', 64, REFUSE, id="space-before-close"),
    pytest.param(b' {"a":1}', 64, REFUSE, id="leading-space"),
    pytest.param(b"\xef\xbb\xbf{}", 64, REFUSE, id="bom"),
    pytest.param(b'{"a":"\xef\xbb\xbf"}', 64, ACCEPT, id="bom-inside-string"),
    # depth: the top level counts as 1
    pytest.param(nest(5), 5, ACCEPT, id="depth-exactly-max"),
    pytest.param(nest(6), 5, REFUSE, id="depth-max-plus-1"),
    pytest.param(b'{"a":[[[]]]}', 4, ACCEPT, id="array-depth-exactly-max"),
    pytest.param(b'{"a":[[[]]]}', 3, REFUSE, id="array-depth-max-plus-1"),
    pytest.param(b"{}", 1, ACCEPT, id="depth-1"),
    pytest.param(b'{"a":[]}', 1, REFUSE, id="depth-1-nested"),
    pytest.param(nest(64), 64, ACCEPT, id="depth-64"),
    pytest.param(b"[" * 10_000, 64, REFUSE, id="deep-unterminated"),
    # keys: strictly increasing by code point, escapes compared as what they stand for
    pytest.param(b'{"a":1,"b":2}', 64, ACCEPT, id="sorted"),
    pytest.param(b'{"b":1,"a":2}', 64, REFUSE, id="unsorted"),
    pytest.param(b'{"a":1,"a":2}', 64, REFUSE, id="duplicate"),
    pytest.param(b'{"a":1,"ab":2}', 64, ACCEPT, id="prefix-first"),
    pytest.param(b'{"ab":1,"a":2}', 64, REFUSE, id="prefix-second"),
    pytest.param(b'{"":1,"a":2}', 64, ACCEPT, id="empty-key"),
    pytest.param(b'{"a\\"":1,"a#":2}', 64, ACCEPT, id="escaped-quote-sorts-as-quote"),
    pytest.param(b'{"a#":1,"a\\"":2}', 64, REFUSE, id="escaped-quote-unsorted"),
    pytest.param(b'{"a\\\\":1,"a]":2}', 64, ACCEPT, id="escaped-backslash-sorts-as-backslash"),
    pytest.param(b'{"a]":1,"a\\\\":2}', 64, REFUSE, id="escaped-backslash-unsorted"),
    pytest.param(b'{"a":{"y":1,"x":2},"b":0}', 64, REFUSE, id="unsorted-inner"),
    pytest.param(b'{"a":{"k":1,"k":2}}', 64, REFUSE, id="duplicate-inner"),
    pytest.param(b'{"a":{"x":1},"b":{"x":1}}', 64, ACCEPT, id="same-key-other-objects"),
    # one reading: ASCII case
    pytest.param(b'{"A":1,"b":2}', 64, ACCEPT, id="upper-no-collision"),
    pytest.param(b'{"A":1,"a":2}', 64, REFUSE, id="a-vs-A"),
    pytest.param(b'{"A":1,"B":2,"a":3}', 64, REFUSE, id="a-vs-A-apart"),
    pytest.param(b'{"Ab":1,"aB":2}', 64, REFUSE, id="mixed-case"),
    pytest.param(b'{"x":{"K":1,"k":2}}', 64, REFUSE, id="collision-inner"),
    pytest.param(b'{"K":{"k":1},"a":{"K":1}}', 64, ACCEPT, id="same-fold-other-objects"),
    pytest.param(b'{"@":1,"`":2}', 64, ACCEPT, id="around-the-letters"),
    pytest.param(b'{"[":1,"{":2}', 64, ACCEPT, id="brackets-are-not-letters"),
    pytest.param(b'{"A\\"":1,"a\\"":2}', 64, REFUSE, id="collision-with-escape"),
    pytest.param(b'{"ABCDEFGHIJKL":1,"abcdefghijkl":2}', 64, REFUSE, id="collision-long"),
    pytest.param(b'{"ABCDEFGHIJKL":1,"abcdefghijkm":2}', 64, ACCEPT, id="no-collision-long"),
    # non-ASCII keys: NFKC and case folding stay with Python
    pytest.param(b'{"\xc3\xa9":1}', 64, UNDECIDED, id="non-ascii-key"),
    pytest.param(b'{"k":1,"\xe2\x84\xaa":2}', 64, UNDECIDED, id="kelvin-sign-key"),
    pytest.param(b'{"a":"\xc3\xa9"}', 64, ACCEPT, id="non-ascii-value"),
    # strings: only \" and \\ escapes, everything else raw
    pytest.param(b'{"a":"\\"\\\\"}', 64, ACCEPT, id="quote-and-backslash-escapes"),
    pytest.param(b'{"a":"\\/"}', 64, REFUSE, id="escaped-slash"),
    pytest.param(b'{"a":"\\n"}', 64, REFUSE, id="escaped-newline"),
    pytest.param(b'{"a":"\\u0061"}', 64, REFUSE, id="escaped-a"),
    pytest.param(b'{"a":"\\u007f"}', 64, REFUSE, id="escaped-del"),
    pytest.param(b'{"a":"\\ud83d\\ude00"}', 64, REFUSE, id="escaped-surrogates"),
    pytest.param(b'{"a":"\x7f"}', 64, ACCEPT, id="raw-del"),
    pytest.param(b'{"a":"\x00\x01\n\t\x1f"}', 64, ACCEPT_JSON, id="raw-control-chars"),
    pytest.param(b'{"\n":1}', 64, ACCEPT_JSON, id="raw-control-in-key"),
    pytest.param(b'{"a":"\xe2\x80\xa8"}', 64, ACCEPT, id="raw-line-separator"),
    # integers: -?(0|[1-9][0-9]*), never -0
    pytest.param(b'{"a":0}', 64, ACCEPT, id="zero"),
    pytest.param(b'{"a":-1}', 64, ACCEPT, id="negative"),
    pytest.param(b'{"a":-10}', 64, ACCEPT, id="negative-10"),
    pytest.param(b'{"a":-0}', 64, REFUSE, id="minus-zero"),
    pytest.param(b'{"a":01}', 64, REFUSE, id="leading-zero"),
    pytest.param(b'{"a":-01}', 64, REFUSE, id="negative-leading-zero"),
    pytest.param(b'{"a":00}', 64, REFUSE, id="double-zero"),
    pytest.param(b'{"a":-}', 64, REFUSE, id="lone-minus"),
    pytest.param(b'{"a":+1}', 64, REFUSE, id="plus"),
    pytest.param(b'{"a":1.0}', 64, REFUSE, id="float-1.0"),
    pytest.param(b'{"a":1e5}', 64, REFUSE, id="float-1e5"),
    pytest.param(b'{"a":1E5}', 64, REFUSE, id="float-1E5"),
    pytest.param(b'{"a":-0.5}', 64, REFUSE, id="float-negative"),
    pytest.param(b'{"a":NaN}', 64, REFUSE, id="nan"),
    pytest.param(b'{"a":Infinity}', 64, REFUSE, id="infinity"),
    pytest.param(b'{"a":-Infinity}', 64, REFUSE, id="minus-infinity"),
    pytest.param(b'{"a":999999999999999999}', 64, ACCEPT, id="18-digits"),
    pytest.param(b'{"a":-999999999999999999}', 64, ACCEPT, id="minus-18-digits"),
    pytest.param(b'{"a":9223372036854775807}', 64, ACCEPT_JSON, id="int64-max"),
    pytest.param(b'{"a":18446744073709551616}', 64, ACCEPT_JSON, id="2**64"),
    pytest.param(b'{"a":-9223372036854775809}', 64, ACCEPT_JSON, id="below-int64"),
    pytest.param(b'{"a":' + b"9" * DIGITS + b"}", 64, ACCEPT_JSON, id="int-max-str-digits"),
    pytest.param(b'{"a":-' + b"9" * DIGITS + b"}", 64, ACCEPT_JSON, id="neg-int-max-str-digits"),
    pytest.param(b'{"a":1' + b"0" * DIGITS + b"}", 64, REFUSE, id="int-max-str-digits+1"),
    # literals
    pytest.param(b'{"a":true,"b":false,"c":null}', 64, ACCEPT, id="literals"),
    pytest.param(b'{"a":tru}', 64, REFUSE, id="tru"),
    pytest.param(b'{"a":True}', 64, REFUSE, id="True"),
    pytest.param(b'{"a":nul', 64, REFUSE, id="nul-truncated"),
    pytest.param(b'{"a":nulll}', 64, REFUSE, id="nulll"),
    # UTF-8: strict, as Python's decoder
    pytest.param(b'{"a":"\xc2\x80\xdf\xbf"}', 64, ACCEPT, id="utf8-2-byte-bounds"),
    pytest.param(b'{"a":"\xe0\xa0\x80\xef\xbf\xbf"}', 64, ACCEPT, id="utf8-3-byte-bounds"),
    pytest.param(b'{"a":"\xed\x9f\xbf\xee\x80\x80"}', 64, ACCEPT, id="utf8-around-surrogates"),
    pytest.param(b'{"a":"\xf0\x90\x80\x80\xf4\x8f\xbf\xbf"}', 64, ACCEPT, id="utf8-4-byte-bounds"),
    pytest.param(b'{"a":"\x80"}', 64, REFUSE, id="utf8-lone-continuation"),
    pytest.param(b'{"a":"\xc0\xaf"}', 64, REFUSE, id="utf8-overlong-c0"),
    pytest.param(b'{"a":"\xc1\xbf"}', 64, REFUSE, id="utf8-overlong-c1"),
    pytest.param(b'{"a":"\xe0\x9f\xbf"}', 64, REFUSE, id="utf8-overlong-3"),
    pytest.param(b'{"a":"\xf0\x8f\xbf\xbf"}', 64, REFUSE, id="utf8-overlong-4"),
    pytest.param(b'{"a":"\xed\xa0\x80"}', 64, REFUSE, id="utf8-surrogate-d800"),
    pytest.param(b'{"a":"\xed\xbf\xbf"}', 64, REFUSE, id="utf8-surrogate-dfff"),
    pytest.param(b'{"a":"\xf4\x90\x80\x80"}', 64, REFUSE, id="utf8-above-10ffff"),
    pytest.param(b'{"a":"\xf5\x80\x80\x80"}', 64, REFUSE, id="utf8-f5"),
    pytest.param(b'{"a":"\xff"}', 64, REFUSE, id="utf8-ff"),
    pytest.param(b'{"a":"\xc3"}', 64, REFUSE, id="utf8-truncated-2"),
    pytest.param(b'{"a":"\xe2\x82"}', 64, REFUSE, id="utf8-truncated-3"),
    pytest.param(b'{"a":"\xe2\x82\x41"}', 64, REFUSE, id="utf8-bad-continuation"),
    pytest.param(b'{"a":"\xf0\x9f\x98', 64, REFUSE, id="utf8-truncated-at-end"),
    pytest.param(b'{"a":1,"\xc3\xa9":\xff}', 64, UNDECIDED, id="non-ascii-key-first"),
    pytest.param(b'{"a":1}\xc3\xa9', 64, REFUSE, id="utf8-after-end"),
]


@pytest.mark.parametrize(("payload", "max_depth", "expected"), CASES)
def test_hand_case(payload: bytes, max_depth: int, expected: str) -> None:
    assert verdict_name(payload, max_depth) == expected
    check_one(payload, max_depth)  # and the reference agrees, reasons included


def test_refusals_keep_the_reference_reason() -> None:
    """Spot checks that the reason shown is the reference's own words."""
    for payload, reason in [
        (b'{"b":1,"a":2}', r"keys are not sorted \('b' before 'a'\)"),
        (b'{"a":"\\/"}', r"escape sequence '\\\\/' at byte 6"),
        (b'{"A":1,"a":2}', r"keys 'A' and 'a' in the object at the top level"),
        (b'{"a":"\xed\xa0\x80"}', r"not valid UTF-8 at byte 6"),
        (nest(65), r"nested deeper than 64 levels"),
    ]:
        with pytest.raises(PayloadError, match=reason):
            _canonical.parse_canonical(payload)


def test_bin_of_pep_458_size_is_accepted_natively(make_bin: BinFactory) -> None:
    """python-tuf's own bytes for a ~54 KB bin: the scan decides them, and reads them alike."""
    payload = make_bin().signed_bytes
    assert len(payload) > 50_000
    assert verdict_name(payload) == ACCEPT
    check_one(payload)


@pytest.mark.parametrize(
    ("paths", "expected"),
    [
        pytest.param(["a/Pkg-1.tar.gz", "a/pkg-2.tar.gz"], ACCEPT, id="upper-case-paths"),
        pytest.param(["a/Pkg-1.tar.gz", "a/pkg-1.tar.gz"], REFUSE, id="paths-differ-in-case"),
    ],
)
def test_target_paths_in_case(paths: list[str], expected: str) -> None:
    files = {p: TargetFile(length=1, hashes={"sha256": "00" * 32}, path=p) for p in paths}
    payload = Metadata(Targets(version=1, targets=files)).signed_bytes
    assert verdict_name(payload) == expected
    check_one(payload)


def test_orjson_and_json_read_canonical_input_alike() -> None:
    """On ACCEPT the object comes from orjson: same types and order as the json decoder."""
    payload = SEEDS[2]
    assert verdict_name(payload) == ACCEPT
    assert same(_canonical.parse_canonical(payload), _canonical._DECODER.decode(payload.decode()))


def test_native_switch_off_runs_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """TUF_SIGNER_NATIVE=0 (read at import) leaves ``_scan`` unset: the reference runs."""
    env = {**os.environ, "TUF_SIGNER_NATIVE": "0"}
    code = "from tuf_signer.policy import _canonical; print(_canonical._scan is None)"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "True"
    # Without the scan, a raw control character takes the reference's exact path.
    monkeypatch.setattr(_canonical, "_scan", None)
    with pytest.raises(_canonical.NeedsExactCheck):
        _canonical.parse_canonical(b'{"a":"\x01"}', exact=False)


def test_accept_json_needs_no_exact_fallback() -> None:
    """The native check decides raw control characters itself, even with exact=False."""
    assert _canonical.parse_canonical(b'{"a":"\x01"}', exact=False) == {"a": "\x01"}


def test_the_event_loop_runs_the_reference_only_on_small_payloads() -> None:
    """Above REFERENCE_INLINE_BYTES, exact=False accepts only what the native scan accepts.

    A non-ASCII key is left to the reference (NFKC and case folding), which
    costs ~27 ms for a hostile 256 KiB shape: on the event loop only up to
    64 KiB; a larger one goes to a checker process (NeedsExactCheck).
    """
    limit = _canonical.REFERENCE_INLINE_BYTES

    def sized(key: str, size: int) -> tuple[bytes, dict[str, str]]:
        obj = {key: "a" * (size - len(encode_canonical({key: ""}).encode()))}
        return encode_canonical(obj).encode(), obj

    (small, small_obj), (large, large_obj) = sized("\u00e9", limit), sized("\u00e9", limit + 1)
    assert (len(small), len(large)) == (limit, limit + 1)
    assert _canonical.parse_canonical(small, exact=False) == small_obj
    with pytest.raises(_canonical.NeedsExactCheck):
        _canonical.parse_canonical(large, exact=False)
    assert _canonical.parse_canonical(large) == large_obj  # exact: the reference decides
    # What the native scan accepts stays inline at any size.
    ascii_large, ascii_obj = sized("k", 4 * limit)
    assert _canonical.parse_canonical(ascii_large, exact=False) == ascii_obj


# --- differential properties --------------------------------------------------------

DIFF = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
ASCII_KEYS = st.text(st.characters(min_codepoint=0, max_codepoint=127), max_size=8)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | TEXT
)


def values(keys: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    return st.recursive(
        SCALARS,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
        max_leaves=25,
    )


def canonical(value: Any) -> bytes:
    encoded = encode_canonical(value)
    assert isinstance(encoded, str)
    return encoded.encode("utf-8")


def sorted_deep(value: Any) -> Any:
    """``value`` with the keys of every object in canonical order."""
    if isinstance(value, dict):
        return {k: sorted_deep(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [sorted_deep(v) for v in value]
    return value


def lower_keys_only(value: Any) -> Any:
    """``value`` with every key lower-cased and de-duplicated: nothing folds together."""
    if isinstance(value, dict):
        return {k.lower(): lower_keys_only(v) for k, v in value.items()}
    if isinstance(value, list):
        return [lower_keys_only(v) for v in value]
    return value


@DIFF
@given(st.dictionaries(ASCII_KEYS, values(ASCII_KEYS), max_size=6))
def test_encode_canonical_output_is_accepted_alike(obj: dict[str, Any]) -> None:
    """securesystemslib's own output, ASCII keys distinct under case: ACCEPT, same object."""
    obj = lower_keys_only(obj)
    payload = canonical(obj)
    assert verdict_name(payload) in (ACCEPT, ACCEPT_JSON)
    check_one(payload)
    assert same(_canonical.parse_canonical(payload), sorted_deep(obj))


@DIFF
@given(st.dictionaries(TEXT, values(TEXT), max_size=6))
def test_any_keys_agree_with_the_reference(obj: dict[str, Any]) -> None:
    """Unicode keys and case collisions: whatever the verdict, the reference agrees."""
    check_one(canonical(obj))


# Single bytes, and the short sequences each class of refusal needs.
MUTATION_BYTES = st.sampled_from(
    [bytes([c]) for c in b' \t\n\r"\\/{}[],:-0123456789.eEtfnulA']
    + [bytes([c]) for c in (0x00, 0x1F, 0x7F, 0x80, 0xC3, 0xED, 0xFF)]
    + [b"\\/", b"\\n", b"\\u0061", b"\\\\", b'\\"', b"-0", b"1.0", b"1e5", b"01", b"\xef\xbb\xbf"]
    + [
        b"\xed\xa0\x80",
        b"\xc0\xaf",
        b"\xf4\x90\x80\x80",
        b"\xe0\x9f\xbf",
        b"\xc3\xa9",
        b"[[",
        b"]]",
    ]
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """Canonical bytes, then a few byte flips, insertions, deletions, key swaps or repeats."""
    obj = draw(st.dictionaries(ASCII_KEYS, values(ASCII_KEYS), min_size=1, max_size=6))
    if draw(st.booleans()):
        obj = lower_keys_only(obj)
    data = bytearray(canonical(obj))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "swap", "dup", "case"]))
        at = draw(st.integers(0, len(data)))
        if kind == "insert" or not data:
            data[at:at] = draw(MUTATION_BYTES)
        elif kind == "flip":
            data[min(at, len(data) - 1)] ^= 1 << draw(st.integers(0, 7))
        elif kind == "delete":
            del data[min(at, len(data) - 1)]
        elif kind == "case":
            data[at:] = data[at:].swapcase()
        elif kind == "dup":
            # The top level's first member twice (a duplicate key).
            members = canonical_members(obj)
            data = bytearray(b"{" + b",".join([members[0], *members]) + b"}")
        else:
            # Swap the top level's first two members (keys out of order).
            members = canonical_members(obj)
            if len(members) >= 2:
                members[0], members[1] = members[1], members[0]
                data = bytearray(b"{" + b",".join(members) + b"}")
    return bytes(data)


def canonical_members(obj: dict[str, Any]) -> list[bytes]:
    return [canonical({k: v})[1:-1] for k, v in sorted(obj.items())]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(), st.sampled_from([64, 2, 3]))
def test_mutations_agree_with_the_reference(payload: bytes, max_depth: int) -> None:
    check_one(payload, max_depth)


# Near-canonical text from a grammar: every scalar, key spelling and member order
# that canonical JSON allows, mixed with the ones it refuses.
CANONICAL_SCALARS = (b"0", b"7", b"-1", b"-10", b"true", b"false", b"null", b'""', b'"x"')
CANONICAL_SCALARS += (b'"\\\\"', b'"\\""', b'"\x01\x7f"', b'"\xc3\xa9"', b"18446744073709551616")
CANONICAL_SCALARS += (b"9" * DIGITS, b'"\xe0\xa0\x80\xf0\x90\x80\x80\xf4\x8f\xbf\xbf"')
OTHER_SCALARS = (b"-0", b"01", b"1.0", b"1e5", b"nul", b"NaN", b'"\\/"', b'"\\u0061"', b"[1,]")
OTHER_SCALARS += (b'"\xed\xa0\x80"', b'"\xc0\xaf"', b" 1", b"1 ", b'"\xef\xbb\xbf"', b'"x')
OTHER_SCALARS += (
    b"1" + b"0" * DIGITS,
    b'"\xe0\x9f\xbf"',
    b'"\xf0\x8f\xbf\xbf"',
    b'"\xf4\x90\x80\x80"',
)
SCALAR_TEXTS = st.sampled_from([*CANONICAL_SCALARS, *OTHER_SCALARS])
KEY_TEXT = st.text(st.sampled_from('aAbB"\\\x01\u00e9'), max_size=3) | st.text(
    st.sampled_from("aAbB"), min_size=8, max_size=20
)


def _key(key: str) -> bytes:
    return b'"' + key.replace("\\", "\\\\").replace('"', '\\"').encode() + b'"'


def _object_text(members: list[tuple[str, bytes]], order: str, twin: bool) -> bytes:
    if twin and members:  # a key and its case twin: the one-reading rule
        members = [*members, (members[0][0].swapcase(), members[0][1])]
    if order == "sorted":
        members = sorted(members, key=lambda m: m[0])
    elif order == "sorted-unique":
        members = sorted(dict(members).items())
    return b"{" + b",".join(_key(k) + b":" + v for k, v in members) + b"}"


NEAR_VALUE: st.SearchStrategy[bytes] = st.deferred(
    lambda: (
        SCALAR_TEXTS
        | st.lists(NEAR_VALUE, max_size=3).map(lambda xs: b"[" + b",".join(xs) + b"]")
        | NEAR_OBJECT
    )
)
NEAR_OBJECT: st.SearchStrategy[bytes] = st.builds(
    _object_text,
    st.lists(st.tuples(KEY_TEXT, NEAR_VALUE), max_size=4),
    st.sampled_from(["sorted-unique", "sorted-unique", "sorted", "as-drawn"]),
    st.booleans(),
)
NEAR_PAYLOAD = st.builds(
    bytes.__add__, NEAR_OBJECT, st.sampled_from([b"", b"", b"", b" ", b"\n", b"{}", b"\x00"])
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(NEAR_PAYLOAD, st.sampled_from([64, 2, 3]))
def test_near_canonical_text_agrees_with_the_reference(payload: bytes, max_depth: int) -> None:
    check_one(payload, max_depth)


def test_mutations_reach_every_verdict() -> None:
    """The mutation strategy is not vacuous: it makes accepted and refused payloads."""
    seen: Counter[str] = Counter()

    @settings(max_examples=150, deadline=None, database=None)
    @given(mutated())
    def count(payload: bytes) -> None:
        seen[verdict_name(payload)] += 1

    count()
    assert seen[REFUSE] > 25 and seen[ACCEPT] + seen[ACCEPT_JSON] > 5, seen

    near: Counter[str] = Counter()

    @settings(max_examples=150, deadline=None, database=None)
    @given(NEAR_OBJECT)
    def count_near(payload: bytes) -> None:
        near[verdict_name(payload)] += 1

    count_near()
    assert near[REFUSE] > 25 and near[ACCEPT] + near[ACCEPT_JSON] > 10 and near[UNDECIDED], near


# --- atheris (libFuzzer), bounded ----------------------------------------------------

FUZZ_SECONDS = 20


def test_atheris_bounded(tmp_path: Path) -> None:
    """``fuzz_canonical.py`` under atheris for FUZZ_SECONDS: no disagreement, no crash."""
    corpus = tmp_path / "corpus"
    write_seeds(corpus)
    harness = Path(__file__).with_name("fuzz_canonical.py")
    run_atheris(harness, tmp_path, FUZZ_SECONDS, "-max_len=4096", str(corpus))


# --- target paths only: check_sign_request's lighter parse (issue 16) ---------------------

TARGETS_HEAD = b'{"_type":"targets",'

SPAN_CASES = [
    pytest.param(
        TARGETS_HEAD + b'"targets":{"a":{"length":1},"b":2},"version":1}',
        b'{"a":{"length":1},"b":2}',
        ["a", "b"],
        id="bin",
    ),
    pytest.param(TARGETS_HEAD + b'"targets":{}}', b"{}", [], id="empty"),
    pytest.param(
        TARGETS_HEAD + b'"targets":{"a\\"b":1,"a\\\\c":{"d":{}},"z":[]}}',
        b'{"a\\"b":1,"a\\\\c":{"d":{}},"z":[]}',
        ['a"b', "a\\c", "z"],
        id="escaped-paths",
    ),
    pytest.param(
        TARGETS_HEAD + b'"delegations":{"targets":{"x":1}},"targets":{"y":1}}',
        b'{"y":1}',
        ["y"],
        id="nested-targets-key-ignored",
    ),
    # The value after "targets" is not an object: a later object is not taken for it.
    pytest.param(TARGETS_HEAD + b'"targets":"x","z":{"a":1}}', None, None, id="string"),
    pytest.param(TARGETS_HEAD + b'"targets":[{"a":1}],"z":{"a":1}}', None, None, id="array"),
    pytest.param(TARGETS_HEAD + b'"targets":null,"z":{"a":1}}', None, None, id="null"),
    pytest.param(b'{"_type":"snapshot","targets":{"a":1}}', None, None, id="other-type"),
    pytest.param(b'{"_type":"targetsx","targets":{"a":1}}', None, None, id="type-prefix"),
    pytest.param(b'{"_type":["targets"],"targets":{"a":1}}', None, None, id="type-array"),
    pytest.param(b'{"targets":{"a":1}}', None, None, id="no-type"),
    pytest.param(b'{"a":{"_type":"targets","targets":{"a":1}}}', None, None, id="deeper"),
    pytest.param(TARGETS_HEAD + b'"targets":{"a":1.5}}', None, None, id="refused"),
    pytest.param(TARGETS_HEAD + b'"targets":{"a":"\x01"}}', None, None, id="accept-json"),
    pytest.param(TARGETS_HEAD + b'"targets":{"\xc3\xa9":1}}', None, None, id="undecided"),
]


@pytest.mark.parametrize(("payload", "span", "paths"), SPAN_CASES)
def test_scan_targets_span_and_paths(
    payload: bytes, span: bytes | None, paths: list[str] | None
) -> None:
    assert NATIVE is not None
    verdict, start, end, found = NATIVE.scan_targets(payload, 64, DIGITS)
    assert verdict == NATIVE.scan(payload, 64, DIGITS)
    if span is None:
        assert (start, end, found) == (-1, -1, None)
        return
    assert verdict == NATIVE.ACCEPT
    assert payload[start:end] == span
    assert found is not None and list(found.items()) == [(p, None) for p in paths or []]


def test_scan_targets_checks_its_arguments() -> None:
    assert NATIVE is not None
    with pytest.raises(TypeError, match="scan_targets: payload must be bytes"):
        NATIVE.scan_targets(bytearray(b"{}"), 64, DIGITS)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_depth must be >= 1"):
        NATIVE.scan_targets(b"{}", 0, DIGITS)


def light_form(payload: bytes, full: dict[str, Any]) -> dict[str, Any]:
    """What ``target_paths_only`` must give for ``payload``, which parses to ``full``."""
    assert NATIVE is not None
    targets = full.get("targets")
    if (
        _canonical._scan_targets is None  # TUF_SIGNER_NATIVE=0
        or NATIVE.scan(payload, 64, DIGITS) != NATIVE.ACCEPT
        or full.get("_type") != "targets"
        or not isinstance(targets, dict)
    ):
        return full
    return {k: dict.fromkeys(targets) if k == "targets" else v for k, v in full.items()}


def parse_outcome(payload: bytes, **options: Any) -> Any:
    try:
        obj = _canonical.parse_canonical(payload, **options)
    except PayloadError as e:
        return ("refused", str(e))
    targets = obj.get("targets")
    return ("parsed", obj, list(obj), list(targets) if isinstance(targets, dict) else None)


def test_bin_parses_light_natively(make_bin: BinFactory) -> None:
    payload = make_bin().signed_bytes
    full = _canonical.parse_canonical(payload)
    light = _canonical.parse_canonical(payload, target_paths_only=True)
    assert light == light_form(payload, full)
    if _canonical._scan_targets is not None:
        assert light != full
    assert list(light) == list(full) and list(light["targets"]) == list(full["targets"])


def mostly(common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any]) -> Any:
    """``common`` 4 times in 5, else ``rare``."""
    return st.integers(0, 4).flatmap(lambda k: common if k else rare)


# Mostly printable ASCII, which the scan accepts; some up to U+017F, left to the reference.
TARGET_PATHS = mostly(
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=10),
    st.text(st.characters(min_codepoint=32, max_codepoint=0x17F), max_size=10),
)
PRINTABLE = st.text(st.characters(min_codepoint=32, max_codepoint=0x17F), max_size=12)
# Values the scan mostly accepts (no control characters, 64-bit integers), and any.
PLAIN_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | PRINTABLE,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(st.characters(min_codepoint=32, max_codepoint=126)), inner)
    ),
    max_leaves=10,
)
TARGET_VALUES = mostly(PLAIN_VALUES, values(ASCII_KEYS)) | st.fixed_dictionaries(
    {
        "hashes": st.dictionaries(
            st.sampled_from(["sha256", "blake2b-256"]), PRINTABLE, max_size=2
        ),
        "length": st.integers(min_value=-1, max_value=2**64),
    }
)


@DIFF
@given(
    st.sampled_from(["targets"] * 4 + ["snapshot", "Targets"]),
    st.integers(0, 9).flatmap(
        lambda k: (
            st.dictionaries(TARGET_PATHS, TARGET_VALUES, max_size=6)
            if k < 7
            else st.just({}) | SCALARS | st.lists(SCALARS, max_size=2)
        )
    ),
    st.just({}) | st.dictionaries(ASCII_KEYS, PLAIN_VALUES | values(ASCII_KEYS), max_size=3),
)
def test_target_paths_only_parses_alike(type_: str, targets: Any, extra: dict[str, Any]) -> None:
    """Same verdict and reason; accepted, the same object but each target's value None."""
    payload = canonical({**extra, "_type": type_, "targets": targets})
    full = parse_outcome(payload)
    light = parse_outcome(payload, target_paths_only=True)
    if full[0] == "refused":
        assert light == full
    else:
        assert light == ("parsed", light_form(payload, full[1]), full[2], full[3])


# check_sign_request with the light parse against the full one: same role, fields and
# rule, or the same error and reason, over bins, top-level targets, empty and odd shapes.

DAY = 86400
BINS = BinsDelegation("bins", 8)
RULE_SETS = [
    pep458_online_rules(BINS),
    (RoleRule("targets", DAY), RoleRule("other", DAY), RoleRule("bins-*", DAY)),
    (RoleRule("timestamp", DAY), RoleRule("snapshot", DAY)),
]


def _in_bin(n: int) -> st.SearchStrategy[str]:
    """Paths that hash into bin ``n`` of BINS, or anywhere."""
    return (
        st.integers(0, 10**6)
        .map(lambda i: f"packages/{i}/dist-{i}.tar.gz")
        .filter(lambda p: n < 0 or bin_for_path(BINS, p) == f"bins-{n:02x}")
    )


EXPIRES = "2025-06-02T00:00:00Z"


@st.composite
def targets_payloads(draw: st.DrawFn) -> bytes:
    shape = draw(st.sampled_from(["bin", "scattered", "empty", "top", "odd"]))
    value = st.one_of(TARGET_VALUES, st.just({"hashes": {"sha256": "ab"}, "length": 1}))
    paths: st.SearchStrategy[str]
    paths = _in_bin(draw(st.sampled_from([0, 0xC1, 0xFF]))) if shape == "bin" else _in_bin(-1)
    if shape == "odd":
        paths = TARGET_PATHS | paths
    targets: Any = (
        {} if shape in ("empty", "top") else draw(st.dictionaries(paths, value, max_size=5))
    )
    signed: dict[str, Any] = {
        "_type": draw(st.sampled_from(["targets", "targets", "snapshot"])),
        "spec_version": draw(st.sampled_from(["1.0.31"] * 5 + ["2.0.0"])),
        "version": draw(st.sampled_from([1, 2, 3, 4, 5, 0])),
        "expires": draw(st.sampled_from([EXPIRES] * 5 + ["2024-01-01T00:00:00Z"])),
        "targets": targets,
    }
    if shape == "top" or (shape == "odd" and draw(st.booleans())):
        prefix, bits = draw(st.sampled_from([("bins", 8), ("bins", 9), ("other", 8)]))
        signed["delegations"] = {
            "keys": {},
            "succinct_roles": {
                "bit_length": bits,
                "keyids": [],
                "name_prefix": prefix,
                "threshold": 1,
            },
        }
    if shape == "odd":
        signed.update(draw(st.dictionaries(ASCII_KEYS, values(ASCII_KEYS), max_size=2)))
        if draw(st.booleans()):
            signed["targets"] = draw(SCALARS | st.lists(SCALARS, max_size=2))
    return canonical(signed)


def sign_outcome(payload: bytes, role: str | None, bins: Any, rules: Any) -> tuple[Any, ...]:
    try:
        return (
            "ok",
            *check_sign_request(
                payload, role, "k", rules, NOW, 1 << 20, bins=bins, max_clock_skew=5
            ),
        )
    except TufSignerError as e:
        return ("error", type(e), str(e))


def _full_parse(payload: bytes, *, exact: bool, target_paths_only: bool) -> dict[str, Any]:
    assert target_paths_only
    return _canonical.parse_canonical(payload, exact=exact)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    targets_payloads(),
    st.sampled_from([None, "", "targets", "other", "bins-00", "bins-c1", "bins-ff", "bins-1"]),
    st.sampled_from([BINS, None]),
    st.sampled_from(RULE_SETS),
)
def test_sign_checks_agree_with_the_full_parse(
    payload: bytes, role: str | None, bins: Any, rules: Any
) -> None:
    light = sign_outcome(payload, role, bins, rules)
    saved = _checks.parse_canonical
    _checks.parse_canonical = _full_parse  # type: ignore[assignment]
    try:
        full = sign_outcome(payload, role, bins, rules)
    finally:
        _checks.parse_canonical = saved
    assert light == full


def test_sign_checks_parse_target_paths_only(
    make_bin: BinFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """check_sign_request asks for the light parse (and the bin is read through it)."""
    if _canonical._scan_targets is None:
        pytest.skip("TUF_SIGNER_NATIVE=0: the reference parses everything")
    seen: list[dict[str, Any]] = []

    def spy(payload: bytes, **options: Any) -> dict[str, Any]:
        seen.append(_canonical.parse_canonical(payload, **options))
        return seen[-1]

    monkeypatch.setattr(_checks, "parse_canonical", spy)
    md = make_bin(bins=("bins", 8), role="bins-c1")
    rules = pep458_online_rules(BINS)
    role, _, _ = check_sign_request(md.signed_bytes, None, "k", rules, NOW, 1 << 20, bins=BINS)
    assert role == "bins-c1"
    assert seen and all(v is None for v in seen[0]["targets"].values()) and seen[0]["targets"]
