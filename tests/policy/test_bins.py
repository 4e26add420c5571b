"""Hash bins are real bins (finding 1 of issue 10).

A key declares the succinct hash-bin delegation it serves; a bin Sign must name
exactly one of its bins and hold only paths that hash into it, and a key's glob
rules may match only its bins. Names and the path rule are checked against
python-tuf's ``SuccinctRoles``, the reference every PEP 458 client uses.
"""

from __future__ import annotations

import fnmatch
import hashlib
import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from securesystemslib.formats import encode_canonical
from tuf.api.metadata import SuccinctRoles

from tuf_signer.errors import (
    PayloadError,
    PermissionError_,
    PolicyError,
    RequestError,
    TufSignerError,
)
from tuf_signer.model import BinsDelegation, RoleRule
from tuf_signer.policy import (
    PEP458_BINS,
    bin_for_path,
    bin_index,
    bin_name,
    bins_pattern,
    check_sign_request,
    parse_bins,
    pep458_online_rules,
    validate_rules,
)
from tuf_signer.policy._bins import class_ranges, split_glob

from .conftest import NOW

DAY = 86400
MAX_PAYLOAD = 4 * 1024 * 1024
BINS12 = BinsDelegation("bins", 12)  # "bins-000".."bins-fff": "bins-0c1" is a bin
RULES12 = pep458_online_rules(BINS12)
LEGACY_RULES = (RoleRule("timestamp", DAY), RoleRule("snapshot", DAY), RoleRule("bins-*", DAY))


def succinct(bins: BinsDelegation) -> SuccinctRoles:
    return SuccinctRoles([], 1, bins.bit_length, bins.prefix)


def paths_in(bins: BinsDelegation, role: str, n: int, tag: str = "") -> list[str]:
    """``n`` target paths that python-tuf puts in bin ``role``."""
    ref = succinct(bins)
    candidates = (f"packages/{tag}{i:06d}/dist-{i}.tar.gz" for i in itertools.count())
    return list(itertools.islice((p for p in candidates if ref.get_role_for_target(p) == role), n))


def bin_payload(
    paths: list[str], version: int = 5, extra: dict[str, Any] | None = None, note: str = ""
) -> bytes:
    signed: dict[str, Any] = {
        "_type": "targets",
        "spec_version": "1.0.31",
        "version": version,
        "expires": "2025-06-02T00:00:00Z",
        "targets": {
            p: {"hashes": {"sha256": hashlib.sha256((p + note).encode()).hexdigest()}, "length": 1}
            for p in paths
        },
        **(extra or {}),
    }
    encoded = encode_canonical(signed)
    assert isinstance(encoded, str)
    return encoded.encode()


def sign(
    payload: bytes,
    role: str,
    bins: BinsDelegation | None = BINS12,
    rules: tuple[RoleRule, ...] = RULES12,
) -> str:
    resolved, _, _ = check_sign_request(payload, role, "k", rules, NOW, MAX_PAYLOAD, bins=bins)
    return resolved


IN_0C1 = paths_in(BINS12, "bins-0c1", 3)
IN_0C2 = paths_in(BINS12, "bins-0c2", 1)


# --- the names: python-tuf's SuccinctRoles, exactly -----------------------------------


