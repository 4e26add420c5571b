"""parse_canonical: exactly OLPC canonical JSON (securesystemslib / python-tuf), nothing else."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from securesystemslib.formats import encode_canonical
from tuf.api.metadata import Metadata, Targets

from tuf_signer.errors import PayloadError
from tuf_signer.policy import parse_canonical

from .conftest import BinFactory, fold_free

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def canonical(value: Any) -> bytes:
    encoded = encode_canonical(value)
    assert isinstance(encoded, str)
    return encoded.encode("utf-8")


def nest(depth: int) -> bytes:
    """An object nested ``depth`` levels deep (the top level counts as 1)."""
    return b'{"a":' * (depth - 1) + b"{}" + b"}" * (depth - 1)


# --- refusals --------------------------------------------------------------------

REFUSALS = [
    pytest.param(b'{"a":"\xff"}', r"not valid UTF-8 at byte 6", id="not-utf8"),
    pytest.param(b'{"a":"\xed\xa0\x80"}', r"not valid UTF-8 at byte 6", id="lone-surrogate"),
    pytest.param(b'{"a":"\xc0\xaf"}', r"not valid UTF-8 at byte 6", id="overlong-utf8"),
    pytest.param(b"\xef\xbb\xbf{}", r"starts with a byte order mark", id="utf8-bom"),
    pytest.param(b"", r"not JSON: Expecting value at byte 0", id="empty"),
    pytest.param(b"{'a':1}", r"not JSON: Expecting property name", id="not-json"),
    pytest.param(b'{"a":1', r"not JSON: Expecting ',' delimiter at byte 6", id="truncated"),
    pytest.param(b'{"a":1}{}', r"not JSON: Extra data at byte 7", id="trailing-data"),
    pytest.param(b'{"a":01}', r"not JSON", id="leading-zero"),
    pytest.param(b"[]", r"top level is an array, not an object", id="array-top-level"),
    pytest.param(b'"x"', r"top level is a string, not an object", id="string-top-level"),
    pytest.param(b"1", r"top level is a number, not an object", id="number-top-level"),
    pytest.param(b"null", r"top level is null, not an object", id="null-top-level"),
    pytest.param(b'{"a":1,"a":1}', r"duplicate object key 'a'", id="duplicate-key-depth-0"),
    pytest.param(
        b'{"a":{"b":{"c":{"d":{"e":{"k":1,"k":2}}}}}}',
        r"duplicate object key 'k'",
        id="duplicate-key-depth-5",
    ),
    pytest.param(
        b'{"a":1,"\\u0061":1}', r"duplicate object key 'a'", id="duplicate-key-via-escape"
    ),
    pytest.param(b'{"a":1.0}', r"float '1\.0'", id="float-1.0"),
    pytest.param(b'{"a":1e3}', r"float '1e3'", id="float-1e3"),
    pytest.param(b'{"a":1E3}', r"float '1E3'", id="float-1E3"),
    pytest.param(b'{"a":[-0.5]}', r"float '-0\.5'", id="float-negative"),
    pytest.param(b'{"a":1e999999}', r"float '1e999999'", id="float-overflow"),
    pytest.param(b'{"a":NaN}', r"has NaN: canonical JSON has no NaN or Infinity", id="nan"),
    pytest.param(b'{"a":Infinity}', r"has Infinity", id="infinity"),
    pytest.param(b'{"a":-Infinity}', r"has -Infinity", id="minus-infinity"),
    pytest.param(b'{"a":1' + b"0" * 5000 + b"}", r"integer literal too long", id="int-5000-digits"),
    pytest.param(b'{ "a":1}', r"not canonical JSON: whitespace at byte 1", id="space"),
    pytest.param(b'{"a":1}\n', r"not canonical JSON: whitespace at byte 7", id="trailing-newline"),
    pytest.param(b'{"a":[1,\t2]}', r"whitespace at byte 8", id="tab"),
    pytest.param(b'{"b":1,"a":2}', r"keys are not sorted \('b' before 'a'\)", id="unsorted"),
    pytest.param(
        b'{"a":{"y":1,"x":2},"b":0}', r"keys are not sorted \('y' before 'x'\)", id="unsorted-inner"
    ),
    pytest.param(
        b'{"B":1,"a":2,"\xc3\xa9":3,"Z":4}', r"not sorted \('\xe9' before 'Z'\)", id="unsorted-uni"
    ),
    pytest.param(
        b'{"a":"\\u00e9"}', r"escape sequence '\\\\u00e9' at byte 6", id="escaped-unicode"
    ),
    pytest.param(b'{"a":"\\/"}', r"escape sequence '\\\\/' at byte 6", id="escaped-solidus"),
    pytest.param(b'{"a":"\\n"}', r"escape sequence '\\\\n' at byte 6", id="escaped-newline"),
    pytest.param(b'{"a":"\\u0000"}', r"escape sequence '\\\\u0000' at byte 6", id="escaped-nul"),
    pytest.param(
        b'{"a":"\\ud800"}', r"escape sequence '\\\\ud800' at byte 6", id="escaped-lone-surrogate"
    ),
    pytest.param(
        b'{"a":"\\ud83d\\ude00"}', r"escape sequence '\\\\ud83d'", id="escaped-surrogate-pair"
    ),
    pytest.param(b'{"a":-0}', r"at byte 5 it has '-0}' where the canonical", id="negative-zero"),
    pytest.param(nest(65), r"nested deeper than 64 levels", id="depth-65"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, r"nested deeper than 64", id="array-bomb-100k"),
    pytest.param(b'{"a":' * 100_000, r"nested deeper than 64", id="object-bomb-unclosed-100k"),
    pytest.param(
        b'{"a":"' + b'\\"[' * 1000 + b'",' + b"[" * 70, r"nested deeper", id="bomb-after-brackets"
    ),
    # Issue 10, finding 2: keys another decoder reads as one (Go's encoding/json
    # folds case with Unicode simple folding; last match wins).
    pytest.param(
        canonical({"expires": "2030-01-01T00:00:00Z", "expire\u017f": "2099-01-01T00:00:00Z"}),
        r"keys 'expires' and 'expire\u017f' \(expire\\u017f\) in the object at the top level: "
        r"they differ only in case or Unicode form",
        id="f2-long-s-expires",
    ),
    pytest.param(
        canonical({"version": 7, "ver\u017fion": 1}),
        r"'version' and 'ver\u017fion'",
        id="f2-long-s-version",
    ),
    pytest.param(
        canonical({"meta": {"snapshot.json": {"version": 1}}, "\u212aeyid": 1, "keyid": 2}),
        r"'keyid' and '\u212aeyid' \(\\u212aeyid\)",
        id="f2-kelvin",
    ),
    pytest.param(
        canonical({"version": 1, "\uff56ersion": 2}),
        r"'version' and '\uff56ersion' \(\\uff56ersion\)",
        id="f2-fullwidth-nfkc",
    ),
    pytest.param(
        canonical({"\ufb01le": 1, "file": 2}), r"'file' and '\ufb01le'", id="f2-ligature-nfkc"
    ),
    pytest.param(
        canonical({"Version": 1, "version": 2}), r"'Version' and 'version'", id="f2-ascii-case"
    ),
    pytest.param(
        canonical({"targets": {"a/Foo.whl": {}, "a/foo.whl": {}}}),
        r"'a/Foo.whl' and 'a/foo.whl' in the object at '/targets'",
        id="f2-target-paths-differ-in-case",
    ),
    pytest.param(
        canonical(
            {
                "delegations": {
                    "roles": [{"name": "a", "paths": ["x"], "\u212aeyids": [], "keyids": []}]
                }
            }
        ),
        r"in the object at '/delegations/roles/0'",
        id="f2-nested-depth",
    ),
    pytest.param(
        canonical({"a": {"b~/c": {"x": {"SS": 1, "\u00df": 2}}}}),
        r"'SS' and '\u00df' \(\\xdf\) in the object at '/a/b~0~1c/x'",
        id="f2-sharp-s-pointer-escaped",
    ),
    pytest.param(
        canonical({"n": 2**70, "x": {"\x00A": 1, "\x00a": 2}}),
        r"'\\x00A' and '\\x00a' in the object at '/x'",
        id="f2-slow-path-also-checked",
    ),
]


@pytest.mark.parametrize(("payload", "reason"), REFUSALS)
def test_refusals(payload: bytes, reason: str) -> None:
    with pytest.raises(PayloadError, match=reason) as excinfo:
        parse_canonical(payload)
    assert excinfo.type is PayloadError
    assert excinfo.value.code == "INVALID_ARGUMENT"
    assert excinfo.value.reason == str(excinfo.value)


def test_max_depth_is_inclusive() -> None:
    assert parse_canonical(nest(64)) == json.loads(nest(64))
    assert parse_canonical(nest(3), max_depth=3) == {"a": {"a": {}}}
    with pytest.raises(PayloadError, match="nested deeper than 2 levels"):
        parse_canonical(nest(3), max_depth=2)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b'{"a":"' + b"[" * 500 + b'"}', id="brackets-in-string"),
        pytest.param(b'{"a":"\\\\' + b"{" * 500 + b'"}', id="brackets-after-escaped-backslash"),
        pytest.param(b'{"a":"\\"' + b"[" * 500 + b'"}', id="brackets-after-escaped-quote"),
    ],
)
def test_brackets_inside_strings_do_not_count(payload: bytes) -> None:
    assert len(parse_canonical(payload)["a"]) >= 500


# --- acceptance ------------------------------------------------------------------

ACCEPTED = [
    pytest.param({}, id="empty-object"),
    pytest.param({"a": 1, "b": [True, False, None], "c": {}}, id="scalars"),
    pytest.param({"n": -(2**70), "m": 2**63}, id="big-ints"),
    pytest.param({"é": 1, "Z": 2, "a": 3, "😀": 4, "\u2028": 5}, id="sorted-by-code-point"),
    pytest.param({"s": 'quote " backslash \\ slash /'}, id="quote-and-backslash-escaped"),
    pytest.param({"s": "raw \x00\x01\n\t\x1f\x7f controls"}, id="raw-control-characters"),
    pytest.param({"s\n": "newline in key"}, id="raw-control-in-key"),
    pytest.param({"s": "\\n is not a newline"}, id="escaped-backslash-then-n"),
    pytest.param({"s": "[[[{{{", "t": [[[]]]}, id="brackets-in-strings"),
]


@pytest.mark.parametrize("value", ACCEPTED)
def test_accepts_canonical(value: dict[str, Any]) -> None:
    assert parse_canonical(canonical(value)) == value


@pytest.mark.parametrize("n_targets", [0, 1, 139, 1000])
def test_accepts_python_tuf_signed_bytes(make_bin: BinFactory, n_targets: int) -> None:
    md = make_bin(n_targets)
    obj = parse_canonical(md.signed_bytes)
    assert obj == md.signed.to_dict()
    assert Metadata(Targets.from_dict(obj)).signed_bytes == md.signed_bytes


def test_python_tuf_non_canonical_serialisations_refused(make_bin: BinFactory) -> None:
    md = make_bin(3)
    signed = md.signed.to_dict()
    for text in (
        json.dumps(signed),
        json.dumps(signed, sort_keys=True),
        json.dumps(signed, separators=(",", ":")),
        json.dumps(signed, indent=1, sort_keys=True),
    ):
        with pytest.raises(PayloadError, match="not canonical JSON"):
            parse_canonical(text.encode())


def test_result_is_a_fresh_dict() -> None:
    payload = canonical({"a": [1]})
    first = parse_canonical(payload)
    first["a"].append(2)
    assert parse_canonical(payload) == {"a": [1]}


# --- properties against securesystemslib's encoder -----------------------------------

# Characters that stress the encoders: quote, backslash, every kind of control,
# DEL, separators JSON treats specially in JavaScript, non-ASCII, astral, brackets.
_TRICKY = st.sampled_from(
    [*'"\\/[]{}:, ', *"\x00\x01\x08\t\n\x0c\r\x1f\x7f", *"\x85\xa0é\u2028\u2029\ufeff€😀\U0010ffff"]
)
_CHARS = st.one_of(_TRICKY, st.characters(codec="utf-8"))
_TEXT = st.text(_CHARS, max_size=12)
_SCALARS = st.none() | st.booleans() | st.integers() | _TEXT
_VALUES = st.recursive(
    _SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(_TEXT, children, max_size=4).map(fold_free)
    ),
    max_leaves=25,
)
_OBJECTS = st.dictionaries(_TEXT, _VALUES, max_size=5).map(fold_free)


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


# Serialisations of the same value: canonical and the near misses a fast path
# could confuse with it (C json escapes controls; ensure_ascii escapes non-ASCII).
_ENCODINGS: dict[str, Callable[[Any], bytes]] = {
    "canonical": canonical,
    "json-compact-sorted-raw": lambda v: json.dumps(
        v, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8", "surrogatepass"),
    "json-compact-sorted-ascii": lambda v: json.dumps(
        v, sort_keys=True, separators=(",", ":")
    ).encode(),
    "json-compact-unsorted": lambda v: json.dumps(
        v, separators=(",", ":"), ensure_ascii=False
    ).encode(),
    "json-default": lambda v: json.dumps(v, ensure_ascii=False).encode(),
}


@SETTINGS
@given(_OBJECTS)
@example({"a": "\n"})
@example({"a\\": "\\\n"})
@example({"b": 1, "a": {"\x00": ["\x1f"]}})
def test_canonical_round_trip(value: dict[str, Any]) -> None:
    """Whatever securesystemslib encodes, parse_canonical accepts and returns unchanged."""
    assert parse_canonical(canonical(value), max_depth=1000) == value


@SETTINGS
@given(_OBJECTS, st.sampled_from(sorted(_ENCODINGS)))
@example({"a": "\n"}, "json-compact-sorted-raw")
@example({"a": "\\n"}, "json-compact-sorted-raw")
@example({"a": "\\\n"}, "json-compact-sorted-raw")
@example({"a": 'x\\"\x01'}, "json-compact-sorted-raw")
@example({"é": 1}, "json-compact-sorted-ascii")
def test_accepts_exactly_the_canonical_bytes(value: dict[str, Any], encoding: str) -> None:
    """A serialisation is accepted iff it is byte-identical to encode_canonical."""
    payload = _ENCODINGS[encoding](value)
    if payload == canonical(value):
        assert parse_canonical(payload, max_depth=1000) == value
    else:
        with pytest.raises(PayloadError, match="not canonical JSON"):
            parse_canonical(payload, max_depth=1000)


def _mutations(payload: bytes) -> st.SearchStrategy[bytes]:
    index = st.integers(0, len(payload))
    byte = st.sampled_from(b' "\\[]{}:,0-.eE\x00\n\x80\xc3\xff') | st.integers(0, 255)
    return st.one_of(
        st.tuples(index, byte).map(lambda t: payload[: t[0]] + bytes([t[1]]) + payload[t[0] :]),
        st.tuples(index, byte).map(lambda t: payload[: t[0]] + bytes([t[1]]) + payload[t[0] + 1 :]),
        index.map(lambda i: payload[:i] + payload[i + 1 :]),
    )


@SETTINGS
@given(st.one_of(st.binary(max_size=64), _OBJECTS.map(canonical).flatmap(_mutations)))
def test_anything_accepted_is_canonical(payload: bytes) -> None:
    """Arbitrary or mutated bytes: either PayloadError, or the bytes are canonical."""
    try:
        value = parse_canonical(payload, max_depth=1000)
    except PayloadError:
        return
    assert canonical(value) == payload


@SETTINGS
@given(_OBJECTS, st.sampled_from(sorted(_ENCODINGS)), st.integers(1, 6))
def test_depth_limit_is_exact(value: dict[str, Any], encoding: str, max_depth: int) -> None:
    """The string-aware pre-scan measures the real nesting depth."""
    payload = _ENCODINGS[encoding](value)
    if _depth(value) > max_depth:
        with pytest.raises(PayloadError, match=f"nested deeper than {max_depth} levels"):
            parse_canonical(payload, max_depth=max_depth)
    else:
        try:
            parse_canonical(payload, max_depth=max_depth)
        except PayloadError as e:
            reason = e.reason
        else:
            reason = ""
        assert "nested" not in reason
