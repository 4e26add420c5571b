"""The monitor's logic (audit/_monitor.py): a python-tuf repository held against a real store.

The repository is built and signed with python-tuf and securesystemslib; its
online signatures are recorded in a real store (SQLite, and PostgreSQL when
one runs), whose checkpoints a software log key signs and a software witness
cosigns (tests/audit/_logkeys.py). The CLI and HTTP run in tests/cli/test_monitor.py.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    SuccinctRoles,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from tuf_signer.audit import AdvanceRole, AuditStore, CreateKey, Entry, tlog_proof
from tuf_signer.audit._monitor import (
    Kind,
    MonitorError,
    MonitorReport,
    NotFoundInRepository,
    check_signatures,
    read_metadata,
    read_repository,
    witnessed_size,
)
from tuf_signer.audit._witnessed import LogKeys
from tuf_signer.model import (
    Algorithm,
    AuditEvent,
    KeyRecord,
    KeyState,
    KeyVersion,
    Outcome,
    RoleRule,
    RoleState,
)

from ._logkeys import SoftwareLogKey, SoftwareWitness

BINS = ("bins-0", "bins-1", "bins-2", "bins-3")
NOW = datetime(2026, 1, 1, tzinfo=UTC)
T0 = "2025-12-31T00:00:00.000000Z"
EXPIRES = "2026-01-02T00:00:00Z"
_SERIALIZER = JSONSerializer(compact=True)


def _digest(md: Metadata) -> str:  # type: ignore[type-arg]
    return hashlib.sha256(md.signed_bytes).hexdigest()


@dataclass
class Repo:
    """A small consistent-snapshot repository: the online key signs timestamp, snapshot, bins."""

    online: CryptoSigner
    offline: CryptoSigner
    consistent: bool = True
    files: dict[str, bytes] = field(default_factory=dict)
    signed: list[tuple[str, Metadata]] = field(default_factory=list)  # type: ignore[type-arg]

    @classmethod
    def build(cls, consistent: bool = True) -> Repo:
        repo = cls(CryptoSigner.generate_ed25519(), CryptoSigner.generate_ed25519(), consistent)
        expires = NOW + timedelta(days=1)
        root = Root(expires=expires, consistent_snapshot=consistent)
        for role in ("root", "targets"):
            root.add_key(repo.offline.public_key, role)
        for role in ("snapshot", "timestamp"):
            root.add_key(repo.online.public_key, role)
        repo.publish("root", Metadata(root), online=False)
        online = repo.online.public_key
        targets = Targets(expires=expires)
        targets.delegations = Delegations(
            keys={online.keyid: online},
            roles={n: DelegatedRole(n, [online.keyid], 1, False, [f"{n}/*"]) for n in BINS},
        )
        repo.publish("targets", Metadata(targets), online=False)
        for name in BINS:
            # Distinct bins, as in a real repository: one record per digest.
            bin_ = Targets(expires=expires, unrecognized_fields={"x-bin": name})
            repo.publish(name, Metadata(bin_))
        meta = {f"{r}.json": MetaFile(1) for r in ("targets", *BINS)}
        repo.publish("snapshot", Metadata(Snapshot(expires=expires, meta=meta)))
        repo.publish("timestamp", Metadata(Timestamp(expires=expires, snapshot_meta=MetaFile(1))))
        return repo

    def name(self, role: str, version: int = 1) -> str:
        if role == "timestamp" or (not self.consistent and role != "root"):
            return f"{role}.json"
        return f"{version}.{role}.json"

    def publish(self, role: str, md: Metadata, *, online: bool = True) -> None:  # type: ignore[type-arg]
        md.sign(self.online if online else self.offline)
        self.files[self.name(role, md.signed.version)] = md.to_bytes(_SERIALIZER)
        if online:
            self.signed.append((role, md))

    def read(self, name: str, max_length: int) -> bytes:
        if name not in self.files:
            raise NotFoundInRepository(f"{name}: HTTP 404")
        data = self.files[name]
        if len(data) > max_length:
            raise MonitorError(f"{name}: larger than {max_length} bytes")
        return data


def _register(store: AuditStore, online: CryptoSigner) -> None:
    """Key "online" with the online signer's keyid, as the server registers a key."""
    key = online.public_key
    record = KeyRecord(
        name="online",
        algorithm=Algorithm.ED25519,
        backend="softhsm",
        rules=(
            RoleRule("timestamp", 86400),
            RoleRule("snapshot", 86400),
            RoleRule("bins-*", 86400),
        ),
        created_at=T0,
    )
    version = KeyVersion(
        key_name="online",
        version=1,
        state=KeyState.ACTIVE,
        keyid=key.keyid,
        public_key=key.to_dict(),
        handle="h",
        created_at=T0,
        activated_at=T0,
    )
    event = AuditEvent(
        time=T0,
        identity="admin",
        operation="create-key",
        outcome=Outcome.GRANTED,
        status="OK",
        key_name="online",
        keyid=key.keyid,
        key_version=1,
    )
    store.append([Entry(event, CreateKey(record, version))])


