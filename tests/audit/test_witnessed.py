"""Holding a store against signed checkpoints (issue 13, part 5; audit/_witnessed.py).

The attacker here owns the signer host: the database, and the HSM that holds
the audit key. Each forgery in the tamper table rebuilds everything the host
controls (the hash chain, the Merkle tree, the role marks, and a fresh
checkpoint signed with the log's own key), so that ``verify_store`` and the
store's own checkpoint pass. Only a checkpoint that left the host before (an
auditor's file, a witness-cosigned one) can catch it, and it must, naming
what is wrong. Every row runs in a full and an incremental (``since``) run,
on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import secrets
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.audit._logkeys import ORIGIN, SoftwareLogKey, SoftwareWitness
from tests.audit.conftest import EXPIRES, AuditFactory, sha
from tuf_signer.audit import GENESIS_HASH, AuditRecord, AuditStore, SqliteAuditStore, verify_store
from tuf_signer.audit._chain import (
    EVENT_FIELDS,
    chain,
    sets_role_state,
    state_of,
)
from tuf_signer.audit._checkpoint import Checkpoint, sign_checkpoint
from tuf_signer.audit._note import COSIGNATURE_V1, ED25519, VerifierKey, cosign_text
from tuf_signer.audit._rows import INSERT_RECORD, INSERT_ROLE, record_params, role_params
from tuf_signer.audit._tree import INSERT_TREE, Frontier, record_leaf, tree_rows
from tuf_signer.audit._witnessed import (
    Anchor,
    LogKeys,
    StoreBehindError,
    StoreForkError,
    UntrustedCheckpointError,
    UnwitnessedError,
    verify_log,
)
from tuf_signer.errors import AuditChainError, RequestError
from tuf_signer.model import AuditEvent, KeyState, Outcome

# --- where a store lives, and what its attacker can reach ---------------------------------


class Raw:
    """The database under a store, reached directly, as an attacker on the host reaches it."""

    def __init__(self, conn: Any, placeholder: str) -> None:
        self._conn = conn
        self._mark = placeholder

    def _sql(self, sql: str) -> str:
        return sql.replace("?", self._mark)

    def run(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._conn.execute(self._sql(sql), tuple(params))

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        cur = self._conn.cursor()
        cur.executemany(self._sql(sql), [tuple(r) for r in rows])

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, kind: object, *rest: object) -> None:
        if kind is None:
            self._conn.commit()
        else:
            self._conn.rollback()
        self._conn.close()


@dataclass
class Place:
    """One store's location: open it as the server does, or reach its tables raw."""

    open: Callable[[], AuditStore]
    raw: Callable[[], Raw]


def _sqlite_places(request: pytest.FixtureRequest) -> Iterator[Callable[[], Place]]:
    base: Path = request.getfixturevalue("tmp_path")
    count = iter(range(1000))

    def new() -> Place:
        path = base / f"audit-{next(count)}.db"
        return Place(lambda: SqliteAuditStore(path), lambda: Raw(sqlite3.connect(path), "?"))

    yield new


def _postgres_places(request: pytest.FixtureRequest) -> Iterator[Callable[[], Place]]:
    postgres = request.getfixturevalue("postgres")  # skips without a server
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from tuf_signer.audit import PostgresAuditStore

    schemas: list[str] = []
    options = conninfo_to_dict(postgres.dsn).get("options") or ""

    def new() -> Place:
        name = f"tuf_test_{secrets.token_hex(6)}"
        with postgres.connect() as conn:
            conn.execute(f"CREATE SCHEMA {name}")
        schemas.append(name)
        dsn = make_conninfo(
            postgres.dsn, options=f"{options} -csearch_path={name}".strip(), application_name=name
        )
        return Place(lambda: PostgresAuditStore(dsn), lambda: Raw(psycopg.connect(dsn), "%s"))

    yield new
    for name in schemas:
        postgres.terminate(name)
        with postgres.connect() as conn:
            conn.execute(f"DROP SCHEMA {name} CASCADE")


@pytest.fixture(
    params=[pytest.param(_sqlite_places, id="sqlite"), pytest.param(_postgres_places, id="pg")]
)
def new_place(request: pytest.FixtureRequest) -> Iterator[Callable[[], Place]]:
    """Makes a new, empty store location of this test's kind on each call."""
    yield from request.param(request)


