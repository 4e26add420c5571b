"""Strict parsing of the canonical JSON that TUF signs (P3).

TUF signs the OLPC canonical JSON form of a metadata file's ``signed`` object:
python-tuf's ``Metadata.signed_bytes`` is securesystemslib's ``encode_canonical``
encoded as UTF-8. That form has no whitespace, no floats, object keys sorted by
code point (Python ``str`` order), and escapes only ``"`` and ``\\``; every
other character, control characters included, is written raw.

A payload is accepted only when it *is* that form, byte for byte, so that what
the service checks is exactly what every TUF client will parse.

Speed: a PEP 458 expiry sweep re-signs 16,384 bins of ~54 KB, and
``encode_canonical`` is pure Python. orjson with sorted keys writes the same
bytes as ``encode_canonical`` unless a string holds a control character (which
it escapes and canonical JSON does not) or an integer does not fit in 64 bits
(which it refuses), so it is the fast path, and ``encode_canonical`` is only the
fallback for the exact answer. Parsing stays with the C ``json`` decoder, whose
hooks refuse floats, NaN and Infinity. For a 54 KB bin: 287 µs with the stdlib
encoder as the fast path, ~130 µs with orjson (``bench/profile.py``).

One reading: a payload is also refused when one of its objects, at any depth,
has two distinct keys that another JSON decoder could take for one. Go's
``encoding/json`` matches object keys to struct fields case-insensitively with
Unicode simple case folding (the long s U+017F folds to ``s``, the Kelvin sign
U+212A to ``k``), and the last match wins: ``{"expires":…,"expire\u017f":…}`` would
be checked here by its first key and read by go-tuf by its second. So keys must
stay distinct under case folding and NFKC normalisation (``_fold``); as a
consequence, target paths that differ only in case (``a/Foo.whl`` and
``a/foo.whl`` in one ``targets`` object) are refused too. Cost on a 54 KB
ASCII bin: ~100 µs (an orjson round trip of the lower-cased payload); a
payload with non-ASCII text takes the exact walk, ~0.5 ms.

Native speed (issue 16): the C extension ``_ccanonical`` decides the common
case in one pass over the bytes, without building Python objects: it accepts
only bytes that are exactly the canonical form of an object, within
``max_depth``, with ASCII keys distinct under ASCII case folding, and answers
"not accepted" for everything else. Accepted bytes are then read by orjson (or
by the ``json`` decoder when a string holds a raw control character or an
integer may not fit in 64 bits). Everything it does not accept goes through the
pure-Python reference below, unchanged, which refuses with the precise reason
(or accepts: a non-ASCII key is left to ``_fold``). The reference is also the
path when the extension was not built, or when ``TUF_SIGNER_NATIVE=0`` is set
in the environment at start-up. tests/policy/test_native_canonical.py proves
the two equal (tables, differential properties, fuzzing). For a 54 KB bin:
~80 µs instead of ~275 µs, of which the scan is ~19 µs and orjson building the
object ~62 µs (``python -m bench.canonical_micro``). Most of that builds each
target's hashes and length, which the policy never reads: ``check_sign_request``
asks for ``target_paths_only``, and the scan also hands back the span of the
``targets`` object and its paths, so orjson reads the rest with that span as
``{}``: ~36 µs for the same bin.
"""

from __future__ import annotations

import json
import re
import sys
import unicodedata
from collections.abc import Callable
from itertools import accumulate, pairwise
from typing import Any, NoReturn

import orjson
from securesystemslib.formats import encode_canonical

from tuf_signer.errors import SHOWN, PayloadError, shown
from tuf_signer.policy import _native

# Depth pre-scan (see _check_depth): keep only quotes and brackets, with '[' and
# ']' written as '{' and '}' (the parser refuses mismatched pairs anyway). What
# is left of a JSON string is '"', any brackets it held, '"'. The pattern also
# matches an unterminated string so that the scan stays linear on hostile input.
_BRACKETS_AS_BRACES = bytes.maketrans(b"[]", b"{}")
_NOT_STRUCTURE = bytes(c for c in range(256) if c not in b'"[]{}')
_SKELETON_STRING = re.compile(rb'"[^"]*+(?:"|\Z)')
_DEPTH_STEP = [1 if c == ord("{") else -1 if c == ord("}") else 0 for c in range(256)]

_SNIPPET = 24  # characters of context shown in "not canonical" reasons

# The native check (_ccanonical.c): its scan, and the verdicts that accept.
_scan: Callable[[bytes, int, int], int] | None
_scan_targets: Callable[[bytes, int, int], tuple[int, int, int, dict[str, None] | None]] | None
_ccanonical = _native.load("_ccanonical")
if _ccanonical is None:  # not built, or TUF_SIGNER_NATIVE=0: the reference path alone
    _scan = _scan_targets = None
