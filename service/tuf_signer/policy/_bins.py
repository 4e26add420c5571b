"""Succinct hash bins (TAP 15, PEP 458): which names are bins, which paths go where.

A key that signs hashed bins declares the delegation it serves
(``model.BinsDelegation``, ``keys create … --bins PREFIX:BIT_LENGTH``). The
signer then knows the exact set of bin names, so a bin's high-water mark cannot
be dodged by signing under an alias (``bins-0c1-fork``), and it knows which bin
each target path belongs in, so a payload cannot be replayed under another bin.

Names and the path-to-bin rule are python-tuf's ``SuccinctRoles`` exactly: with
bit length ``b`` there are ``2**b`` bins named ``f"{prefix}-{n:0{L}x}"`` where
``L`` is the hex length of ``2**b - 1``, and a path's bin is the first ``b``
bits of SHA-256 of its UTF-8 bytes.

An empty bin (``"targets": {}``) holds nothing that names its bin, so its
signed bytes are the same for every bin at one version: a signature of the empty
bin ``bins-0c1`` at version 5 also verifies as ``bins-0c2`` at version 5. An
attacker holding it can show an empty bin in place of another bin at that
version, hiding that bin's targets, but never adding any.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from itertools import islice, pairwise
from typing import Any

from tuf_signer.errors import PayloadError, PolicyError, RequestError, shown
from tuf_signer.model import BinsDelegation, RoleRule
from tuf_signer.policy import _native

GLOB_CHARS = frozenset("*?[")  # what makes an fnmatch pattern a glob
_HEX = frozenset("0123456789abcdef")
_MAX_CODE_POINT = 0x10FFFF

# The native path-to-bin check (_cbins.c), or None: the Python loop below alone.
_cbins = _native.load("_cbins")


def check_bins_delegation(bins: BinsDelegation) -> None:
    """Check a declaration before a key is created with it.

    Raises:
        RequestError: the bit length is not 1..32 (TAP 15), or the prefix is
            not an acceptable role name or holds a glob character.
    """
    from tuf_signer.policy._checks import _check_name  # _checks imports this module

    bit_length = bins.bit_length
    if not isinstance(bit_length, int) or isinstance(bit_length, bool) or not 1 <= bit_length <= 32:
        raise RequestError(f"bins bit length {shown(repr(bit_length))} must be in 1..32")
    _check_name(bins.prefix, "bins prefix")
    if any(c in GLOB_CHARS or c == "]" for c in bins.prefix):
        raise RequestError(f"bins prefix {shown(bins.prefix)} contains a glob character (* ? [ ])")
    # The longest bin name must itself be an acceptable role name.
    _check_name(bin_name(bins, number_of_bins(bins) - 1), "bin name")


def parse_bins(text: str) -> BinsDelegation:
    """Read and check a ``PREFIX:BIT_LENGTH`` declaration, e.g. ``bins:14``.

    Raises:
        RequestError: not of that form, or ``check_bins_delegation`` refuses it.
    """
    try:
        bins = BinsDelegation.parse(text)
    except ValueError as e:
        raise RequestError(f"bins {shown(text)} is not PREFIX:BIT_LENGTH, e.g. bins:14") from e
    check_bins_delegation(bins)
    return bins


def number_of_bins(bins: BinsDelegation) -> int:
    """``2**bit_length``."""
    return 1 << bins.bit_length


def suffix_len(bins: BinsDelegation) -> int:
    """Hex digits in a bin name's suffix: the length of ``f"{2**bit_length - 1:x}"``."""
    return len(f"{number_of_bins(bins) - 1:x}")


def bin_name(bins: BinsDelegation, n: int) -> str:
    """The name of bin ``n`` (python-tuf ``SuccinctRoles.get_roles`` order)."""
    return f"{bins.prefix}-{n:0{suffix_len(bins)}x}"


def bin_for_path(bins: BinsDelegation, path: str) -> str:
    """The bin a target path belongs in (python-tuf ``SuccinctRoles.get_role_for_target``)."""
    digest = hashlib.sha256(path.encode("utf-8")).digest()
    return bin_name(bins, int.from_bytes(digest[:4], "big") >> (32 - bins.bit_length))


def bin_index(bins: BinsDelegation, role: str) -> int | None:
    """The number of the bin named ``role``, or None when it is not exactly a bin name.

    Stricter than python-tuf's ``is_delegated_role``, which parses the suffix with
    ``int(…, 16)`` and so also accepts ``bins-0C1``, ``bins-0_1`` or ``bins- 01``.
    No client ever asks for those names (it computes them), and accepting them
    would give one bin several high-water marks.
    """
    lead = bins.prefix + "-"
    if not role.startswith(lead):
        return None
    suffix = role[len(lead) :]
    if len(suffix) != suffix_len(bins) or not set(suffix) <= _HEX:
        return None
    n = int(suffix, 16)
    return n if n < number_of_bins(bins) else None