# --- the log: records, checkpoints that left the host, and the keys auditors trust ---------

LOG = SoftwareLogKey.generate()
WITNESS = SoftwareWitness.generate("witness.test/w1")
KEYS = LogKeys(LOG.key, (WITNESS.key,), quorum=1)
SINCE = 4  # the trusted checkpoint of an incremental run
OLD_COPY = 6  # the records in the restored backup, and the prefix of the fork


def _plan(make: AuditFactory, tail: str = "grant") -> list[Any]:
    """Nine entries; the last is a grant, a key change or a refusal."""
    last = {
        "grant": make.sign(3, "s3", key_version=2),
        "key change": make.add_version("online", 3),
        "refusal": make.note(outcome=Outcome.REFUSED, status="PERMISSION_DENIED"),
    }[tail]
    return [
        make.create_key(),  # 1
        make.add_version("online", 2),  # 2
        make.sign(1, "s1"),  # 3
        make.sign(1, "t1", role="timestamp"),  # 4
        make.note(outcome=Outcome.REFUSED, status="PERMISSION_DENIED", reason="no rule"),  # 5
        make.sign(2, "s2"),  # 6
        make.sign(1, "b1", role="bins-0000"),  # 7
        make.set_state("online", 2, KeyState.ACTIVE),  # 8
        last,  # 9
    ]


def _witnessed(store: AuditStore, size: int) -> bytes:
    """Sign and cosign the store's tree at ``size``: the note as it leaves the host."""
    LOG.checkpoint(store, size)
    WITNESS.cosign(store, ORIGIN, size)
    stored = store.checkpoint_at(ORIGIN, size)
    assert stored is not None
    return stored.note


@dataclass
class Scene:
    """The honest log, and the checkpoints that an auditor and a witness kept of it."""

    place: Place
    store: AuditStore
    make: AuditFactory
    since: Anchor  # of size SINCE
    later: Anchor  # of the whole log (9 records)
    new_place: Callable[[], Place]


def _build(new_place: Callable[[], Place], make: AuditFactory, tail: str = "grant") -> Scene:
    place = new_place()
    store = place.open()
    plan = _plan(make, tail)
    store.append(plan[:SINCE])
    since = _witnessed(store, SINCE)
    store.append(plan[SINCE:])
    later = _witnessed(store, len(plan))
    assert store.tree_size() == len(plan)
    return Scene(
        place,
        store,
        make,
        Anchor("checkpoint since.txt", since),
        Anchor("checkpoint later.txt", later),
        new_place,
    )


@pytest.fixture
def scene(new_place: Callable[[], Place], make: AuditFactory) -> Iterator[Scene]:
    s = _build(new_place, make)
    yield s
    s.store.close()


# --- the forger: everything the host controls, rebuilt to agree with itself ------------------


def reseal(place: Place, store: AuditStore, events: Sequence[AuditEvent]) -> AuditStore:
    """Make ``events`` the whole log of ``place``: chain, tree and role marks rebuilt.

    Then sign a checkpoint of the forged tree with the log's key, as an
    attacker who holds the host (and so the HSM's audit key) can.
    """
    records: list[AuditRecord] = []
    prev = GENESIS_HASH
    for seq, event in enumerate(events, start=1):
        records.append(chain(prev, seq, event))
        prev = records[-1].hash
    tree = Frontier()
    nodes = [row for r in records for row in tree_rows(tree.append(record_leaf(r)))]
    marks = {
        (r.event.key_name, r.event.role): state_of(r.event, r.seq)
        for r in records
        if sets_role_state(r.event)
    }
    with place.raw() as db:
        for table in ("audit_cosignatures", "audit_checkpoints", "role_state"):
            db.run(f"DELETE FROM {table}")
        db.run("DELETE FROM audit_tree")
        db.run("DELETE FROM audit_log")
        db.many(INSERT_RECORD, [record_params(r) for r in records])
        db.many(INSERT_TREE, nodes)
        db.many(INSERT_ROLE, [role_params(s) for s in marks.values()])
    body = Checkpoint(ORIGIN, len(records), store.tree_hash(len(records)))
    store.add_checkpoint(
        ORIGIN, len(records), sign_checkpoint(body, LOG.key, LOG.private.sign).format(), "t"
    )
    return store