def _record(store: AuditStore, md: Metadata, role: str, **fields: object) -> None:  # type: ignore[type-arg]
    """The granted sign record of ``md`` (with ``fields`` changed), as the server writes it."""
    ((keyid, sig),) = md.signatures.items()
    values: dict[str, object] = {
        "time": "2025-12-31T23:59:00.000000Z",
        "identity": "repo-backend",
        "operation": "sign",
        "outcome": Outcome.GRANTED,
        "status": "OK",
        "key_name": "online",
        "keyid": keyid,
        "key_version": 1,
        "role": role,
        "metadata_version": md.signed.version,
        "expires": EXPIRES,
        "payload_sha256": _digest(md),
        "signature": sig.signature,
    }
    values.update(fields)
    event = AuditEvent(**values)  # type: ignore[arg-type]
    state = RoleState(
        key_name="online",
        role=role,
        version=md.signed.version,
        payload_sha256=event.payload_sha256,
        keyid=event.keyid,
        key_version=1,
        signature=event.signature,
        expires=EXPIRES,
        audit_seq=0,
    )
    granted = event.outcome is Outcome.GRANTED and event.operation == "sign"
    change = AdvanceRole(state) if granted else None
    (committed,) = store.append([Entry(event, change)])
    assert committed.error is None or fields, committed.error


@dataclass
class Scene:
    repo: Repo
    store: AuditStore
    keys: LogKeys
    log: SoftwareLogKey
    witness: SoftwareWitness

    def witness_all(self) -> int:
        size = self.store.tree_size()
        self.log.checkpoint(self.store, size)
        self.witness.cosign(self.store, self.log.origin, size)
        return size

    def run(
        self,
        *,
        sample: int | None = None,
        now: datetime = NOW,
        prove: Callable[[int], bytes | None] | None = None,
        keys: LogKeys | None = None,
        held: frozenset[str] | None = None,
        every_record: bool = False,
    ) -> MonitorReport:
        keys = keys or self.keys
        files, unread, listed = read_repository(self.repo.read, sample=sample, rng=random.Random(1))
        newest = self.store.latest_witnessed(keys.origin, keys.quorum)
        size = witnessed_size(newest.note if newest else None, keys)

        def find(digest: str) -> Sequence[tuple[int, bytes]]:
            from tuf_signer.audit import record_leaf

            found = self.store.find_records(digest, granted_signs_only=not every_record)
            return [(r.seq, record_leaf(r)) for r in found]

        def default_prove(seq: int) -> bytes | None:
            return None if seq > size else tlog_proof(self.store, keys.origin, seq, size)

        return check_signatures(
            files,
            held={self.repo.online.public_key.keyid} if held is None else held,
            find=find,
            prove=prove or default_prove,
            keys=keys,
            witnessed=size,
            now=now,
            unread=unread,
            roles_listed=listed,
        )


@pytest.fixture
def scene(store: AuditStore) -> Scene:
    repo = Repo.build()
    log, witness = SoftwareLogKey.generate(), SoftwareWitness.generate()
    keys = LogKeys(log.key, (witness.key,), 1)
    s = Scene(repo, store, keys, log, witness)
    _register(store, repo.online)
    for role, md in repo.signed:
        _record(store, md, role)
    s.witness_all()
    return s


def test_a_repository_signed_on_the_record_passes(scene: Scene) -> None:
    report = scene.run()
    assert report.ok, report.findings
    # 1.root, timestamp, snapshot, targets, 4 bins; root and targets by the offline key.
    assert (report.files, report.signatures, report.held, report.other) == (8, 8, 6, 2)
    assert report.proven == 6 and report.roles_checked == report.roles_listed == 4
    assert report.witnessed_size == scene.store.tree_size()
    assert report.summary().startswith("OK: 8 files, 8 signatures, 6 by held keys: 6 logged")