def bins_pattern(bins: BinsDelegation) -> str:
    """The ``fnmatch`` pattern that matches exactly the declared bins.

    E.g. ``bins-[0-3][0-9a-f][0-9a-f][0-9a-f]`` for ``bins:14``.
    """
    return bins.prefix + "-" + "".join(_class(chars) for chars in _box(bins))


def bins_range(bins: BinsDelegation) -> str:
    """The first and last bin name, e.g. ``'bins-0000'..'bins-3fff'``."""
    return f"{bin_name(bins, 0)!r}..{bin_name(bins, number_of_bins(bins) - 1)!r}"


def check_rules_fit_bins(rules: Sequence[RoleRule], bins: BinsDelegation | None) -> None:
    """Refuse key rules that would let a glob reach a name that is not a declared bin.

    Glob patterns are for hashed bins only. Without a declaration a glob cannot
    say which names are bins, so it is refused; with one, it must match only the
    declared bins (use ``bins_pattern``). A literal pattern under the bins'
    prefix must be one of the bins.

    Raises:
        RequestError: naming the pattern and the pattern to use instead.
    """
    for rule in rules:
        pattern = rule.pattern
        is_glob = any(c in GLOB_CHARS for c in pattern)
        if bins is None:
            if is_glob:
                raise RequestError(
                    f"role rule pattern {shown(pattern)} is a glob, and globs are only for "
                    "hashed bins: declare the bins the key serves with "
                    "--bins PREFIX:BIT_LENGTH (e.g. --bins bins:14) and use the pattern "
                    "it gives (bins:14: 'bins-[0-3][0-9a-f][0-9a-f][0-9a-f]')"
                )
            continue
        if is_glob:
            if not _glob_within_bins(pattern, bins):
                raise RequestError(
                    f"role rule pattern {shown(pattern)} could match names that are not "
                    f"bins of {bins} ({bins_range(bins)}); use "
                    f"{bins_pattern(bins)!r}"
                )
        elif pattern.startswith(bins.prefix + "-") and bin_index(bins, pattern) is None:
            raise RequestError(
                f"role rule pattern {shown(pattern)} is under the bins prefix "
                f"{bins.prefix!r} but is not one of its bins ({bins_range(bins)})"
            )


def check_bin_payload(
    role: str,
    obj: dict[str, Any],
    rule: RoleRule,
    bins: BinsDelegation | None,
    key_name: str,
) -> None:
    """The hash-bin checks for a targets-type Sign.

    Applies when the key declares bins and ``role`` is under their prefix, or
    when the rule that allowed ``role`` is a glob (which only bins may use).

    Raises:
        PolicyError: a glob rule allowed the role but the key declares no bins
            (a key created before declarations existed) (FAILED_PRECONDITION).
        RequestError: the role is under the bins' prefix but is not one of the
            bins (INVALID_ARGUMENT).
        PayloadError: the payload has no ``targets`` object, a target path
            belongs in another bin, or it has ``delegations`` (INVALID_ARGUMENT).
    """
    is_glob = any(c in GLOB_CHARS for c in rule.pattern)
    if bins is None:
        if is_glob:
            raise PolicyError(
                f"key {shown(key_name)} allows role {shown(role)} only through the glob "
                f"{shown(rule.pattern)} and declares no hash-bin delegation, so which names "
                "are bins is unknown: sign bins with a key that declares them "
                "(tuf-signer keys create NAME … --bins PREFIX:BIT_LENGTH)"
            )
        return
    if not role.startswith(bins.prefix + "-") and not is_glob:
        return
    index = bin_index(bins, role)
    if index is None:
        raise RequestError(
            f"role {shown(role)} is not a bin of key {shown(key_name)}'s hash-bin "
            f"delegation {bins} (bins are {bins_range(bins)})"
        )
    if "delegations" in obj:
        # PEP 458: bin-n roles are terminal; they list targets and delegate nothing.
        raise PayloadError(
            f"bin {role!r} has a 'delegations' field: a hash bin delegates nothing (PEP 458)"
        )
    targets = obj.get("targets")
    if not isinstance(targets, dict):
        raise PayloadError(f"bin {role!r} has no 'targets' object")
    # A bin is a range of SHA-256 prefixes: compare each path's prefix with it
    # rather than name each path's bin.
    shift = 32 - bins.bit_length
    low, high = index << shift, ((index + 1) << shift) - 1
    stray = _first_path_outside(targets, low, high)
    if stray is not None:
        home = bin_for_path(bins, stray)
        raise PayloadError(f"target path {shown(stray)} belongs in bin {home!r}, not {role!r}")


def _first_path_outside(targets: dict[str, Any], low: int, high: int) -> str | None:
    """The first path whose SHA-256's first four bytes (big-endian) are not in [low, high].

    ``_cbins.first_outside`` when it is built (a 139-path bin: ~35 µs instead
    of ~150), else this loop, its reference (tests/policy/test_native_bins.py).
    """
    if _cbins is not None:
        i = _cbins.first_outside(targets, low, high)
        return None if i < 0 else next(islice(targets, i, None))
    return first_path_outside_reference(targets, low, high)