def _events(store: AuditStore) -> list[AuditEvent]:
    return [r.event for r in store.records()]


def _replay(scene: Scene, entries: Sequence[Any]) -> AuditStore:
    """A store elsewhere that went through ``entries``: the same records (appends are pure)."""
    place = scene.new_place()
    store = place.open()
    store.append(list(entries))
    body = Checkpoint(ORIGIN, store.tree_size(), store.tree_hash())
    note = sign_checkpoint(body, LOG.key, LOG.private.sign).format()
    store.add_checkpoint(ORIGIN, store.tree_size(), note, "t")
    return store


def restore_old_copy(scene: Scene) -> AuditStore:
    return _replay(scene, _plan(scene.make)[:OLD_COPY])


def fork(scene: Scene) -> AuditStore:
    """Another store from the same first records, then other ones (and more of them)."""
    make = scene.make
    other = [make.sign(3, "s3-fork"), make.note(), make.note(), make.note(), make.note()]
    return _replay(scene, [*_plan(make)[:OLD_COPY], *other])


def truncate(tail: str) -> Callable[[Scene], AuditStore]:
    def cut(scene: Scene) -> AuditStore:
        # The scene's log ends in a grant; this one ends in ``tail``.
        s = _build(scene.new_place, scene.make, tail)
        last = list(s.store.records())[-1].event
        assert (last.operation, last.outcome.value) == {
            "grant": ("sign", "granted"),
            "key change": ("rotate-key", "granted"),
            "refusal": ("note", "refused"),
        }[tail]
        scene.later = s.later
        scene.since = s.since
        return reseal(s.place, s.store, _events(s.store)[:-1])

    return cut


# A valid new value for each column of the refusal (record 5), and of the grant (record 7).
NEW_VALUE: dict[str, Any] = {
    "time": "2025-01-01T00:00:09.000000Z",
    "identity": "someone-else",
    "operation": "create-key",
    "outcome": Outcome.GRANTED,
    "status": "OK",
    "reason": "",
    "key_name": "other",
    "keyid": sha("another keyid"),
    "key_version": 7,
    "role": "timestamp",
    "metadata_version": 99,
    "expires": EXPIRES,
    "payload_sha256": sha("another payload"),
    "signature": sha("another signature"),
    "detail": {"note": "added later"},
}
assert set(NEW_VALUE) == set(EVENT_FIELDS)


def edit(seq: int, column: str, value: Any = None) -> Callable[[Scene], AuditStore]:
    def apply(scene: Scene) -> AuditStore:
        events = _events(scene.store)
        new = NEW_VALUE[column] if value is None else value
        assert getattr(events[seq - 1], column) != new
        events[seq - 1] = dataclasses.replace(events[seq - 1], **{column: new})
        return reseal(scene.place, scene.store, events)

    return apply


def reorder(first: int, second: int) -> Callable[[Scene], AuditStore]:
    def apply(scene: Scene) -> AuditStore:
        events = _events(scene.store)
        events[first - 1], events[second - 1] = events[second - 1], events[first - 1]
        return reseal(scene.place, scene.store, events)

    return apply


@dataclass(frozen=True)
class Tamper:
    """One row: what the attacker does, and what each run must say about it."""

    apply: Callable[[Scene], AuditStore]
    error: type[AuditChainError]
    match: str
    since_error: type[AuditChainError] | None = None  # when the incremental run says otherwise
    since_match: str = ""


BEHIND = "the store holds {} records but checkpoint later.txt covers 9: it is an older copy, or records were removed"  # noqa: E501
FORKED = r"the store's tree at size {} does not match checkpoint {}: the store forked or records were edited"  # noqa: E501