else:
    _scan, _scan_targets = _ccanonical.scan, _ccanonical.scan_targets


_ACCEPT = 0  # orjson reads it
_ACCEPT_JSON = 1  # the json decoder reads it (raw control characters, long integers)

# The native check hands deeper payloads to the reference: orjson encodes at most
# 255 levels, so past that the reference's verdict depends on Python's recursion
# limit, which a C scan cannot mirror.
_NATIVE_MAX_DEPTH = 255

# With exact=False (the event loop asks), the pure-Python reference runs only on
# payloads up to this size: a hostile shape costs it ~7 ms at 64 KiB, ~27 ms at
# 256 KiB. A larger payload the native scan did not accept goes to a checker
# process (NeedsExactCheck), within its caller's check budget.
REFERENCE_INLINE_BYTES = 64 * 1024


def _reject_float(literal: str) -> NoReturn:
    raise PayloadError(f"payload has a float {literal[:_SNIPPET]!r}: canonical JSON has no floats")


def _reject_constant(literal: str) -> NoReturn:
    raise PayloadError(f"payload has {literal}: canonical JSON has no NaN or Infinity")


def _strict_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise PayloadError(f"payload has a duplicate object key {key[:_SNIPPET]!r}")
            seen.add(key)
    return obj


# strict=False lets raw control characters through inside strings: canonical JSON
# writes them raw, so a canonical payload may hold them.
_DECODER = json.JSONDecoder(
    parse_float=_reject_float, parse_constant=_reject_constant, strict=False
)


class NeedsExactCheck(Exception):
    """The fast path could not accept the payload, and ``exact=False`` was asked.

    The caller runs the check again with ``exact=True`` somewhere it can afford
    the pure-Python exact fallback (seconds for a multi-MB payload).
    """


def parse_canonical(
    payload: bytes, *, max_depth: int = 64, exact: bool = True, target_paths_only: bool = False
) -> dict[str, Any]:
    """Parse a payload that must be the canonical JSON of a TUF ``signed`` object.

    Args:
        payload: the bytes to be signed.
        max_depth: the deepest nesting of objects and arrays allowed; the
            top-level object counts as 1.
        exact: when False, raise ``NeedsExactCheck`` instead of running the
            slow exact fallback, or any of the reference on a payload over
            ``REFERENCE_INLINE_BYTES`` that the native scan did not accept
            (the event loop asks this way).
        target_paths_only: for ``policy.check_sign_request``, which reads a
            targets payload's target paths but never what it says of each
            target: when the native scan accepts targets metadata (top-level
            ``"_type":"targets"``) whose ``targets`` is an object, that object
            maps each path, in payload order, to None instead of its
            ``{"hashes":…,"length":…}`` (issue 16: ~36 µs instead of ~95 µs for a 54 KB bin).
            The verdict, and every other field, are the same as without it.

    Returns:
        The parsed object (a fresh ``dict``; the caller may keep it).

    Raises:
        NeedsExactCheck: ``exact`` is False and the fast path did not accept.
        PayloadError: the payload is not UTF-8, is nested deeper than
            ``max_depth``, is not JSON, is not an object at the top level, has a
            duplicate key, a float, NaN or Infinity, or is not byte for byte the
            canonical form of what it parses to.
    """
    if _scan is not None and type(payload) is bytes and 1 <= max_depth <= _NATIVE_MAX_DEPTH:
        if target_paths_only and _scan_targets is not None:
            verdict, start, end, paths = _scan_targets(
                payload, max_depth, sys.get_int_max_str_digits()
            )
            if paths is not None:  # verdict is _ACCEPT
                try:
                    obj: dict[str, Any] = orjson.loads(
                        b"".join((payload[:start], b"{}", payload[end:]))
                    )
                except orjson.JSONDecodeError:  # pragma: no cover - the scan rules it out
                    pass
                else:
                    obj["targets"] = paths  # same key, same place: only the value changes
                    return obj
        else:
            verdict = _scan(payload, max_depth, sys.get_int_max_str_digits())
        if verdict == _ACCEPT:
            try:
                return orjson.loads(payload)  # type: ignore[no-any-return]
            except orjson.JSONDecodeError:  # pragma: no cover - the scan rules it out
                pass
        elif verdict == _ACCEPT_JSON:
            try:
                return _DECODER.decode(payload.decode("utf-8"))  # type: ignore[no-any-return]
            except (RecursionError, ValueError):  # pragma: no cover - a deep call stack
                pass  # the reference gives the verdict and the reason
    if not exact and len(payload) > REFERENCE_INLINE_BYTES:
        raise NeedsExactCheck
    return _parse_reference(payload, max_depth, exact)


