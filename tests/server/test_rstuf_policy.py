"""RSTUF's way of signing, on a real server (issue 14, items 3-7 and 9).

RSTUF signs with one online key for every role, through python-tuf's
``Metadata.sign``, which passes only bytes: no role reaches the signer. These
tests send what it sends (role-less payloads built by python-tuf, bins from many
concurrent calls) and hold the server to the rules: role inference, online
top-level targets with guarded delegations, snapshot/timestamp coherence,
clock skew, the recovery paths of RSTUF's failures (obstacles 2 and 3), and a
rotation in which no Sign is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from securesystemslib.signer import SSlibKey
from tuf.api.metadata import (
    Delegations,
    Metadata,
    MetaFile,
    Snapshot,
    SuccinctRoles,
    Targets,
)

from tuf_signer.audit import SqliteAuditStore, verify_store
from tuf_signer.model import Outcome
from tuf_signer.policy import delegations_digest, parse_canonical
from tuf_signer.v1 import signer_pb2 as pb

from .conftest import TEST_BIN_PATTERN, TEST_BINS, Harness, bin_role, start_harness, stop_harness

DAY = 86400
FAILED = grpc.StatusCode.FAILED_PRECONDITION
INVALID = grpc.StatusCode.INVALID_ARGUMENT
# RSTUF's online key: every online role, top-level targets valid a year (TARGETS_ONLINE_KEY).
RSTUF_ROLES = [
    ("timestamp", DAY),
    ("snapshot", DAY),
    ("targets", 365 * DAY),
    (TEST_BIN_PATTERN, DAY),
]


@dataclass
class Repo:
    """What an RSTUF-like repository keeps: its key and the versions it last signed."""

    h: Harness
    key: str
    keyid: str
    public: SSlibKey
    bins: dict[str, int]
    snapshot: int = 0
    timestamp: int = 0
    targets: int = 0

    async def sign(self, payload: bytes, role: str = "", pin: str = "") -> pb.SignResponse:
        return await self.h.sign(self.key, payload, role=role, keyid=pin or self.keyid)

    def bin_payload(self, role: str, version: int, n: int = 2, salt: str = "") -> bytes:
        return self.h.payloads.targets(version, n_targets=n, salt=salt, role=role)

    def empty_bin(self, version: int, drift: int = 0) -> bytes:
        # RSTUF computes expires per bin (now + N days, to the second).
        expires = self.h.payloads.expires(DAY) - timedelta(seconds=drift)
        return Metadata(Targets(version=version, expires=expires)).signed_bytes

    def top_level(self, version: int, keyids: list[str] | None = None) -> bytes:
        keyids = keyids or [self.keyid]
        succinct = SuccinctRoles(keyids, 1, TEST_BINS.bit_length, TEST_BINS.prefix)
        t = Targets(version=version, expires=self.h.payloads.expires(365 * DAY))
        t.delegations = Delegations(keys={self.keyid: self.public}, succinct_roles=succinct)
        return Metadata(t).signed_bytes

    def snapshot_payload(self, version: int, bins: dict[str, int] | None = None) -> bytes:
        listed = self.bins if bins is None else bins
        meta = {"targets.json": MetaFile(self.targets or 1)}
        meta |= {f"{r}.json": MetaFile(v) for r, v in listed.items()}
        snap = Snapshot(version=version, expires=self.h.payloads.expires(DAY), meta=meta)
        return Metadata(snap).signed_bytes

    async def bootstrap(self, n_bins: int = 256) -> None:
        """RSTUF's bootstrap: empty bins from a pool, targets, snapshot, timestamp."""
        pool = asyncio.Semaphore(8)

        async def one(i: int) -> None:
            async with pool:
                await self.sign(self.empty_bin(1, drift=i % 3))

        await asyncio.gather(*(one(i) for i in range(n_bins)))
        self.bins = {bin_role(i): 1 for i in range(n_bins)}
        await self.sign(self.top_level(1))
        self.targets = 1
        await self.publish()

    async def publish(self) -> None:
        """RSTUF's chain: a new snapshot listing the bins, then a timestamp naming it."""
        self.snapshot += 1
        await self.sign(self.snapshot_payload(self.snapshot))
        self.timestamp += 1
        await self.sign(self.h.payloads.timestamp(self.timestamp, self.snapshot))