TAMPER = {
    "restore-an-old-copy": Tamper(restore_old_copy, StoreBehindError, BEHIND.format(OLD_COPY)),
    "truncate-a-refusal": Tamper(truncate("refusal"), StoreBehindError, BEHIND.format(8)),
    "truncate-a-key-change": Tamper(truncate("key change"), StoreBehindError, BEHIND.format(8)),
    "truncate-a-grant": Tamper(truncate("grant"), StoreBehindError, BEHIND.format(8)),
    "fork-from-one-prefix": Tamper(fork, StoreForkError, FORKED.format(9, "later.txt")),
    "reorder-two-records": Tamper(reorder(5, 6), StoreForkError, FORKED.format(9, "later.txt")),
    "reorder-before-since": Tamper(
        reorder(2, 3),
        StoreForkError,
        FORKED.format(9, "later.txt"),
        StoreForkError,
        FORKED.format(SINCE, "since.txt"),
    ),
    **{
        f"edit-{column}": Tamper(edit(5, column), StoreForkError, FORKED.format(9, "later.txt"))
        for column in EVENT_FIELDS
    },
    "edit-a-grant's-signature": Tamper(
        edit(7, "signature"), StoreForkError, FORKED.format(9, "later.txt")
    ),
    "edit-a-grant's-version": Tamper(
        edit(7, "metadata_version", 5), StoreForkError, FORKED.format(9, "later.txt")
    ),
    "edit-before-since": Tamper(
        edit(3, "identity"),
        StoreForkError,
        FORKED.format(9, "later.txt"),
        StoreForkError,
        FORKED.format(SINCE, "since.txt"),
    ),
}


@pytest.mark.parametrize("mode", ["full", "since"])
@pytest.mark.parametrize("tamper", list(TAMPER.values()), ids=list(TAMPER))
def test_a_forgery_is_caught_by_a_checkpoint_that_left_the_host(
    scene: Scene, tamper: Tamper, mode: str
) -> None:
    forged = tamper.apply(scene)
    try:
        # Everything the host holds agrees with itself: the forgery is complete.
        verify_store(forged)
        verify_log(forged, LogKeys(LOG.key))
        since = scene.since if mode == "since" else None
        error, match = tamper.error, tamper.match
        if mode == "since" and tamper.since_error is not None:
            error, match = tamper.since_error, tamper.since_match
        with pytest.raises(error, match=match) as caught:
            verify_log(forged, KEYS, anchors=[scene.later], since=since)
        assert caught.value.source in match
    finally:
        if forged is not scene.store:
            forged.close()


def test_each_forgery_passes_without_a_checkpoint_from_outside(scene: Scene) -> None:
    """The other half of the table: the host's own checkpoint cannot tell (the key is there)."""
    forged = edit(5, "identity")(scene)
    report = verify_log(forged, KEYS)
    assert [c.source for c in report.checkpoints] == ["the store's newest checkpoint"]
    assert report.notes == ("no checkpoint in the store is cosigned by 1 of the given witnesses",)
    # An auditor who asked for the quorum (review finding 9) gets a failure, not a note.
    with pytest.raises(UnwitnessedError, match="a quorum of 1 was asked for") as caught:
        verify_log(forged, KEYS, require_witnessed=True)
    assert caught.value.kind == "unwitnessed"
    assert (
        "no checkpoint in the store is cosigned by 1 of the given witnesses" in caught.value.reason
    )


def test_a_required_quorum_fails_a_store_with_no_checkpoint(new_place: Callable[[], Place]) -> None:
    place = new_place()
    store = place.open()
    try:
        store.append([AuditFactory().note() for _ in range(3)])
        assert verify_log(store, KEYS).notes == (f"the store holds no checkpoint of {ORIGIN!r}",)
        with pytest.raises(UnwitnessedError, match=f"holds no checkpoint of {ORIGIN!r}; a quorum"):
            verify_log(store, KEYS, require_witnessed=True)
        # A quorum of 0 asks for nothing.
        verify_log(store, LogKeys(LOG.key, (WITNESS.key,), 0), require_witnessed=True)
    finally:
        store.close()


# --- an honest log passes, and says what it checked ----------------------------------------


@pytest.mark.parametrize("mode", ["full", "since"])
def test_an_honest_store_passes_against_every_checkpoint(scene: Scene, mode: str) -> None:
    since = scene.since if mode == "since" else None
    report = verify_log(scene.store, KEYS, anchors=[scene.later, scene.since], since=since)
    assert report.tree_size == 9
    assert report.root_hash == scene.store.tree_hash(9)
    sources = [(c.source, c.size, c.cosigners) for c in report.checkpoints]
    assert sources == [
        ("the store's newest witnessed checkpoint", 9, (WITNESS.key.name,)),
        ("checkpoint later.txt", 9, (WITNESS.key.name,)),
        ("checkpoint since.txt", SINCE, (WITNESS.key.name,)),
    ]
    if mode == "full":
        assert report.new_records == 9 and report.store is not None
        assert report.store.role_states == 3
    else:
        assert report.new_records == 9 - SINCE and report.store is None
        assert report.since is not None and report.since.size == SINCE
        assert "role states were not checked" in report.notes[-1]