def _parse_reference(payload: bytes, max_depth: int, exact: bool) -> dict[str, Any]:
    """``parse_canonical`` in pure Python: the reference, and every refusal's reason."""
    try:
        text = payload.decode("utf-8")  # strict: no lone surrogates, no overlong forms
    except UnicodeDecodeError as e:
        raise PayloadError(f"payload is not valid UTF-8 at byte {e.start}: {e.reason}") from e

    if text.startswith("\ufeff"):
        raise PayloadError("payload starts with a byte order mark; canonical JSON has none")
    _check_depth(payload, max_depth)

    try:
        obj = _DECODER.decode(text)
    except json.JSONDecodeError as e:
        raise PayloadError(
            f"payload is not JSON: {e.msg} at byte {_byte_offset(text, e.pos)}"
        ) from e
    except ValueError as e:
        # int() refuses literals longer than sys.get_int_max_str_digits().
        raise PayloadError("payload has an integer literal too long to parse") from e
    except RecursionError as e:  # pragma: no cover - _check_depth prevents it
        raise PayloadError("payload is nested too deeply") from e

    if not isinstance(obj, dict):
        raise PayloadError(f"payload top level is {_json_kind(obj)}, not an object")

    # Fast path. Equality implies no duplicate keys: the re-encoding comes from a
    # dict, so it has none, and the bytes are the same.
    try:
        if _fast_encode(obj) == payload and not _has_control_escape(payload):
            return _one_reading(payload, obj)
        if not exact:
            raise NeedsExactCheck
        return _one_reading(payload, _check_canonical_slow(text, obj))
    except RecursionError:
        # The encoders and the slow path's hook recurse per level; only a
        # max_depth near the interpreter's recursion limit gets here.
        raise PayloadError("payload is nested too deeply") from None


def _one_reading(payload: bytes, obj: dict[str, Any]) -> dict[str, Any]:
    """Refuse two keys of one object that fold to the same key (see the module doc).

    Fast path, for ASCII payloads without control characters (every PEP 458
    bin): the only folding is ASCII case, so lower-case the whole payload,
    parse it with orjson (duplicate keys collapse, the last one wins) and
    re-encode it: it keeps its length exactly when no object lost a key. Any
    other payload, or a suspected collision, gets the exact walk, which names
    the object and the keys.

    Returns:
        ``obj``, unchanged.

    Raises:
        PayloadError: two keys of one object fold together.
    """
    if payload.isascii():
        lowered = payload.lower()
        if lowered == payload:
            return obj  # no upper-case letter: no two distinct keys fold together
        try:
            again = orjson.dumps(orjson.loads(lowered), option=orjson.OPT_SORT_KEYS)
        except (orjson.JSONDecodeError, orjson.JSONEncodeError):
            pass  # raw control characters, or integers beyond 64 bits
        else:
            if len(again) == len(payload):
                return obj
    _check_folded_keys(obj)
    return obj


def _fold(key: str) -> str:
    """What a key can be confused with: NFKC, full case folding, NFKC again.

    ASCII keys fold by ``str.lower`` (the same result, faster). Full case
    folding joins every pair of Unicode simple case folding, so two keys that
    Go's ``encoding/json`` matches to one field (ASCII upper-cased, every other
    rune mapped to the smallest of its ``unicode.SimpleFold`` orbit) fold to the
    same string here (tests/policy/test_one_reading.py checks every code point).
    """
    if key.isascii():
        return key.lower()
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", key).casefold())


def _check_folded_keys(obj: dict[str, Any]) -> None:
    """The exact check: every object, every depth, iteratively (no recursion limit)."""
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), obj)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            if len(value) > 1:
                seen: dict[str, str] = {}
                for key in value:
                    folded = _fold(key)
                    other = seen.setdefault(folded, key)
                    if other != key:
                        where = shown(_pointer(path)) if path else "the top level"
                        raise PayloadError(
                            f"payload has keys {_show_key(other)} and {_show_key(key)} in the "
                            f"object at {where}: they differ only in case or Unicode form, and "
                            "some JSON decoders (Go's encoding/json) read them as one field"
                        )
            stack.extend(((*path, k), v) for k, v in value.items() if isinstance(v, dict | list))
        elif isinstance(value, list):
            stack.extend(((*path, i), v) for i, v in enumerate(value) if isinstance(v, dict | list))


def _show_key(key: str) -> str:
    """``shown``, plus code points when the key is not ASCII ('K' is not 'K')."""
    if key.isascii():
        return shown(key)
    return f"{shown(key)} ({ascii(key[:SHOWN])[1:-1]})"