def test_a_signature_made_outside_the_service_is_reported(scene: Scene) -> None:
    # A copy of the online key re-signs bins-2 with new content: no record of it.
    md = Metadata[Targets].from_bytes(scene.repo.files["1.bins-2.json"])
    md.signed.unrecognized_fields["x-evil"] = "yes"
    md.signatures.clear()
    md.sign(scene.repo.online)
    scene.repo.files["1.bins-2.json"] = md.to_bytes(_SERIALIZER)
    report = scene.run()
    assert not report.ok and report.proven == 5
    (finding,) = report.findings
    assert finding.kind is Kind.UNLOGGED and finding.file == "1.bins-2.json"
    assert finding.keyid == scene.repo.online.public_key.keyid
    assert finding.payload_sha256 == _digest(md)
    assert "made outside tuf-signer" in finding.reason
    assert report.summary().startswith("FAILED: 1 findings")


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"outcome": Outcome.REFUSED, "status": "FAILED_PRECONDITION"}, id="refused"),
        pytest.param({"signature": "00" * 64}, id="other-signature"),
        pytest.param({"keyid": "ab" * 32}, id="other-keyid"),
        pytest.param({"operation": "note"}, id="not-a-sign"),
    ],
)
def test_only_a_granted_sign_of_that_very_signature_counts(
    store: AuditStore, fields: dict[str, object]
) -> None:
    repo = Repo.build()
    log, witness = SoftwareLogKey.generate(), SoftwareWitness.generate()
    s = Scene(repo, store, LogKeys(log.key, (witness.key,), 1), log, witness)
    *others, (role, last) = repo.signed  # the timestamp is recorded differently
    _register(store, repo.online)
    for other_role, md in others:
        _record(store, md, other_role)
    _record(store, last, role, **fields)
    s.witness_all()
    # The monitor checks each record it is given, whatever the finder filtered.
    report = s.run(every_record=True)
    (finding,) = report.findings
    assert finding.kind is Kind.UNLOGGED and finding.file == "timestamp.json"
    assert "(1 other records of this digest)" in finding.reason


def test_refusals_of_a_digest_cannot_push_its_granted_record_out(store: AuditStore) -> None:
    """Review finding 10: 100 refusals (a gate retried) come before the grant of a digest."""
    repo = Repo.build()
    log, witness = SoftwareLogKey.generate(), SoftwareWitness.generate()
    s = Scene(repo, store, LogKeys(log.key, (witness.key,), 1), log, witness)
    *others, (role, last) = repo.signed
    _register(store, repo.online)
    for other_role, md in others:
        _record(store, md, other_role)
    for _ in range(100):
        _record(store, last, role, outcome=Outcome.REFUSED, status="UNAVAILABLE")
    _record(store, last, role)
    s.witness_all()
    digest = _digest(last)
    assert {r.event.outcome for r in store.find_records(digest)} == {Outcome.REFUSED}  # default
    (granted,) = store.find_records(digest, granted_signs_only=True)
    assert granted.seq == store.tree_size() and granted.event.outcome is Outcome.GRANTED
    report = s.run()
    assert report.ok and report.proven == 6, report.findings


def test_a_record_not_yet_witnessed_is_pending_then_a_finding(scene: Scene) -> None:
    bump = Metadata[Timestamp].from_bytes(scene.repo.files["timestamp.json"])
    bump.signed.version += 1
    bump.signatures.clear()
    scene.repo.publish("timestamp", bump)
    _record(scene.store, bump, "timestamp")  # after the witnessed checkpoint
    report = scene.run()
    assert report.ok and report.proven == 5
    (pending,) = report.pending
    assert pending.kind is Kind.PENDING and pending.seq == scene.store.tree_size()
    late = scene.run(now=NOW + timedelta(hours=2))
    (finding,) = late.findings
    assert finding.kind is Kind.UNWITNESSED and "still not in a witnessed" in finding.reason
    # Once witnessed, it is proven.
    scene.witness_all()
    assert scene.run(now=NOW + timedelta(hours=2)).proven == 6


def test_a_record_dated_in_the_future_is_a_finding_not_pending(scene: Scene) -> None:
    """Review finding 11: a future time would keep a record pending for ever."""
    bump = Metadata[Timestamp].from_bytes(scene.repo.files["timestamp.json"])
    bump.signed.version += 1
    bump.signatures.clear()
    scene.repo.publish("timestamp", bump)
    _record(scene.store, bump, "timestamp", time="2026-01-01T00:04:00.000000Z")
    assert scene.run().pending  # within the clock skew: pending
    bump.signed.version += 1
    bump.signatures.clear()
    scene.repo.publish("timestamp", bump)
    _record(scene.store, bump, "timestamp", time="2027-01-01T00:00:00.000000Z")
    report = scene.run()
    (finding,) = report.findings
    assert finding.kind is Kind.FUTURE and finding.seq == scene.store.tree_size()
    assert "dated 2027-01-01T00:00:00.000000Z, after now (2026-01-01T00:00:00+00:00)" in (
        finding.reason
    )
    assert not report.pending