def test_a_store_that_grew_since_the_checkpoint_passes(scene: Scene) -> None:
    scene.store.append([scene.make.note() for _ in range(5)])
    for since in (None, scene.since):
        report = verify_log(scene.store, KEYS, anchors=[scene.later], since=since)
        assert report.tree_size == 14


def test_without_keys_nothing_but_the_store_is_checked(scene: Scene) -> None:
    report = verify_log(scene.store)
    assert (report.tree_size, report.checkpoints) == (9, ())
    assert report.notes == ("checkpoints were NOT checked: no verifier key of the log was given",)
    with pytest.raises(RequestError, match="needs the log's verifier key"):
        verify_log(scene.store, anchors=[scene.later])


def test_the_store_s_own_checkpoint_must_match_it(scene: Scene) -> None:
    """A tail cut without re-signing: the store's newest checkpoint names the cut."""
    mark = _snapshot_mark(scene)
    with scene.place.raw() as db:
        # The grant's role mark goes back to the one before it, as a rollback wants,
        db.run("UPDATE role_state SET version = 2, payload_sha256 = ?, keyid = ?, key_version = 1,"
               " signature = ?, audit_seq = 6 WHERE role = 'snapshot'", mark)  # fmt: skip
        # and the last record goes, with the one tree hash its append stored (leaf 8).
        db.run("DELETE FROM audit_tree WHERE level = 0 AND idx = 8")
        db.run("DELETE FROM audit_log WHERE seq = 9")
    verify_store(scene.store)  # the store alone cannot tell
    with pytest.raises(StoreBehindError, match="the store holds 8 records but the store's newest"):
        verify_log(scene.store, LogKeys(LOG.key))


def _snapshot_mark(scene: Scene) -> tuple[str, str, str]:
    r = next(scene.store.records(6)).event
    return r.payload_sha256, r.keyid, r.signature


# --- checkpoints that do not verify ----------------------------------------------------------


def _other_key(name: str, sig_type: int = ED25519) -> tuple[VerifierKey, Callable[[bytes], bytes]]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.generate()
    return VerifierKey(name, sig_type, private.public_key().public_bytes_raw()), private.sign


def _body(note: bytes) -> str:
    return note.decode().split("\n\n", 1)[0] + "\n"


def _flip_signature(note: bytes, line: int) -> bytes:
    """Change one byte of the signature on signature line ``line`` (0: the log's)."""
    text, sigs = note.decode().split("\n\n", 1)
    lines = sigs.splitlines()
    name, encoded = lines[line].rsplit(" ", 1)
    import base64

    raw = bytearray(base64.b64decode(encoded))
    raw[-1] ^= 1
    lines[line] = f"{name} {base64.b64encode(bytes(raw)).decode()}"
    return (text + "\n\n" + "\n".join(lines) + "\n").encode()


def _impostor(scene: Scene) -> bytes:
    key, sign = _other_key(ORIGIN)  # the right name, another key
    size = scene.store.tree_size()
    return sign_checkpoint(Checkpoint(ORIGIN, size, scene.store.tree_hash()), key, sign).format()


def _other_origin(scene: Scene) -> bytes:
    key, sign = _other_key("other.test/audit")
    size = scene.store.tree_size()
    body = Checkpoint("other.test/audit", size, scene.store.tree_hash())
    return sign_checkpoint(body, key, sign).format()


def _cosigned_by_a_stranger(scene: Scene) -> bytes:
    key, sign = _other_key("witness.test/stranger", COSIGNATURE_V1)
    note = LOG.checkpoint(scene.store)
    return note + cosign_text(_body(note), key, 1, sign).line().encode()