@pytest.mark.parametrize("bit_length", [1, 2, 3, 4, 5, 8, 9, 12, 14, 16, 17, 31, 32])
@pytest.mark.parametrize("prefix", ["bins", "a", "my-bins", "x.y_z"])
def test_names_match_python_tuf(prefix: str, bit_length: int) -> None:
    bins = BinsDelegation(prefix, bit_length)
    ref = succinct(bins)
    n = 1 << bit_length
    indices = [*range(min(n, 300)), n - 1, n // 2, n // 3]
    names = list(itertools.islice(ref.get_roles(), 300))
    assert [bin_name(bins, i) for i in range(len(names))] == names
    for i in indices:
        name = bin_name(bins, i)
        assert ref.is_delegated_role(name)
        assert bin_index(bins, name) == i
    # Beyond the last bin, and names python-tuf refuses: refused here too.
    for other in (
        f"{prefix}-{n:0{len(f'{n - 1:x}')}x}",
        f"{prefix}-",
        prefix,
        f"{prefix}-{bin_name(bins, 0)[len(prefix) + 1 :]}0",
        f"{prefix}x-{'0' * len(f'{n - 1:x}')}",
        f"{prefix}-{'g' * len(f'{n - 1:x}')}",
    ):
        assert not ref.is_delegated_role(other)
        assert bin_index(bins, other) is None
    assert fnmatch.filter(names, bins_pattern(bins)) == names


@pytest.mark.parametrize("bit_length", [1, 4, 7, 12, 14, 20, 32])
def test_path_to_bin_matches_python_tuf(bit_length: int) -> None:
    bins = BinsDelegation("bins", bit_length)
    ref = succinct(bins)
    paths = [f"packages/{i:03d}/dist-{i}.whl" for i in range(2000)]
    paths += ["", "é/ünïcode/文件.whl", "a" * 1000, "UPPER/Case.tar.gz", "x\x00y"]
    for path in paths:
        assert bin_for_path(bins, path) == ref.get_role_for_target(path)


@pytest.mark.parametrize("spelling", ["bins-0C1", "bins-0_1", "bins- c1", "bins-+c1"])
def test_non_canonical_spellings_are_not_bins(spelling: str) -> None:
    # python-tuf's is_delegated_role parses the suffix with int(…, 16) and accepts
    # these; no client asks for them, and accepting them would give a bin aliases.
    assert succinct(BINS12).is_delegated_role(spelling)
    assert bin_index(BINS12, spelling) is None
    with pytest.raises(RequestError, match="is not a bin"):
        sign(bin_payload(IN_0C1), spelling, rules=(RoleRule(spelling, DAY),))
    with pytest.raises(PermissionError_, match="is not allowed"):
        sign(bin_payload(IN_0C1), spelling)


def test_bins_pattern_examples() -> None:
    assert bins_pattern(PEP458_BINS) == "bins-[0-3][0-9a-f][0-9a-f][0-9a-f]"
    assert bins_pattern(BINS12) == "bins-[0-9a-f][0-9a-f][0-9a-f]"
    assert bins_pattern(BinsDelegation("b", 1)) == "b-[0-1]"
    assert bins_pattern(BinsDelegation("b", 5)) == "b-[0-1][0-9a-f]"


# --- finding 1: the table --------------------------------------------------------------

# (payload, role, bins declared by the key, rules, error class, code, reason)
SIGN_REFUSALS = [
    pytest.param(
        bin_payload(IN_0C1, note="B"),
        "bins-0c1-fork",
        BINS12,
        RULES12,
        PermissionError_,
        "PERMISSION_DENIED",
        r"role 'bins-0c1-fork' is not allowed",
        id="f1-fork-alias",
    ),
    pytest.param(
        bin_payload(IN_0C1, version=1),
        "bins-0c1-old",
        BINS12,
        (*RULES12, RoleRule("bins-0c1-old", DAY)),  # even if a rule named it literally
        RequestError,
        "INVALID_ARGUMENT",
        r"role 'bins-0c1-old' is not a bin of key 'k'.s hash-bin delegation bins:12 "
        r"\(bins are 'bins-000'\.\.'bins-fff'\)",
        id="f1-rollback-alias",
    ),
    pytest.param(
        bin_payload(IN_0C1 + IN_0C2),
        "bins-0c1",
        BINS12,
        RULES12,
        PayloadError,
        "INVALID_ARGUMENT",
        rf"target path '{IN_0C2[0]}' belongs in bin 'bins-0c2', not 'bins-0c1'",
        id="f1-path-outside-bin",
    ),
    pytest.param(
        bin_payload(IN_0C2),
        "bins-0c1",
        BINS12,
        RULES12,
        PayloadError,
        "INVALID_ARGUMENT",
        r"belongs in bin 'bins-0c2', not 'bins-0c1'",
        id="f1-bin-replayed-under-another-bin",
    ),
    pytest.param(
        bin_payload(IN_0C1, extra={"delegations": {"keys": {}, "roles": []}}),
        "bins-0c1",
        BINS12,
        RULES12,
        PayloadError,
        "INVALID_ARGUMENT",
        r"bin 'bins-0c1' has a 'delegations' field: a hash bin delegates nothing \(PEP 458\)",
        id="f1-bin-with-delegations",
    ),
    pytest.param(
        bin_payload(IN_0C1).replace(b'"targets":{', b'"targetz":{'),
        "bins-0c1",
        BINS12,
        RULES12,
        PayloadError,
        "INVALID_ARGUMENT",
        r"bin 'bins-0c1' has no 'targets' object",
        id="f1-bin-without-targets",
    ),
    pytest.param(
        bin_payload(IN_0C1),
        "bins-0c1",
        None,
        LEGACY_RULES,
        PolicyError,
        "FAILED_PRECONDITION",
        r"key 'k' allows role 'bins-0c1' only through the glob 'bins-\*' and declares no "
        r"hash-bin delegation.*--bins PREFIX:BIT_LENGTH",
        id="f1-legacy-key-glob-bin",
    ),
    pytest.param(
        bin_payload(IN_0C1),
        "bins-0c1-fork",
        None,
        LEGACY_RULES,
        PolicyError,
        "FAILED_PRECONDITION",
        r"declares no hash-bin delegation",
        id="f1-legacy-key-fork-alias",
    ),
    pytest.param(
        bin_payload(paths_in(BinsDelegation("bins", 14), "bins-00c1", 1)),
        "bins-00c1",
        BINS12,
        RULES12,
        PermissionError_,
        "PERMISSION_DENIED",
        r"role 'bins-00c1' is not allowed",
        id="f1-other-bit-length",
    ),
    # TUF's signed bytes do not name their role: targets metadata that is not a
    # bin, signed by a key that declares bins, would verify as each bin its
    # paths hash into (a fork of that bin at that version).
    pytest.param(
        bin_payload(IN_0C1 + IN_0C2),
        "delegated",
        BINS12,
        (*RULES12, RoleRule("delegated", DAY)),
        PayloadError,
        "INVALID_ARGUMENT",
        r"role 'delegated' lists target files, but the key declares the bins bins:12 .* "
        r"would also verify as 'bins-0c[12]'",
        id="f1-delegated-role-listing-targets-is-a-bin-in-disguise",
    ),
    pytest.param(
        bin_payload(IN_0C1 + IN_0C2),  # one bin's paths alone: the role "disagrees"
        "targets",
        BINS12,
        (*RULES12, RoleRule("targets", DAY)),
        PayloadError,
        "INVALID_ARGUMENT",
        r"role 'targets' lists target files, .* would also verify as 'bins-0c[12]'",
        id="f1-top-level-targets-listing-targets-is-a-bin-in-disguise",
    ),
]


@pytest.mark.parametrize(
    ("payload", "role", "bins", "rules", "cls", "code", "reason"), SIGN_REFUSALS
)
def test_bin_sign_refusals(
    payload: bytes,
    role: str,
    bins: BinsDelegation | None,
    rules: tuple[RoleRule, ...],
    cls: type[Exception],
    code: str,
    reason: str,
) -> None:
    with pytest.raises(TufSignerError, match=reason) as excinfo:
        sign(payload, role, bins, rules)
    assert excinfo.value.code == code
    assert type(excinfo.value) is cls


@pytest.mark.parametrize(
    ("payload", "role", "bins", "rules"),
    [
        pytest.param(bin_payload(IN_0C1), "bins-0c1", BINS12, RULES12, id="f1-bin-ok"),
        pytest.param(bin_payload([]), "bins-0c1", BINS12, RULES12, id="f1-empty-bin-ok"),
        pytest.param(bin_payload([]), "bins-fff", BINS12, RULES12, id="f1-empty-bin-any-bin"),
        pytest.param(
            bin_payload(IN_0C1),
            "bins-0c1",
            BINS12,
            (RoleRule("bins-0c1", DAY),),
            id="f1-literal-bin-rule",
        ),
        pytest.param(
            bin_payload(IN_0C1 + IN_0C2),
            "bins-0c1",
            None,
            (RoleRule("bins-0c1", DAY),),
            id="f1-legacy-literal-targets-role",
        ),
    ],
)
def test_bin_sign_grants(
    payload: bytes, role: str, bins: BinsDelegation | None, rules: tuple[RoleRule, ...]
) -> None:
    assert sign(payload, role, bins, rules) == role


def test_legacy_key_still_signs_timestamp_and_snapshot() -> None:
    for kind in ("timestamp", "snapshot"):
        signed = {
            "_type": kind,
            "spec_version": "1.0.31",
            "version": 3,
            "expires": "2025-06-02T00:00:00Z",
            "meta": {"snapshot.json" if kind == "timestamp" else "targets.json": {"version": 1}},
        }
        payload = str(encode_canonical(signed)).encode()
        assert sign(payload, kind, None, LEGACY_RULES) == kind


def test_empty_bin_bytes_fit_every_bin() -> None:
    # Documented in _bins and README: an empty bin's bytes do not name their bin,
    # so the same bytes (and so one signature) pass as any bin at that version.
    empty = bin_payload([])
    assert [sign(empty, bin_name(BINS12, n)) for n in (0, 0xC1, 0xFFF)] == [
        "bins-000",
        "bins-0c1",
        "bins-fff",
    ]


# --- key creation: globs only for the declared bins ------------------------------------

CREATE_REFUSALS = [
    pytest.param(
        (RoleRule("bins-*", DAY),),
        BINS12,
        r"'bins-\*' could match names that are not bins of bins:12 \('bins-000'\.\.'bins-fff'\); "
        r"use 'bins-\[0-9a-f\]\[0-9a-f\]\[0-9a-f\]'",
        id="f1-glob-too-wide",
    ),
    pytest.param((RoleRule("bins-???", DAY),), BINS12, r"could match", id="f1-glob-question"),
    pytest.param(
        (RoleRule("bins-[0-9a-f][0-9a-f][0-9a-fA-F]", DAY),),
        BINS12,
        r"could match",
        id="f1-glob-upper-hex",
    ),
    pytest.param(
        (RoleRule("bins-[0-3][0-9a-f][0-9a-f][0-9a-f]", DAY),),
        BINS12,
        r"could match",
        id="f1-glob-wrong-length",
    ),
    pytest.param(
        (RoleRule("bins-[0-7][0-9a-f][0-9a-f][0-9a-f]", DAY),),
        PEP458_BINS,
        r"use 'bins-\[0-3\]\[0-9a-f\]\[0-9a-f\]\[0-9a-f\]'",
        id="f1-glob-beyond-last-bin",
    ),
    pytest.param(
        (RoleRule("bins-[!g]00", DAY),), BINS12, r"could match", id="f1-glob-negated-class"
    ),
    pytest.param((RoleRule("bin[s]-000", DAY),), BINS12, r"could match", id="f1-glob-in-prefix"),
    pytest.param(
        (RoleRule("other-[0-9]", DAY),), BINS12, r"could match", id="f1-glob-matches-no-bin"
    ),
    pytest.param(
        (RoleRule("bins-0c1-fork", DAY),),
        BINS12,
        r"'bins-0c1-fork' is under the bins prefix 'bins' but is not one of its bins",
        id="f1-literal-alias",
    ),
    pytest.param(
        (RoleRule("bins-*", DAY),),
        None,
        r"'bins-\*' is a glob, and globs are only for hashed bins: declare the bins the key "
        r"serves with --bins PREFIX:BIT_LENGTH",
        id="f1-glob-without-bins",
    ),
    pytest.param(
        (RoleRule("delegated-[ab]", DAY),), None, r"--bins PREFIX:BIT_LENGTH", id="f1-any-glob"
    ),
    pytest.param((RoleRule("bins-0", DAY),), BinsDelegation("bins", 0), r"1\.\.32", id="f1-bits-0"),
    pytest.param((RoleRule("b", DAY),), BinsDelegation("bins", 33), r"1\.\.32", id="f1-bits-33"),
    pytest.param(
        (RoleRule("b", DAY),), BinsDelegation("bi*s", 4), r"glob character", id="f1-prefix-glob"
    ),
    pytest.param(
        (RoleRule("b", DAY),), BinsDelegation("a/b", 4), r"contains '/'", id="f1-prefix-slash"
    ),
    pytest.param(
        (RoleRule("b", DAY),), BinsDelegation("", 4), r"bins prefix is empty", id="f1-prefix-empty"
    ),
    pytest.param(
        (RoleRule("b", DAY),),
        BinsDelegation("b" * 250, 32),
        r"bin name is 259 characters long",
        id="f1-prefix-too-long-for-names",
    ),
]


@pytest.mark.parametrize(("rules", "bins", "reason"), CREATE_REFUSALS)
def test_create_refusals(
    rules: tuple[RoleRule, ...], bins: BinsDelegation | None, reason: str
) -> None:
    with pytest.raises(RequestError, match=reason) as excinfo:
        validate_rules(rules, bins)
    assert type(excinfo.value) is RequestError


@pytest.mark.parametrize(
    "pattern",
    [
        "bins-[0-9a-f][0-9a-f][0-9a-f]",
        "bins-0[0-9a-f][0-9a-f]",
        "bins-0c1",
        "bins-[0-7][a-c][0-9]",
        "bins-[abc][def][0123]",
        "bins-[f-a0]00",  # fnmatch drops the empty range f-a: only '0' is left
    ],
)
def test_create_accepts_globs_within_bins(pattern: str) -> None:
    validate_rules((RoleRule(pattern, DAY),), BINS12)


def test_negated_class_is_exact() -> None:
    from tuf_signer.policy._bins import _element_within

    hexdigits = frozenset("0123456789abcdef")
    # Only a class that excludes every other code point leaves just hex digits.
    assert _element_within("[!\x00-/:-`g-\U0010ffff]", hexdigits)
    assert not _element_within("[!\x01-/:-`g-\U0010ffff]", hexdigits)
    assert not _element_within("[!g-z]", hexdigits)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("bins:14", BinsDelegation("bins", 14)),
        ("a:b:3", BinsDelegation("a:b", 3)),
    ],
)
def test_parse_bins(text: str, expected: BinsDelegation) -> None:
    assert parse_bins(text) == expected