def test_keys_the_repository_gives_online_roles_are_held_whatever_the_registry_says(
    scene: Scene,
) -> None:
    """Review finding 11: the monitored host's registry cannot hide an online key."""
    keyid = scene.repo.online.public_key.keyid
    report = scene.run(held=frozenset())
    assert (report.held, report.proven) == (6, 6)  # still checked against the log
    (finding,) = report.findings
    assert finding.kind is Kind.UNREGISTERED and finding.keyid == keyid
    assert finding.file == "1.root.json"
    assert "registry does not hold" in finding.reason
    # A signature made outside the service with that key is found.
    md = Metadata[Targets].from_bytes(scene.repo.files["1.bins-2.json"])
    md.signed.unrecognized_fields["x-evil"] = "yes"
    md.signatures.clear()
    md.sign(scene.repo.online)
    scene.repo.files["1.bins-2.json"] = md.to_bytes(_SERIALIZER)
    kinds = [f.kind for f in scene.run(held=frozenset()).findings]
    assert kinds == [Kind.UNREGISTERED, Kind.UNLOGGED]


def test_the_succinct_bins_delegation_s_keys_are_held(store: AuditStore) -> None:
    """TAP 15 bins: targets' succinct_roles keyids count as online keys too."""
    repo = Repo.build()
    bins_key = CryptoSigner.generate_ed25519().public_key
    md = Metadata[Targets].from_bytes(repo.files["1.targets.json"])
    assert md.signed.delegations is not None
    md.signed.delegations.keys[bins_key.keyid] = bins_key
    md.signed.delegations.roles = None
    md.signed.delegations.succinct_roles = SuccinctRoles([bins_key.keyid], 1, 2, "bins")
    md.signatures.clear()
    repo.publish("targets", md, online=False)
    log, witness = SoftwareLogKey.generate(), SoftwareWitness.generate()
    s = Scene(repo, store, LogKeys(log.key, (witness.key,), 1), log, witness)
    _register(store, repo.online)
    s.witness_all()
    found = {(f.kind, f.file, f.keyid) for f in s.run().findings}
    assert (Kind.UNREGISTERED, "1.targets.json", bins_key.keyid) in found


def _flip(proof: bytes) -> bytes:
    head, sep, note = proof.partition(b"\n\n")
    lines = head.split(b"\n")
    if len(lines) > 2:  # flip one bit of the first hash of the path
        h = bytearray(__import__("base64").b64decode(lines[2]))
        h[0] ^= 1
        lines[2] = __import__("base64").b64encode(bytes(h))
    return b"\n".join(lines) + sep + note


def test_a_proof_that_fails_is_reported(scene: Scene) -> None:
    size = scene.store.tree_size()

    def prove(seq: int) -> bytes | None:
        return _flip(tlog_proof(scene.store, scene.log.origin, seq, size))

    report = scene.run(prove=prove)
    assert {f.kind for f in report.findings} == {Kind.PROOF_FAILED}
    assert len(report.findings) == 6 and report.proven == 0
    # A proof of another record (1: the key's creation) is refused too, though it verifies.
    wrong = scene.run(prove=lambda seq: tlog_proof(scene.store, scene.log.origin, 1, size))
    assert len(wrong.findings) == 6 and wrong.proven == 0
    assert all("the proof is of leaf 0" in f.reason for f in wrong.findings)


def test_quorum_is_needed_for_a_checkpoint_to_count_as_witnessed(scene: Scene) -> None:
    second = SoftwareWitness.generate("witness.test/w2")
    keys = LogKeys(scene.log.key, (scene.witness.key, second.key), 2)
    report = scene.run(keys=keys)
    # The store holds no checkpoint with two cosignatures: nothing is witnessed yet.
    assert report.witnessed_size == 0 and len(report.pending) == 6 and report.ok
    assert witnessed_size(scene.store.latest_checkpoint(scene.log.origin).note, keys) == 0  # type: ignore[union-attr]


def test_a_wrong_log_key_stops_the_check(scene: Scene) -> None:
    keys = replace(scene.keys, log_key=SoftwareLogKey.generate().key)
    with pytest.raises(MonitorError, match="the log's checkpoint does not verify"):
        scene.run(keys=keys)