UNTRUSTED = {
    "bad-log-signature": (
        lambda s: _flip_signature(s.later.note, 0),
        rf"checkpoint x.txt: signature by '{ORIGIN}'\+[0-9a-f]{{8}} does not verify",
    ),
    "signed-by-another-key-of-the-same-name": (
        _impostor,
        rf"checkpoint x.txt: checkpoint is not signed by {ORIGIN}\+",
    ),
    "from-another-origin": (
        _other_origin,
        rf"checkpoint x.txt: checkpoint origin 'other.test/audit' is not '{ORIGIN}'",
    ),
    "missing-quorum": (
        lambda s: LOG.checkpoint(s.store),
        "checkpoint x.txt: checkpoint has 0 valid cosignatures of the 1 required",
    ),
    "cosigned-by-a-stranger-only": (
        _cosigned_by_a_stranger,
        "checkpoint x.txt: checkpoint has 0 valid cosignatures of the 1 required",
    ),
    "bad-cosignature": (
        lambda s: _flip_signature(s.later.note, 1),
        r"checkpoint x.txt: signature by 'witness.test/w1'\+[0-9a-f]{8} does not verify",
    ),
    "not-a-note": (lambda s: b"hello\n", "checkpoint x.txt: note has no blank line"),
}


@pytest.mark.parametrize("role", ["anchor", "since"])
@pytest.mark.parametrize(("note", "match"), list(UNTRUSTED.values()), ids=list(UNTRUSTED))
def test_a_checkpoint_that_does_not_verify_is_refused(
    scene: Scene, note: Callable[[Scene], bytes], match: str, role: str
) -> None:
    bad = Anchor("checkpoint x.txt", note(scene))
    args: dict[str, Any] = {"anchors": [bad]} if role == "anchor" else {"since": bad}
    with pytest.raises(UntrustedCheckpointError, match=match) as caught:
        verify_log(scene.store, KEYS, **args)
    assert caught.value.source == "checkpoint x.txt"


def test_a_witness_s_checkpoint_needs_that_witness_s_cosignature(scene: Scene) -> None:
    other, _ = _other_key("witness.test/w2", COSIGNATURE_V1)
    # w2's latest checkpoint, as its monitoring endpoint would serve it; but cosigned by w1.
    anchor = Anchor("witness w2", scene.later.note, witness=other)
    with pytest.raises(UntrustedCheckpointError, match="witness w2: no valid cosignature by"):
        verify_log(scene.store, LogKeys(LOG.key), anchors=[anchor])
    good = Anchor("witness w1", scene.later.note, witness=WITNESS.key)
    report = verify_log(scene.store, LogKeys(LOG.key), anchors=[good])
    assert report.checkpoints[-1].cosigners == (WITNESS.key.name,)


def test_the_store_s_newest_checkpoint_must_verify(scene: Scene) -> None:
    with scene.place.raw() as db:
        db.run("DELETE FROM audit_cosignatures WHERE size = 9")
        db.run(
            "UPDATE audit_checkpoints SET note = ? WHERE size = 9",
            (_flip_signature(scene.later.note.split(b"\xe2\x80\x94 witness")[0], 0).decode(),),
        )
    with pytest.raises(UntrustedCheckpointError, match=r"the store's newest checkpoint \(size 9\)"):
        verify_log(scene.store, LogKeys(LOG.key))


def test_the_store_s_witnessed_checkpoint_must_carry_valid_cosignatures(scene: Scene) -> None:
    bad = _flip_signature(scene.later.note, 1).decode().splitlines()[-1]
    with scene.place.raw() as db:
        db.run("UPDATE audit_cosignatures SET line = ? WHERE size = 9", (bad,))
    match = r"the store's newest checkpoint \(size 9\): signature by 'witness.test/w1'"
    with pytest.raises(UntrustedCheckpointError, match=match):
        verify_log(scene.store, KEYS)
    # Newer checkpoints not witnessed yet: the witnessed one is checked on its own.
    scene.store.append([scene.make.note()])
    LOG.checkpoint(scene.store)
    match = r"the store's newest witnessed checkpoint \(size 9\): signature by 'witness"
    with pytest.raises(UntrustedCheckpointError, match=match):
        verify_log(scene.store, KEYS)