async def rstuf_repo(h: Harness, name: str = "online") -> Repo:
    info = await h.create_key(name, roles=RSTUF_ROLES)
    v1 = info.versions[0]
    public = SSlibKey.from_dict(v1.keyid, json.loads(v1.public_key_json))
    return Repo(h, name, v1.keyid, public, {})


def verified(h: Harness) -> None:
    """``audit verify``'s checks hold: the chain, P3 per role, every mark against its record."""
    store = SqliteAuditStore(h.config.audit.path)
    try:
        verify_store(store)
    finally:
        store.close()


async def role_state(h: Harness, key: str, role: str) -> pb.RoleStateInfo | None:
    r = await h.signer.GetRoleState(pb.GetRoleStateRequest(key=key, role=role))
    return r.states[0] if r.states else None


# --- the RSTUF path ----------------------------------------------------------------------


async def test_an_rstuf_repository_signs_with_one_role_less_signer(harness: Harness) -> None:
    h = harness
    repo = await rstuf_repo(h)
    await repo.bootstrap()
    # Three distinct empty-bin payloads (expiry drift), each attributed to its empty bin.
    states = (await h.signer.GetRoleState(pb.GetRoleStateRequest(key="online"))).states
    assert sorted(s.role.split("-*empty-")[0] for s in states if "*" in s.role) == ["bins"] * 3
    assert (await role_state(h, "online", "targets")).version == 1  # type: ignore[union-attr]

    # A round: a bin gets targets (role-less: attributed by its paths), then publish.
    bin_ = bin_role(0x2A)
    r = await repo.sign(repo.bin_payload(bin_, 2))
    assert (r.role, r.metadata_version) == (bin_, 2)
    repo.bins[bin_] = 2
    await repo.publish()
    assert (await role_state(h, "online", bin_)).version == 2  # type: ignore[union-attr]

    # A bin rollback and a snapshot rollback through the same signer are refused.
    with pytest.raises(grpc.aio.AioRpcError) as bad_bin:
        await repo.sign(repo.bin_payload(bin_, 1, salt="old"))
    assert bad_bin.value.code() == FAILED and "rollback" in (bad_bin.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as bad_snap:
        await repo.sign(repo.snapshot_payload(repo.snapshot + 1, repo.bins | {bin_: 1}))
    assert bad_snap.value.code() == FAILED
    assert f"lists '{bin_}' at version 1, below version 2" in (bad_snap.value.details() or "")

    # GetRoleState for one role is a key lookup (and answers the same).
    one = await role_state(h, "online", bin_)
    assert one is not None and one.version == 2
    verified(h)


# --- bad input, as a table --------------------------------------------------------------

Arrange = Callable[[Repo], Awaitable[tuple[str, bytes, str, str]]]


def _case(key: str, role: str, build: Callable[[Repo], bytes], state_role: str = "") -> Arrange:
    async def arrange(repo: Repo) -> tuple[str, bytes, str, str]:
        return key, build(repo), role, state_role or role

    return arrange


def _two_bins(repo: Repo) -> bytes:
    a = parse_canonical(repo.bin_payload(bin_role(1), 3, n=1))
    b = parse_canonical(repo.bin_payload(bin_role(2), 3, n=1, salt="x"))
    t = Targets.from_dict({**a, "targets": {**a["targets"], **b["targets"]}})
    return Metadata(t).signed_bytes


def _changed_delegations(repo: Repo) -> bytes:
    return repo.top_level(2, keyids=[repo.keyid, "ab" * 32])  # a key outside the service


def _top_level_listing_a_bins_targets(repo: Repo) -> bytes:
    # The approved delegations, unchanged, plus target files of bins-01: signed
    # as top-level targets version 2, it would verify as a second bins-01
    # version 2 (a fork; signed bytes do not name their role).
    top = Metadata.from_bytes(_metadata_file(repo.top_level(2)))
    files = parse_canonical(repo.bin_payload(bin_role(1), 2, salt="fork"))["targets"]
    top.signed.targets = Targets.from_dict(
        {
            "_type": "targets",
            "spec_version": "1.0.31",
            "version": 2,
            "expires": "2099-01-01T00:00:00Z",
            "targets": files,
        }
    ).targets
    return top.signed_bytes


def _metadata_file(signed: bytes) -> bytes:
    return b'{"signatures":[],"signed":' + signed + b"}"


BAD: dict[str, tuple[Arrange, grpc.StatusCode, str]] = {
    "role-less-targets-without-bins": (
        _case("plain", "", lambda r: r.bin_payload(bin_role(1), 3), "targets"),
        INVALID,
        "role name required for targets metadata: key 'plain' declares no hash-bin delegation",
    ),
    "paths-in-two-bins": (
        _case("online", "", _two_bins, bin_role(1)),
        INVALID,
        "no role can be inferred: the target paths belong in several bins",
    ),
    "explicit-role-disagrees": (
        _case("online", "targets", lambda r: r.bin_payload(bin_role(1), 3)),
        INVALID,
        f"role 'targets' disagrees with the payload, which is '{bin_role(1)}'",
    ),
    "top-level-targets-changed-delegations": (
        _case("online", "", _changed_delegations, "targets"),
        FAILED,
        "delegations of 'targets' version 2 (sha256 ",
    ),
    "top-level-targets-listing-a-bins-targets": (
        _case("online", "", _top_level_listing_a_bins_targets, "targets"),
        INVALID,
        f"role 'targets' lists target files, but the key declares the bins {TEST_BINS} and "
        f"signs target files only in them: this signature would also verify as '{bin_role(1)}'",
    ),
    "snapshot-rolls-a-bin-back": (
        _case("online", "", lambda r: r.snapshot_payload(3, r.bins | {bin_role(1): 1}), "snapshot"),
        FAILED,
        f"coherence: snapshot version 3 lists '{bin_role(1)}' at version 1, below version 2",
    ),
    "snapshot-names-a-bin-version-never-signed": (
        _case("online", "", lambda r: r.snapshot_payload(3, r.bins | {bin_role(1): 7}), "snapshot"),
        FAILED,
        f"lists '{bin_role(1)}' at version 7, which key 'online' never signed",
    ),
    "snapshot-without-meta": (
        _case(
            "online",
            "",
            lambda r: r.snapshot_payload(3).replace(b'"meta":', b'"nometa":'),
            "snapshot",
        ),
        INVALID,
        "snapshot metadata has no 'meta' object",
    ),
    "timestamp-names-an-unsigned-snapshot": (
        _case("online", "", lambda r: r.h.payloads.timestamp(3, 9), "timestamp"),
        FAILED,
        "coherence: timestamp version 3 names snapshot version 9, which key 'online' never signed",
    ),
    "timestamp-names-a-lower-snapshot": (
        _case("online", "", lambda r: r.h.payloads.timestamp(3, 1), "timestamp"),
        FAILED,
        "names snapshot version 1, below version 2 that the last timestamp",
    ),
    "expires-beyond-the-bound-plus-skew": (
        _case(
            "online",
            "",
            lambda r: r.h.payloads.timestamp(
                3, 2, expires=r.h.clock.now + timedelta(seconds=DAY + 301)
            ),
            "timestamp",
        ),
        FAILED,
        "beyond the maximum validity of 86400 s plus max_clock_skew 300 s",
    ),
}


@pytest.mark.parametrize("case", BAD.values(), ids=BAD.keys())
async def test_bad_input_is_refused_recorded_unsigned_and_changes_nothing(
    harness: Harness, case: tuple[Arrange, grpc.StatusCode, str]
) -> None:
    arrange, code, reason = case
    h = harness
    repo = await rstuf_repo(h)
    await h.create_key("plain", roles=[("targets", DAY)], bins=None)
    await repo.bootstrap(n_bins=4)
    repo.bins[bin_role(1)] = 2
    await repo.sign(repo.bin_payload(bin_role(1), 2))
    await repo.publish()  # snapshot 2 lists bins-01 at 2; timestamp 2 names snapshot 2
    key, payload, role, state_role = await arrange(repo)
    before = await role_state(h, key, state_role)
    head = h.records()[-1].seq

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await h.sign(key, payload, role=role)
    assert info.value.code() == code
    assert reason in (info.value.details() or ""), info.value.details()

    (record,) = [r for r in h.records() if r.seq > head]
    assert record.event.outcome is Outcome.REFUSED
    assert record.event.status == code.name and reason in record.event.reason
    assert record.event.signature == ""
    assert record.event.payload_sha256 == hashlib.sha256(payload).hexdigest()
    assert await role_state(h, key, state_role) == before


async def test_changed_delegations_sign_once_an_admin_approved_them(harness: Harness) -> None:
    h = harness
    repo = await rstuf_repo(h)
    await repo.bootstrap(n_bins=2)
    payload = _changed_delegations(repo)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await repo.sign(payload)
    digest = delegations_digest(parse_canonical(payload))
    assert digest in (info.value.details() or "")
    approval = await h.admin.ApproveDelegations(
        pb.ApproveDelegationsRequest(
            key="online", role="targets", delegations_sha256=digest, reason="rotation INC-9"
        )
    )
    assert (await repo.sign(payload)).metadata_version == 2
    (record,) = [r for r in h.records() if r.seq == approval.audit_seq]
    assert record.event.operation == "approve-delegations"
    assert record.event.detail["delegations_sha256"] == digest


async def test_first_delegations_to_a_key_outside_the_service_need_an_approval(
    harness: Harness,
) -> None:
    # No trust on first use: a compromised backend that signs top-level targets
    # first must not choose who signs the bins.
    h = harness
    repo = await rstuf_repo(h)
    payload = repo.top_level(1, keyids=[repo.keyid, "ab" * 32])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await repo.sign(payload)
    digest = delegations_digest(parse_canonical(payload))
    assert info.value.code() == FAILED
    assert f"(sha256 {digest}) are the first" in (info.value.details() or "")
    await h.admin.ApproveDelegations(
        pb.ApproveDelegationsRequest(
            key="online", role="targets", delegations_sha256=digest, reason="offline bins key"
        )
    )
    assert (await repo.sign(payload)).role == "targets"


async def test_rules_beyond_the_limit_are_refused_so_the_record_holds_them_all(
    harness: Harness,
) -> None:
    h = harness
    await rstuf_repo(h)
    many = [*RSTUF_ROLES, *((f"role-{i:02d}", DAY) for i in range(65 - len(RSTUF_ROLES)))]
    with pytest.raises(grpc.aio.AioRpcError) as created:
        await h.create_key("wide", roles=many)
    with pytest.raises(grpc.aio.AioRpcError) as edited:
        await h.admin.SetKeyRules(
            pb.SetKeyRulesRequest(
                key="online",
                roles=[pb.RoleRule(pattern=p, max_validity_seconds=s) for p, s in many],
                reason="too many",
            )
        )
    for info in (created, edited):
        assert info.value.code() == INVALID
        assert "rules: 65 role rules, more than the limit of 64" in (info.value.details() or "")
    # At the limit, the record holds every rule.
    info = await h.create_key("wide", roles=many[:64])
    (record,) = [
        r
        for r in h.records()
        if r.event.operation == "create-key"
        and r.event.key_name == "wide"
        and r.event.outcome is Outcome.GRANTED
    ]
    assert len(record.event.detail["roles"]) == len(info.roles) == 64


async def test_reset_roles_drops_the_floors_of_bins_listed_through_empty_bins(
    harness: Harness,
) -> None:
    # Bins only ever signed empty have no mark of their own to reset: the
    # floor the last snapshot set for them goes with reset-roles (item 4).
    h = harness
    repo = await rstuf_repo(h)
    await repo.bootstrap(n_bins=4)
    await repo.sign(repo.empty_bin(2))  # RSTUF's expiry bump: every bin at 2, still empty
    repo.bins = {r: 2 for r in repo.bins}
    await repo.publish()
    await h.admin.ResetRoleStates(
        pb.ResetRoleStatesRequest(key="online", version=0, reason="re-bootstrap after INC-4")
    )
    h.clock.now += timedelta(minutes=5)
    again = Repo(h, repo.key, repo.keyid, repo.public, {})
    await again.bootstrap(n_bins=4)  # lists every bin at 1 again
    assert again.snapshot == 1


async def test_a_timestamp_reset_keeps_the_snapshot_floor(harness: Harness) -> None:
    # Only reset-roles (RSTUF's re-bootstrap) forgets what the last timestamp
    # named; a reset of timestamp alone cannot roll the snapshot back.
    h = harness
    repo = await rstuf_repo(h)
    await repo.bootstrap(n_bins=2)
    await repo.publish()  # snapshot 2, timestamp 2
    await h.admin.ResetRoleState(
        pb.ResetRoleStateRequest(key="online", role="timestamp", version=2, reason="INC-5")
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await repo.sign(h.payloads.timestamp(3, 1))
    assert info.value.code() == FAILED
    assert "names snapshot version 1, below version 2" in (info.value.details() or "")
    assert (await repo.sign(h.payloads.timestamp(3, 2))).metadata_version == 3


async def test_a_high_floor_set_before_the_first_snapshot_is_undone_by_a_snapshot_reset(
    harness: Harness,
) -> None:
    # Before the key signs its first snapshot, a timestamp is held to the floor
    # rule only (its snapshots may be another key's): a compromised backend can
    # name a high version. Denial of service, undone on the record.
    h = harness
    repo = await rstuf_repo(h)
    await repo.sign(h.payloads.timestamp(1, 1_000_000))
    await repo.sign(repo.snapshot_payload(1, {}))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await repo.sign(h.payloads.timestamp(2, 1))
    assert "names snapshot version 1, below version 1000000" in (info.value.details() or "")
    await h.admin.ResetRoleState(
        pb.ResetRoleStateRequest(key="online", role="snapshot", version=0, reason="INC-6")
    )
    await repo.sign(repo.snapshot_payload(1, {}))  # the mark is 0 again: signed anew
    assert (await repo.sign(h.payloads.timestamp(2, 1))).metadata_version == 2


async def test_a_policy_edit_lets_an_existing_key_sign_top_level_targets(
    harness: Harness,
) -> None:
    h = harness
    v1 = (await h.create_key("online")).versions[0]  # timestamp, snapshot, bins: no targets
    public = SSlibKey.from_dict(v1.keyid, json.loads(v1.public_key_json))
    top = Repo(h, "online", v1.keyid, public, {})
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await h.sign("online", top.top_level(1))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    edited = await h.admin.SetKeyRules(
        pb.SetKeyRulesRequest(
            key="online",
            roles=[pb.RoleRule(pattern=p, max_validity_seconds=s) for p, s in RSTUF_ROLES],
            reason="RSTUF signs targets online",
        )
    )
    assert [r.pattern for r in edited.key.roles] == [p for p, _ in RSTUF_ROLES]
    assert (await h.sign("online", top.top_level(1))).role == "targets"
    with pytest.raises(grpc.aio.AioRpcError) as glob:
        await h.admin.SetKeyRules(
            pb.SetKeyRulesRequest(
                key="online", roles=[pb.RoleRule(pattern="*", max_validity_seconds=DAY)], reason="x"
            )
        )
    assert glob.value.code() == INVALID


# --- recovery (item 6): RSTUF's obstacles 2 and 3 ---------------------------------------------


async def test_obstacle_2_a_failed_bootstrap_is_retried_after_one_admin_reset(
    harness: Harness,
) -> None:
    h = harness
    repo = await rstuf_repo(h)
    await repo.bootstrap(n_bins=16)
    # RSTUF's bootstrap failed later on; it starts again from version 1 with new content.
    again = Repo(h, repo.key, repo.keyid, repo.public, {})
    h.clock.now += timedelta(minutes=5)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await again.bootstrap(n_bins=16)
    assert refused.value.code() == FAILED
    marks = (await h.signer.GetRoleState(pb.GetRoleStateRequest(key="online"))).states
    r = await h.admin.ResetRoleStates(
        pb.ResetRoleStatesRequest(key="online", version=0, reason="re-bootstrap after INC-3")
    )
    assert r.roles == len(marks) and r.last_audit_seq - r.first_audit_seq + 1 == r.roles
    after = (await h.signer.GetRoleState(pb.GetRoleStateRequest(key="online"))).states
    assert {(s.role, s.version, s.payload_sha256) for s in after} == {
        (s.role, 0, "") for s in marks
    }
    again = Repo(h, repo.key, repo.keyid, repo.public, {})
    await again.bootstrap(n_bins=16)
    assert (await role_state(h, "online", "timestamp")).version == 1  # type: ignore[union-attr]
    verified(h)


async def test_obstacle_3_a_bin_behind_storage_heals_with_an_audited_reset(
    harness: Harness,
) -> None:
    h = harness
    repo = await rstuf_repo(h)
    await repo.bootstrap(n_bins=4)
    bin_ = bin_role(3)
    for v in (2, 3, 4, 5):
        await repo.sign(repo.bin_payload(bin_, v, salt=str(v)))
    # RSTUF's table still says 4: it asks for 5 again, with other content.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await repo.sign(repo.bin_payload(bin_, 5, salt="periodic"))
    assert info.value.code() == FAILED and "equivocation" in (info.value.details() or "")
    await h.admin.ResetRoleState(
        pb.ResetRoleStateRequest(
            key="online", role=bin_, version=4, reason="RSTUF's table is behind storage"
        )
    )
    assert (await repo.sign(repo.bin_payload(bin_, 5, salt="periodic"))).metadata_version == 5
    repo.bins[bin_] = 5
    await repo.publish()
    verified(h)


# --- clock skew (item 7) --------------------------------------------------------------------


async def test_a_repository_clock_two_seconds_ahead_is_not_refused(harness: Harness) -> None:
    h = harness
    await h.create_key("online")
    ahead = h.clock.now + timedelta(days=1, seconds=2)  # RSTUF: its now + 1 day
    assert (await h.sign("online", h.payloads.snapshot(1, expires=ahead))).metadata_version == 1
    assert (await h.sign("online", h.payloads.timestamp(1, expires=ahead))).metadata_version == 1


# --- rotation without an outage (item 9) ------------------------------------------------------


async def test_rotation_with_activate_on_pinned_sign_refuses_no_sign(
    config_path: Path, clock: Any
) -> None:
    with config_path.open("a") as f:
        f.write("\n[policy]\nactivate_on_pinned_sign = true\n")
    h = await start_harness(config_path, clock)
    try:
        repo = await rstuf_repo(h)
        await repo.bootstrap(n_bins=4)
        new = (await h.admin.RotateKey(pb.RotateKeyRequest(key="online"))).version
        assert new.state == pb.PENDING
        # Until its root lists the new key, the repository pins the old keyid.
        await repo.publish()
        # Root v2 lists the new key: the repository pins it, and the first Sign
        # activates it. No Sign is refused.
        repo.keyid = new.keyid
        head = h.records()[-1].seq
        await repo.publish()
        ops = [(r.event.operation, r.event.outcome) for r in h.records() if r.seq > head]
        assert ops[0] == ("activate-key-version", Outcome.GRANTED)
        assert {o for _, o in ops} == {Outcome.GRANTED}
        activation = next(r for r in h.records() if r.seq > head)
        assert activation.event.identity == "anonymous"  # the signing identity, on the record
        assert "activate_on_pinned_sign" in activation.event.detail["by"]
        keys = await h.admin.ListKeys(pb.ListKeysRequest())
        (key,) = [k for k in keys.keys if k.name == "online"]
        assert [v.state for v in key.versions] == [pb.RETIRED, pb.ACTIVE]
    finally:
        await stop_harness(h)


async def test_a_refused_pinned_sign_activates_nothing(config_path: Path, clock: Any) -> None:
    with config_path.open("a") as f:
        f.write("\n[policy]\nactivate_on_pinned_sign = true\n")
    h = await start_harness(config_path, clock)
    try:
        repo = await rstuf_repo(h)
        await repo.bootstrap(n_bins=2)
        await repo.publish()
        new = (await h.admin.RotateKey(pb.RotateKeyRequest(key="online"))).version
        head = h.records()[-1].seq
        # A rollback pinned to the PENDING keyid: refused, and the key stays as it was.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await repo.sign(h.payloads.timestamp(1, 1), pin=new.keyid)
        assert info.value.code() == FAILED and "rollback" in (info.value.details() or "")
        assert [r.event.operation for r in h.records() if r.seq > head] == ["sign"]
        keys = await h.admin.ListKeys(pb.ListKeysRequest())
        (key,) = [k for k in keys.keys if k.name == "online"]
        assert [v.state for v in key.versions] == [pb.ACTIVE, pb.PENDING]
        # The next granted Sign pinned to it activates it.
        repo.keyid = new.keyid
        await repo.publish()
        keys = await h.admin.ListKeys(pb.ListKeysRequest())
        (key,) = [k for k in keys.keys if k.name == "online"]
        assert [v.state for v in key.versions] == [pb.RETIRED, pb.ACTIVE]
    finally:
        await stop_harness(h)


async def test_without_the_opt_in_a_pinned_pending_keyid_is_refused(harness: Harness) -> None:
    h = harness
    repo = await rstuf_repo(h)
    await repo.bootstrap(n_bins=2)
    new = (await h.admin.RotateKey(pb.RotateKeyRequest(key="online"))).version
    repo.keyid = new.keyid
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await repo.publish()
    assert info.value.code() == FAILED and "is not the ACTIVE version" in (
        info.value.details() or ""
    )


# --- a restart ------------------------------------------------------------------------------


async def test_coherence_survives_a_restart(harness: Harness, restart: Any) -> None:
    repo = await rstuf_repo(harness)
    await repo.bootstrap(n_bins=4)
    bin_ = bin_role(2)
    await repo.sign(repo.bin_payload(bin_, 2))
    repo.bins[bin_] = 2
    await repo.publish()
    h = await restart(harness)
    repo.h = h
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await repo.sign(repo.snapshot_payload(repo.snapshot + 1, repo.bins | {bin_: 1}))
    assert info.value.code() == FAILED and "below version 2" in (info.value.details() or "")
    await repo.publish()


# --- the admin calls through the client ------------------------------------------------------


async def test_the_client_edits_rules_approves_delegations_and_resets_every_role(
    harness: Harness,
) -> None:
    from tuf_signer.client import AsyncClient
    from tuf_signer.errors import RemoteError

    h = harness
    repo = await rstuf_repo(h)
    await repo.bootstrap(n_bins=2)
    async with AsyncClient(f"127.0.0.1:{h.server.port}", timeout=30) as client:
        key = await client.set_key_rules("online", RSTUF_ROLES[:3], "no more bins")
        assert [r["pattern"] for r in key["roles"]] == ["timestamp", "snapshot", "targets"]
        with pytest.raises(RemoteError, match="reason is required"):
            await client.set_key_rules("online", RSTUF_ROLES, " ")
        await client.set_key_rules("online", RSTUF_ROLES, "bins again")
        payload = _changed_delegations(repo)
        digest = delegations_digest(parse_canonical(payload))
        with pytest.raises(RemoteError, match="64 lowercase hex"):
            await client.approve_delegations("online", "targets", digest.upper(), "x")
        seq = await client.approve_delegations("online", "targets", digest, "new bins key")
        assert seq > 0
        assert (await repo.sign(payload)).metadata_version == 2
        count, first, last = await client.reset_roles("online", 0, "start again")
        assert count == last - first + 1 >= 4
    verified(h)