def test_a_sample_reads_that_many_bins_and_plain_names_without_consistent_snapshots(
    store: AuditStore,
) -> None:
    repo = Repo.build(consistent=False)
    log, witness = SoftwareLogKey.generate(), SoftwareWitness.generate()
    s = Scene(repo, store, LogKeys(log.key, (witness.key,), 1), log, witness)
    _register(store, repo.online)
    for role, md in repo.signed:
        _record(store, md, role)
    s.witness_all()
    assert {"snapshot.json", "bins-0.json", "1.root.json"} <= set(repo.files)
    report = s.run(sample=2)
    assert report.ok and (report.roles_checked, report.roles_listed) == (2, 4)
    assert report.files == 6 and report.proven == 4
    assert "(2 of 4 delegated roles)" in report.summary()


def test_roots_are_read_until_the_next_version_is_missing(scene: Scene) -> None:
    root = Metadata[Root].from_bytes(scene.repo.files["1.root.json"])
    root.signed.version = 2
    root.signatures.clear()
    scene.repo.publish("root", root, online=False)
    files, _, _ = read_repository(scene.repo.read)
    assert [f.name for f in files][:3] == ["1.root.json", "2.root.json", "timestamp.json"]


def test_a_delegated_role_that_cannot_be_read_is_a_finding(scene: Scene) -> None:
    scene.repo.files["1.bins-1.json"] = b"{not json"
    del scene.repo.files["1.bins-3.json"]
    report = scene.run()
    assert [(f.kind, f.file) for f in report.findings] == [
        (Kind.UNREADABLE, "1.bins-1.json"),
        (Kind.UNREADABLE, "1.bins-3.json"),
    ]
    assert report.roles_checked == 4 and report.proven == 4


@pytest.mark.parametrize(
    ("name", "data", "match"),
    [
        ("timestamp.json", b"\xff\xfe", "not TUF metadata"),
        ("timestamp.json", b"[]", "not a JSON object"),
        ("timestamp.json", b'{"signed": {"a": 1, "a": 2}, "signatures": []}', "a key twice"),
        ("timestamp.json", b'{"signed": {"a": 1.5}, "signatures": []}', "a float"),
        ("timestamp.json", b'{"signed": [], "signatures": []}', '"signed" is not an object'),
        ("timestamp.json", b'{"signed": {}, "signatures": {}}', '"signatures" is not a list'),
        ("timestamp.json", b'{"signed": {}, "signatures": [{"keyid": 1}]}', "not {"),
        ("timestamp.json", b"[" * 8000 + b"]" * 8000, "not TUF metadata"),
        ("timestamp.json", b'{"signed": {"meta": []}, "signatures": []}', '"meta" is not'),
        ("timestamp.json", b'{"signed": {"meta": {}}, "signatures": []}', "does not name"),
        (
            "timestamp.json",
            b'{"signed": {"meta": {"snapshot.json": {"version": 0}}}, "signatures": []}',
            "no positive version",
        ),
        ("1.snapshot.json", b'{"signed": {"meta": {}}, "signatures": []}', "targets.json"),
        ("1.root.json", b"{}", '"signed" is not an object'),
        ("1.targets.json", b"null", "not a JSON object"),
    ],
)
def test_bad_metadata_stops_the_check_naming_the_file(
    scene: Scene, name: str, data: bytes, match: str
) -> None:
    scene.repo.files[name] = data
    with pytest.raises(MonitorError, match=match) as raised:
        read_repository(scene.repo.read)
    assert raised.value.reason.startswith(name)


def test_the_digest_is_of_the_canonical_signed_object() -> None:
    md = Metadata(Timestamp(expires=NOW))
    md.sign(CryptoSigner.generate_ed25519())
    # Pretty-printed, keys in another order: the digest is still of signed_bytes.
    obj = json.loads(md.to_bytes())
    pretty = json.dumps({"signatures": obj["signatures"], "signed": obj["signed"]}, indent=3)
    (sig,) = read_metadata("timestamp.json", "timestamp", pretty.encode()).signatures
    assert sig.payload_sha256 == _digest(md) and sig.file == "timestamp.json"


def test_a_repository_without_a_first_root_stops_the_check(scene: Scene) -> None:
    del scene.repo.files["1.root.json"]
    with pytest.raises(NotFoundInRepository, match=r"1\.root\.json"):
        read_repository(scene.repo.read)