def test_cosignatures_by_witnesses_not_trusted_are_ignored(scene: Scene) -> None:
    """A stored checkpoint cosigned by others only: a note, not a failure (signed-note)."""
    other, _ = _other_key("witness.test/w2", COSIGNATURE_V1)
    report = verify_log(scene.store, LogKeys(LOG.key, (other,), 1))
    assert [(c.source, c.cosigners) for c in report.checkpoints] == [
        ("the store's newest checkpoint", ())
    ]
    assert report.notes == (
        "no checkpoint in the store is cosigned by 1 of the given witnesses (the newest with "
        "1 cosignatures, of size 9, has 0 by them)",
    )


@pytest.mark.parametrize(
    ("witnesses", "quorum", "match"),
    [
        ((WITNESS.key,), 2, "quorum 2 is not between 0 and the 1 witness keys"),
        ((WITNESS.key, WITNESS.key), 1, "a witness key is given twice"),
        ((LOG.key,), 1, "is not a cosignature/v1"),
        ((), -1, "quorum -1"),
    ],
    ids=["quorum-above-keys", "duplicate-witness", "log-key-as-witness", "negative-quorum"],
)
def test_log_keys_refuse_what_cannot_be_met(
    witnesses: tuple[VerifierKey, ...], quorum: int, match: str
) -> None:
    with pytest.raises(RequestError, match=match):
        LogKeys(LOG.key, witnesses, quorum)
    with pytest.raises(RequestError, match="not an Ed25519"):
        LogKeys(WITNESS.key)


# --- the incremental run ---------------------------------------------------------------------


class CountingStore:
    """A store that counts the records read through it (delegates everything else)."""

    def __init__(self, store: AuditStore, on_first_read: Callable[[], None] = lambda: None):
        self._store = store
        self._on_first_read = on_first_read
        self.starts: list[int] = []
        self.read = 0

    def records(self, start_seq: int = 1) -> Iterator[AuditRecord]:
        if not self.starts:
            self._on_first_read()
        self.starts.append(start_seq)
        for record in self._store.records(start_seq):
            self.read += 1
            yield record

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_an_incremental_run_reads_only_the_new_records(scene: Scene) -> None:
    scene.store.append([scene.make.note() for _ in range(40)])
    counting = CountingStore(scene.store)
    report = verify_log(counting, KEYS, since=scene.since)
    assert report.new_records == 49 - SINCE
    # Record SINCE itself (its hash links the chain; proven in the trusted tree), then the rest.
    assert counting.starts == [SINCE, SINCE + 1]
    assert counting.read == 1 + 49 - SINCE
    full = CountingStore(scene.store)
    verify_log(full, KEYS)
    assert full.starts == [1] and full.read == 49


def test_an_incremental_run_does_not_stop_a_live_store(scene: Scene) -> None:
    """Appends during the run: it checks up to the head it read first, and passes."""
    make = scene.make

    def sign_more() -> None:
        scene.store.append([make.note() for _ in range(3)])
        scene.store.append([make.sign(4, "s4", key_version=2)])

    counting = CountingStore(scene.store, sign_more)
    report = verify_log(counting, KEYS, since=scene.since, anchors=[scene.later])
    assert report.tree_size == 9
    assert scene.store.tree_size() == 13
    assert verify_log(scene.store, KEYS, since=scene.later).tree_size == 13


def test_an_incremental_run_refuses_a_frontier_that_is_not_the_trusted_tree(
    scene: Scene,
) -> None:
    # Size 4 is one complete subtree, Node(2, 0): its stored hash is the whole frontier.
    with scene.place.raw() as db:
        db.run("UPDATE audit_tree SET hash = ? WHERE level = 2 AND idx = 0", ("ab" * 32,))
    with pytest.raises(StoreForkError, match=FORKED.format(SINCE, "since.txt")):
        verify_log(scene.store, KEYS, since=scene.since)


def test_an_incremental_run_refuses_a_frontier_hash_that_is_gone(scene: Scene) -> None:
    with scene.place.raw() as db:
        db.run("DELETE FROM audit_tree WHERE level = 2 AND idx = 0")
    with pytest.raises(StoreForkError, match="no tree hash at level 2, index 0"):
        verify_log(scene.store, KEYS, since=scene.since)