@pytest.mark.parametrize("text", ["bins", "bins:", ":14", "bins:x", "bins:٣", "bins:100", "bins:0"])
def test_parse_bins_refusals(text: str) -> None:
    with pytest.raises(RequestError, match=r"PREFIX:BIT_LENGTH|1\.\.32"):
        parse_bins(text)


# --- the glob reader agrees with fnmatch ----------------------------------------------

_GLOB_CHARS = st.sampled_from([*"!-]^[\\a0fgz-9Z~", "\u00e9", "\U0001f600"])


@settings(max_examples=400, deadline=None)
@given(
    st.text(_GLOB_CHARS, max_size=8).map(lambda body: f"[{body}]"),
    st.lists(st.characters(max_codepoint=0x2FF) | _GLOB_CHARS, min_size=1, max_size=40),
)
def test_class_ranges_agree_with_fnmatch(element: str, probes: list[str]) -> None:
    elements = split_glob(element)
    for part in elements:
        if part.startswith("[") and len(part) > 1:
            negated, ranges = class_ranges(part)
            for c in probes:
                inside = any(lo <= ord(c) <= hi for lo, hi in ranges)
                assert (inside != negated) == fnmatch.fnmatchcase(c, part), (part, c)
        elif part not in ("*", "?"):
            for c in probes:
                assert (c == part) == fnmatch.fnmatchcase(c, part)
    # The elements, joined, are the glob: each matches one character.
    assert "".join(elements) == element


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(["?", "*", "[0-3]", "[0-9a-f]", "[!a]", "[a-f]", "0", "c", "g", "[0-9A]"]),
        min_size=1,
        max_size=4,
    ),
    st.lists(st.text("0123456789abcdefgA-", min_size=1, max_size=5), max_size=30),
)
def test_accepted_globs_match_only_bins(parts: list[str], suffixes: list[str]) -> None:
    pattern = "bins-" + "".join(parts)
    try:
        validate_rules((RoleRule(pattern, DAY),), BINS12)
    except RequestError:
        return
    for suffix in suffixes:
        name = "bins-" + suffix
        if fnmatch.fnmatchcase(name, pattern):
            assert bin_index(BINS12, name) is not None, (pattern, name)
