"""Role inference, listings, delegation digests and clock skew (issue 14), as tables.

Payloads are built by python-tuf (the producer RSTUF uses), with its own
``SuccinctRoles`` as the reference for which bin a path belongs in.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

import pytest
from securesystemslib.signer import SSlibKey
from tuf.api.metadata import (
    Delegations,
    Metadata,
    MetaFile,
    Snapshot,
    SuccinctRoles,
    TargetFile,
    Targets,
    Timestamp,
)

from tuf_signer.errors import PayloadError, PermissionError_, PolicyError, RequestError
from tuf_signer.model import BinsDelegation, RoleRule
from tuf_signer.policy import (
    bins_pattern,
    check_sign_request,
    delegated_keyids,
    delegations_digest,
    empty_bin_role,
    is_empty_bin_role,
    listing,
    parse_canonical,
)

from .conftest import NOW

BINS = BinsDelegation("bins", 8)
SUCCINCT = SuccinctRoles([], 1, 8, "bins")  # python-tuf's own rule, the reference
DAY = 86400
RULES = (
    RoleRule("timestamp", DAY),
    RoleRule("snapshot", DAY),
    RoleRule("targets", 365 * DAY),
    RoleRule(bins_pattern(BINS), DAY),
)
KEY = SSlibKey("ab" * 32, "ed25519", "ed25519", {"public": "cd" * 32})


def _paths(bin_role: str, n: int) -> list[str]:
    out = []
    i = 0
    while len(out) < n:
        path = f"pkg/{i}/file-{i}.tar.gz"
        if SUCCINCT.get_role_for_target(path) == bin_role:
            out.append(path)
        i += 1
    return out


def _targets(paths: list[str], *, delegations: Delegations | None = None, **kw: Any) -> bytes:
    files = {
        p: TargetFile(length=1, hashes={"sha256": hashlib.sha256(p.encode()).hexdigest()}, path=p)
        for p in paths
    }
    expires = kw.pop("expires", NOW + timedelta(hours=12))
    t = Targets(version=kw.pop("version", 3), expires=expires, targets=files, **kw)
    t.delegations = delegations
    return Metadata(t).signed_bytes


def _top_level(bins: SuccinctRoles = SUCCINCT) -> bytes:
    return _targets([], delegations=Delegations(keys={KEY.keyid: KEY}, succinct_roles=bins))


def _check(payload: bytes, role: str = "", *, bins: BinsDelegation | None = BINS, **kw: Any):  # type: ignore[no-untyped-def]
    return check_sign_request(payload, role, "online", RULES, NOW, 1 << 20, bins=bins, **kw)


# --- inference (item 3) ------------------------------------------------------------------

INFERRED = {
    "one-bin": (lambda: _targets(_paths("bins-1f", 3)), "bins-1f"),
    "top-level-targets": (_top_level, "targets"),
    "empty-bin": (lambda: _targets([]), "EMPTY"),
}


@pytest.mark.parametrize("case", INFERRED.values(), ids=INFERRED.keys())
def test_a_role_less_targets_payload_is_attributed_by_its_contents(case: Any) -> None:
    build, expected = case
    payload = build()
    role, info, rule = _check(payload)
    if expected == "EMPTY":
        assert role == empty_bin_role(BINS, info.payload_sha256) and is_empty_bin_role(role)
        assert rule.pattern == bins_pattern(BINS)
        assert info.delegations_sha256 == ""  # an empty bin delegates nothing
    else:
        assert role == expected
        # Naming the role it is inferred to be is accepted too.
        assert _check(payload, expected)[0] == expected
    if expected == "targets":
        assert info.delegations_sha256 == delegations_digest(parse_canonical(payload))
        assert rule.max_validity == 365 * DAY


REFUSED = {
    "no-bins-declared": (
        lambda: _targets(_paths("bins-1f", 1)),
        "",
        None,
        RequestError,
        "role name required for targets metadata: key 'online' declares no hash-bin",
    ),
    "paths-in-two-bins": (
        lambda: _targets([*_paths("bins-01", 1), *_paths("bins-02", 1)]),
        "",
        BINS,
        PayloadError,
        "no role can be inferred: the target paths belong in several bins",
    ),
    "other-succinct-roles": (
        lambda: _top_level(SuccinctRoles([], 1, 9, "bins")),
        "",
        BINS,
        PayloadError,
        "is not the declared bins bins:8",
    ),
    "custom-delegations": (
        lambda: _targets([], delegations=Delegations(keys={}, roles={})),
        "",
        BINS,
        PayloadError,
        "must delegate to the declared succinct_roles",
    ),
    "explicit-targets-but-a-bin": (
        lambda: _targets(_paths("bins-1f", 2)),
        "targets",
        BINS,
        RequestError,
        "role 'targets' disagrees with the payload, which is 'bins-1f'",
    ),
    "explicit-other-role-but-a-bin": (
        lambda: _targets(_paths("bins-1f", 2)),
        "bins-20",
        BINS,
        PayloadError,
        "belongs in bin 'bins-1f', not 'bins-20'",
    ),
    "explicit-bin-but-top-level": (
        _top_level,
        "bins-20",
        BINS,
        PayloadError,
        "a hash bin delegates nothing",
    ),
}


@pytest.mark.parametrize("case", REFUSED.values(), ids=REFUSED.keys())
def test_inference_refuses_what_no_bin_or_role_can_be(case: Any) -> None:
    build, role, bins, error, reason = case
    with pytest.raises(error, match=reason.replace("(", r"\(").replace(")", r"\)")):
        _check(build(), role, bins=bins)


def test_an_empty_bin_needs_a_rule_for_every_bin() -> None:
    half = (RoleRule("bins-[0-7][0-9a-f]", DAY),)
    with pytest.raises(PermissionError_, match="role 'bins-ff' is not allowed"):
        check_sign_request(_targets([]), "", "online", half, NOW, 1 << 20, bins=BINS)


def test_every_path_of_a_bin_is_python_tufs_bin() -> None:
    for n in range(0, 256, 17):
        role = f"bins-{n:02x}"
        assert _check(_targets(_paths(role, 4)))[0] == SUCCINCT.get_role_for_target(
            _paths(role, 1)[0]
        )


# --- listings (item 5) ----------------------------------------------------------------


def _snapshot(meta: dict[str, Any]) -> dict[str, Any]:
    snap = Snapshot(version=2, expires=NOW + timedelta(hours=1))
    snap.meta = {k: MetaFile(v) for k, v in meta.items()}
    return parse_canonical(Metadata(snap).signed_bytes)


def test_a_snapshot_lists_only_the_roles_this_key_signs() -> None:
    obj = _snapshot({"targets.json": 4, "bins-00.json": 2, "bins-ff.json": 1, "other.json": 9})
    got = listing(obj, "snapshot", BINS, RULES)
    assert sorted(got or ()) == [("bins-00", 2, True), ("bins-ff", 1, True), ("targets", 4, False)]
    # A key without a bins declaration holds nothing.
    assert listing(obj, "snapshot", None, RULES) is None
    # Rules that allow only some bins list only those.
    some = (RoleRule("snapshot", DAY), RoleRule("bins-0[0-9a-f]", DAY))
    assert listing(obj, "snapshot", BINS, some) == (("bins-00", 2, True),)


def test_a_timestamp_lists_its_snapshot() -> None:
    ts = Metadata(Timestamp(version=3, expires=NOW + timedelta(hours=1), snapshot_meta=MetaFile(7)))
    obj = parse_canonical(ts.signed_bytes)
    assert listing(obj, "timestamp", BINS, RULES) == (("snapshot", 7, False),)


LISTING_REFUSED = {
    "snapshot-without-meta": ("snapshot", {}, "snapshot metadata has no 'meta' object"),
    "timestamp-without-snapshot": ("timestamp", {"meta": {}}, "names no 'snapshot.json'"),
    "version-zero": (
        "snapshot",
        {"meta": {"bins-00.json": {"version": 0}}},
        r"meta\['bins-00.json'\].version is not an integer",
    ),
    "version-not-an-integer": (
        "snapshot",
        {"meta": {"bins-00.json": {"version": "3"}}},
        r"meta\['bins-00.json'\].version",
    ),
    "entry-not-an-object": ("timestamp", {"meta": {"snapshot.json": 3}}, "snapshot.json"),
}


@pytest.mark.parametrize("case", LISTING_REFUSED.values(), ids=LISTING_REFUSED.keys())
def test_a_listing_that_cannot_be_read_is_refused(case: Any) -> None:
    type_, obj, reason = case
    with pytest.raises(PayloadError, match=reason):
        listing(obj, type_, BINS, RULES)


def test_the_delegations_digest_is_of_their_canonical_json() -> None:
    a = parse_canonical(_top_level())
    b = parse_canonical(_top_level(SuccinctRoles([], 1, 9, "bins")))
    assert delegations_digest(a) != delegations_digest(b)
    assert delegations_digest({}) == hashlib.sha256(b"null").hexdigest()


# --- clock skew (item 7) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("ahead", "skew", "ok"),
    [(0, 0, True), (2, 0, False), (2, 300, True), (300, 300, True), (301, 300, False)],
    ids=["exact-bound", "2s-ahead-no-skew", "2s-ahead", "at-skew", "beyond-skew"],
)
def test_the_expiry_bound_tolerates_max_clock_skew(ahead: int, skew: int, ok: bool) -> None:
    ts = Timestamp(
        version=3,
        expires=NOW + timedelta(seconds=DAY + ahead),
        snapshot_meta=MetaFile(7),
    )
    payload = Metadata(ts).signed_bytes
    if ok:
        _check(payload, max_clock_skew=skew)
    else:
        with pytest.raises(PolicyError, match="beyond the maximum validity of 86400 s"):
            _check(payload, max_clock_skew=skew)


@pytest.mark.parametrize("bits", [1, 3, 4, 5, 8, 13, 14, 16])
def test_a_listing_knows_the_bins_exactly_as_bin_index_does(bits: int) -> None:
    from tuf_signer.policy import bin_index

    bins = BinsDelegation("bins", bits)
    names = [f"bins-{n:0{w}x}" for w in (1, 2, 3, 4, 5) for n in range(0, 70000, 7)]
    names += ["bins-0C1", "bins-+c1", "bins-", "bins", "x-00", "bins-00 ", "bins-0_1"]
    obj = {"meta": {f"{n}.json": {"version": 1} for n in names}}
    rules = (RoleRule(bins_pattern(bins), DAY),)
    got = {role for role, _, _ in listing(obj, "snapshot", bins, rules) or ()}
    assert got == {n for n in names if bin_index(bins, n) is not None}


# --- delegated keyids (first delegations without approval only to the service's keys) ---

DELEGATED: dict[str, tuple[Any, frozenset[str] | None]] = {
    "none": (None, frozenset()),
    "succinct": (
        {"keys": {"k1": {}}, "succinct_roles": {"keyids": ["k1", "k2"], "threshold": 1}},
        frozenset({"k1", "k2"}),
    ),
    "roles": (
        {"keys": {}, "roles": [{"name": "a", "keyids": ["k3"]}, {"name": "b", "keyids": []}]},
        frozenset({"k3"}),
    ),
    "not-an-object": ([], None),
    "keys-not-an-object": ({"keys": ["k1"]}, None),
    "roles-not-a-list": ({"keys": {}, "roles": {"a": 1}}, None),
    "keyids-not-strings": ({"keys": {}, "succinct_roles": {"keyids": [1]}}, None),
    "keyids-missing": ({"keys": {}, "roles": [{"name": "a"}]}, None),
}


@pytest.mark.parametrize("case", DELEGATED.values(), ids=DELEGATED.keys())
def test_delegated_keyids_name_every_key_or_nothing(
    case: tuple[Any, frozenset[str] | None],
) -> None:
    delegations, expected = case
    obj = {"_type": "targets"} if delegations is None else {"delegations": delegations}
    assert delegated_keyids(obj) == expected