def test_an_incremental_run_hashes_the_new_records_itself(scene: Scene) -> None:
    """A new record edited, with its leaf hash and the subtrees above it re-stored to match."""
    events = _events(scene.store)
    events[6] = dataclasses.replace(events[6], identity="someone-else")
    records, prev = [], GENESIS_HASH
    for seq, event in enumerate(events, start=1):
        records.append(chain(prev, seq, event))
        prev = records[-1].hash
    tree = Frontier()
    rows = [row for r in records for row in tree_rows(tree.append(record_leaf(r)))]
    with scene.place.raw() as db:
        db.run("DELETE FROM audit_tree")
        db.many(INSERT_TREE, rows)
    # The records still say what they said: the re-stored hashes do not match them.
    with pytest.raises(AuditChainError, match=r"Merkle tree: the hash at level 0, index 6"):
        verify_log(scene.store, KEYS, since=scene.since)


def test_an_incremental_run_checks_the_chain_of_the_new_records(scene: Scene) -> None:
    with scene.place.raw() as db:
        db.run("UPDATE audit_log SET reason = 'edited' WHERE seq = 7")
    with pytest.raises(AuditChainError, match="record 7: hash does not match its contents"):
        verify_log(scene.store, KEYS, since=scene.since)


def test_an_incremental_run_needs_the_trusted_tree_s_last_record(scene: Scene) -> None:
    with scene.place.raw() as db:
        db.run("UPDATE audit_log SET reason = 'edited' WHERE seq = 4")
    with pytest.raises(StoreForkError, match=f"record {SINCE} is not the last leaf of checkpoint"):
        verify_log(scene.store, KEYS, since=scene.since)


def test_an_incremental_run_does_not_look_before_its_checkpoint(scene: Scene) -> None:
    """Its limit, kept on purpose: an old record edited in place is for the full run to find."""
    with scene.place.raw() as db:
        db.run("UPDATE audit_log SET reason = 'edited' WHERE seq = 2")
    verify_log(scene.store, KEYS, since=scene.since)
    with pytest.raises(AuditChainError, match="record 2: hash does not match"):
        verify_log(scene.store, KEYS)


def test_an_incremental_run_from_a_larger_checkpoint_than_the_store(scene: Scene) -> None:
    old = restore_old_copy(scene)
    try:
        with pytest.raises(StoreBehindError, match=r"holds 6 records but checkpoint later\.txt"):
            verify_log(old, KEYS, since=scene.later)
    finally:
        old.close()


def test_an_incremental_run_from_the_empty_tree(scene: Scene) -> None:
    body = Checkpoint(ORIGIN, 0, scene.store.tree_hash(0))
    note = sign_checkpoint(body, LOG.key, LOG.private.sign).format()
    note += cosign_text(body.body(), WITNESS.key, 1, WITNESS.private.sign).line().encode()
    report = verify_log(scene.store, KEYS, since=Anchor("checkpoint empty", note))
    assert (report.new_records, report.tree_size) == (9, 9)


def test_an_earlier_checkpoint_is_held_to_the_trusted_one_by_a_proof(scene: Scene) -> None:
    """A checkpoint below ``since``: the store's consistency proof must join the two."""
    scene.store.append([scene.make.note()])
    early = Anchor("checkpoint early", scene.since.note)
    report = verify_log(scene.store, KEYS, since=scene.later, anchors=[early])
    assert [c.size for c in report.checkpoints][-1] == SINCE
    # The same size with another root: not on the trusted tree.
    key_sign = LOG.private.sign
    body = Checkpoint(ORIGIN, 3, scene.store.tree_hash(4))
    fake = sign_checkpoint(body, LOG.key, key_sign).format()
    fake += cosign_text(body.body(), WITNESS.key, 1, WITNESS.private.sign).line().encode()
    with pytest.raises(StoreForkError, match=r"checkpoint fake \(size 3\) and checkpoint later"):
        verify_log(scene.store, KEYS, since=scene.later, anchors=[Anchor("checkpoint fake", fake)])


# --- verify_store's recomputed roots -----------------------------------------------------------


def test_verify_store_recomputes_the_roots_asked_for(scene: Scene) -> None:
    report = verify_store(scene.store, roots_at={0, 1, 4, 9, 12})
    assert dict(report.roots) == {n: scene.store.tree_hash(n) for n in (0, 1, 4, 9)}
    assert report.root_hash == scene.store.tree_hash(9)