def first_path_outside_reference(targets: dict[str, Any], low: int, high: int) -> str | None:
    """``_first_path_outside`` in Python: compare 4-byte prefixes as bytes.

    Big-endian, so byte order is number order: no path's bin is named.
    """
    low_b, high_b = low.to_bytes(4, "big"), high.to_bytes(4, "big")
    sha256 = hashlib.sha256
    for path in targets:
        if not low_b <= sha256(path.encode("utf-8")).digest()[:4] <= high_b:
            return path
    return None


# --- globs as sets of names --------------------------------------------------------


def _box(bins: BinsDelegation) -> list[frozenset[str]]:
    """The characters each suffix position of a bin name may hold (a box)."""
    width = suffix_len(bins)
    lead_bits = bins.bit_length - 4 * (width - 1)
    first = frozenset("0123456789abcdef"[: 1 << lead_bits])
    return [first] + [_HEX] * (width - 1)


def _class(chars: frozenset[str]) -> str:
    ordered = "".join(sorted(chars))
    if len(ordered) == 1:
        return ordered
    if ordered == "0123456789abcdef":
        return "[0-9a-f]"
    if "".join(chr(c) for c in range(ord(ordered[0]), ord(ordered[-1]) + 1)) == ordered:
        return f"[{ordered[0]}-{ordered[-1]}]"
    return f"[{ordered}]"  # pragma: no cover - boxes are ranges


def _glob_within_bins(pattern: str, bins: BinsDelegation) -> bool:
    """Whether every name ``pattern`` matches (``fnmatchcase``) is a declared bin.

    Exact for patterns without ``*``: the prefix and '-' must be written
    literally, then one element per suffix position whose character set lies in
    the box at that position. ``*`` always reaches names outside the box.
    """
    lead = bins.prefix + "-"
    if "*" in pattern or not pattern.startswith(lead):
        return False
    elements = split_glob(pattern[len(lead) :])
    box = _box(bins)
    if len(elements) != len(box):
        return False
    return all(_element_within(e, allowed) for e, allowed in zip(elements, box, strict=True))


def split_glob(pattern: str) -> list[str]:
    """Split an ``fnmatch`` pattern into elements, each matching one character.

    Mirrors ``fnmatch.translate``: ``?``, a ``[...]`` class (``!`` negates, a
    ``]`` right after ``[`` or ``[!`` is literal, an unclosed ``[`` is a literal
    ``[``), or a literal character. ``*`` is returned as its own element.
    """
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "[":
            j = i + 1
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j < n:
                out.append(pattern[i : j + 1])
                i = j + 1
                continue
        out.append(c)
        i += 1
    return out


def class_ranges(element: str) -> tuple[bool, list[tuple[int, int]]]:
    """The code-point ranges of a ``[...]`` element, as ``fnmatch`` reads it.

    Returns:
        Whether the class is negated, and its (inclusive) ranges; the
        characters matched are the ranges' union, or its complement if negated.
    """
    body = element[1:-1]
    if "-" not in body:
        chunks = [body]
    else:
        # fnmatch.translate: split on the '-' that make ranges, drop empty ranges.
        chunks = []
        i, j = 0, len(body)
        k = 2 if body.startswith("!") else 1
        while True:
            k = body.find("-", k, j)
            if k < 0:
                break
            chunks.append(body[i:k])
            i = k + 1
            k = k + 3
        chunk = body[i:j]
        if chunk:
            chunks.append(chunk)
        else:
            chunks[-1] += "-"
        for k in range(len(chunks) - 1, 0, -1):
            if chunks[k - 1][-1] > chunks[k][0]:
                chunks[k - 1] = chunks[k - 1][:-1] + chunks[k][1:]
                del chunks[k]
    # fnmatch decides negation on what is left once empty ranges are gone:
    # "[9-0!]" leaves "!", a negated empty class, which matches any character.
    if chunks == ["!"]:
        return True, []
    negated = chunks[0].startswith("!")
    if negated:
        chunks[0] = chunks[0][1:]
    ranges = [(ord(c), ord(c)) for chunk in chunks for c in chunk]
    ranges += [(ord(a[-1]), ord(b[0])) for a, b in pairwise(chunks) if a and b]
    return negated, ranges


def _element_within(element: str, allowed: frozenset[str]) -> bool:
    if element in ("*", "?"):
        return False
    if not element.startswith("[") or len(element) == 1:
        return element in allowed
    negated, ranges = class_ranges(element)
    codes = frozenset(ord(c) for c in allowed)
    if not negated:
        return all(_all_in(lo, hi, codes) for lo, hi in ranges)
    # Negated: every character outside the ranges must be allowed.
    nxt = 0
    for lo, hi in sorted(ranges):
        if lo > nxt and not _all_in(nxt, lo - 1, codes):
            return False
        nxt = max(nxt, hi + 1)
    return nxt > _MAX_CODE_POINT or _all_in(nxt, _MAX_CODE_POINT, codes)


def _all_in(lo: int, hi: int, codes: frozenset[int]) -> bool:
    return hi - lo < len(codes) and all(c in codes for c in range(lo, hi + 1))