def _pointer(path: tuple[str | int, ...]) -> str:
    """A JSON Pointer (RFC 6901) to ``path``, e.g. ``/delegations/roles/0``."""
    return "".join(
        "/" + (str(t) if isinstance(t, int) else t.replace("~", "~0").replace("/", "~1"))
        for t in path
    )


def _check_depth(payload: bytes, max_depth: int) -> None:
    """Refuse deep nesting before the recursive parser and encoders meet it.

    Works on the raw bytes: no byte of a multi-byte UTF-8 sequence is ASCII.
    """
    skeleton = payload
    if b"\\" in skeleton:
        # Inside strings every backslash starts an escape. Only the escapes of
        # backslash and quote have a second character that matters here: drop
        # them (left to right keeps the pairing); other backslashes go below.
        skeleton = skeleton.replace(b"\\\\", b"").replace(b'\\"', b"")
    skeleton = skeleton.translate(_BRACKETS_AS_BRACES, _NOT_STRUCTURE)
    # Common case: no string holds a bracket, so every string is now '""' and
    # dropping those pairs leaves no quote. Otherwise strip strings properly.
    brackets = skeleton.replace(b'""', b"")
    if b'"' in brackets:
        brackets = _SKELETON_STRING.sub(b"", skeleton)
    # Cheap when balanced: one replace (it does not rescan its own output)
    # removes exactly the innermost level.
    rest = brackets
    for _ in range(max_depth):
        inner = rest.replace(b"{}", b"")
        if not inner:
            return
        if inner == rest:
            break  # unbalanced: the parser refuses it, but measure anyway
        rest = inner
    # Over any prefix the parser accepts, the running sum is its nesting depth.
    depth = max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)
    if depth > max_depth:
        raise PayloadError(f"payload is nested deeper than {max_depth} levels")


def _fast_encode(obj: dict[str, Any]) -> bytes | None:
    """orjson's sorted, compact encoding; None where it cannot encode (big ints, surrogates)."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        return None


def _has_control_escape(encoded: bytes) -> bool:
    r"""Whether JSON written by orjson escapes a control character.

    In that text every backslash starts an escape: ``\\``, ``\"`` or a control
    character's ``\n``/``\u001f``... Dropping the first two kinds, scanning left
    to right, leaves a backslash only if a control character was escaped.
    """
    if b"\\" not in encoded:
        return False
    return b"\\" in encoded.replace(b"\\\\", b"").replace(b'\\"', b"")


def _check_canonical_slow(text: str, obj: dict[str, Any]) -> dict[str, Any]:
    """Give the exact verdict, and a precise reason, when the fast path did not accept."""
    unsorted: list[tuple[str, str]] = []

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result = _strict_pairs(pairs)
        if not unsorted:
            for (a, _), (b, _) in pairwise(pairs):
                if a > b:
                    unsorted.append((a, b))
                    break
        return result

    checker = json.JSONDecoder(
        parse_float=_reject_float,
        parse_constant=_reject_constant,
        object_pairs_hook=pairs_hook,
        strict=False,
    )
    checker.decode(text)  # raises PayloadError on a duplicate key
    if unsorted:
        a, b = unsorted[0]
        raise PayloadError(
            f"payload is not canonical JSON: object keys are not sorted "
            f"({a[:_SNIPPET]!r} before {b[:_SNIPPET]!r})"
        )

    canonical = encode_canonical(obj)
    assert isinstance(canonical, str)
    if canonical == text:
        return obj
    raise PayloadError(_describe_difference(text, canonical))


def _describe_difference(text: str, canonical: str) -> str:
    i = next(
        (i for i, (a, b) in enumerate(zip(text, canonical, strict=False)) if a != b),
        min(len(text), len(canonical)),
    )
    at = f"at byte {_byte_offset(text, i)}"
    got = text[i : i + _SNIPPET]
    if got[:1] in (" ", "\t", "\n", "\r"):
        return f"payload is not canonical JSON: whitespace {at}"
    if got[:1] == "\\":
        escape = got[:6] if got[1:2] == "u" else got[:2]
        return (
            f"payload is not canonical JSON: escape sequence {escape!r} {at} "
            "(canonical JSON escapes only quote and backslash, and writes all else raw)"
        )
    return (
        f"payload is not canonical JSON: {at} it has {got!r} "
        f"where the canonical form has {canonical[i : i + _SNIPPET]!r}"
    )


def _byte_offset(text: str, pos: int) -> int:
    return len(text[:pos].encode("utf-8", "surrogatepass"))


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"
