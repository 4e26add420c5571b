"""Properties of the Sign policy and of the Sign RPC, with hypothesis (P3, P4, P7).

1. The policy, pure: a mutated python-tuf payload is either refused with a
   reason, or it is canonical JSON whose ``_type`` fits the role, whose version
   is at least 1 and whose expiry lies in (now, now + the role's maximum].
2. The RPC, against one server for a whole hypothesis run: a random sequence of
   Signs (some sent concurrently) gets exactly the answers a model of the
   high-water marks predicts; never two signatures or payloads for one (key,
   role, version); never a version below one already signed; and the audit
   chain verifies and says what each response said.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from securesystemslib.exceptions import FormatError
from securesystemslib.formats import encode_canonical
from securesystemslib.signer import Signature, SSlibKey
from tuf.api.metadata import Metadata, MetaFile, Snapshot, TargetFile, Targets, Timestamp

from tuf_signer.audit import SqliteAuditStore, verify_store
from tuf_signer.errors import TufSignerError
from tuf_signer.model import BinsDelegation, Outcome, RoleRule
from tuf_signer.policy import (
    TUF_EXPIRES_FORMAT,
    bin_for_path,
    bin_index,
    bin_name,
    bins_pattern,
    check_sign_request,
    is_empty_bin_role,
)
from tuf_signer.v1 import signer_pb2 as pb

from .conftest import Harness

# =====================================================================================
# 1. The policy, pure
# =====================================================================================

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
DAY = 86400
# The key declares PEP 458's bins:14 (issue 10, finding 1); its one glob is exact.
PROPERTY_BINS = BinsDelegation("bins", 14)
RULES = (
    RoleRule("timestamp", DAY),
    RoleRule("snapshot", 2 * DAY),
    RoleRule("targets", 365 * DAY),
    RoleRule(bins_pattern(PROPERTY_BINS), DAY),
)
MAX_PAYLOAD = 64 * 1024
REFUSAL_CODES = {"INVALID_ARGUMENT", "PERMISSION_DENIED", "FAILED_PRECONDITION"}
TYPE_FOR_ROLE = {"timestamp": "timestamp", "snapshot": "snapshot", "root": "root"}


def _base_payloads() -> dict[str, bytes]:
    expires = NOW + timedelta(hours=12)
    target = TargetFile(length=3, hashes={"sha256": "ab" * 32}, path="a/b-1.0.tar.gz")
    return {
        "timestamp": Metadata(
            Timestamp(3, expires=expires, snapshot_meta=MetaFile(3))
        ).signed_bytes,
        "snapshot": Metadata(
            Snapshot(
                3, expires=expires, meta={"targets.json": MetaFile(1), "bins-0.json": MetaFile(2)}
            )
        ).signed_bytes,
        "targets": Metadata(
            Targets(3, expires=expires, targets={target.path: target})
        ).signed_bytes,
    }


BASES = _base_payloads()
# Roles a request for each base would name: most mutants keep a fitting role.
NATURAL_ROLES = {
    "timestamp": ["", "timestamp"],
    "snapshot": ["", "snapshot"],
    # The base's one target path hashes into this bin.
    "targets": [bin_for_path(PROPERTY_BINS, "a/b-1.0.tar.gz"), "bins-3fff", "targets", "delegated"],
}

_TEXT = st.text(
    st.sampled_from([*'"\\/[]{}:,. \x00\n\u0301\u202e\ufeffé😀', *"abz019_-"]), max_size=6
)
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.floats(allow_nan=True, allow_infinity=True)
    | _TEXT,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(_TEXT, kids, max_size=3),
    max_leaves=8,
)
# Values a field checker must tell apart: near the edges of each field's range.
_EXPIRES = st.one_of(
    st.integers(-2 * DAY, 3 * DAY).map(
        lambda s: (NOW + timedelta(seconds=s)).strftime(TUF_EXPIRES_FORMAT)
    ),
    st.integers(-2 * DAY, 3 * DAY).map(lambda s: (NOW + timedelta(seconds=s)).isoformat()),
    st.sampled_from(
        ["2025-06-01T12:00:00z", "2025-06-01", "2025-02-30T00:00:00Z", "0000-01-01T00:00:00Z"]
    ),
)
_FIELD_VALUES = {
    "_type": st.sampled_from(
        ["timestamp", "snapshot", "targets", "root", "mirrors", "Targets", ""]
    ),
    "version": st.one_of(
        st.integers(-2, 3), st.integers(2**63 - 2, 2**63 + 1), st.booleans(), st.just("3")
    ),
    "expires": _EXPIRES,
    "spec_version": st.sampled_from(
        ["1.0.31", "1.0", "1", "2.0.0", "01.0", "1.0.0-rc1", "\uff11.0"]
    ),
}
_ROLES = st.sampled_from(
    ["", "timestamp", "snapshot", "targets", "bins-0", "bins-3fff", "root", "bins", "Timestamp",
     "bins-e\u0301", "bins-0/x", " bins-0", "bins-\x00", "delegated"]
)  # fmt: skip


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a node of a parsed JSON value (the root is ``()``)."""
    found = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _paths(v, (*prefix, i))
    return found


@st.composite
def _structured(draw: st.DrawFn, base: bytes) -> bytes:
    """A python-tuf payload with JSON-level edits, encoded canonically or not."""
    obj = json.loads(base)
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
        path = draw(st.sampled_from(_paths(obj)))
        parent: Any = obj
        for step in path[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["field"] * 4 + ["replace", "delete", "add", "rename"]))
        if action == "field":
            name = draw(st.sampled_from(sorted(_FIELD_VALUES)))
            obj[name] = draw(_FIELD_VALUES[name])
        elif not path:
            continue
        elif action == "replace":
            parent[path[-1]] = draw(_JSON)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            value = parent[path[-1]] if action == "rename" else draw(_JSON)
            if action == "rename":
                del parent[path[-1]]
            parent[draw(_TEXT)] = value
    try:
        canonical = str(encode_canonical(obj)).encode("utf-8", "surrogatepass")
    except FormatError:  # a float: only plain json can write it
        canonical = b""
    kwargs = draw(
        st.sampled_from(
            [
                {"sort_keys": True, "separators": (",", ":"), "ensure_ascii": False},
                {"sort_keys": True, "separators": (",", ":")},
                {"separators": (",", ":"), "ensure_ascii": False},
                {"sort_keys": True, "indent": 1},
            ]
        )
    )
    plain = json.dumps(obj, **kwargs).encode("utf-8", "surrogatepass")
    return canonical if canonical and draw(st.integers(0, 3)) else plain


@st.composite
def _bytewise(draw: st.DrawFn, base: bytes) -> bytes:
    """A python-tuf payload with bytes flipped, inserted, deleted or duplicated."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "insert", "delete", "duplicate"]))
        if kind == "flip":
            data[i] ^= draw(st.sampled_from([1, 2, 4, 8, 16, 32, 64, 128]))
        elif kind == "insert":
            data[i:i] = draw(
                st.sampled_from(
                    [b" ", b'"', b"\\", b"{", b"]", b",", b"0", b".5", b"\xed\xa0\x80", b"\xc0\xaf"]
                )
            )
        elif kind == "delete":
            del data[i : i + draw(st.integers(1, 8))]
        else:
            j = draw(st.integers(i, min(len(data), i + 30)))
            data[draw(st.integers(0, len(data))) : 0] = data[i:j]
    return bytes(data)


@st.composite
def _requests(draw: st.DrawFn) -> tuple[bytes, str]:
    kind = draw(st.sampled_from(sorted(BASES)))
    payload = draw(st.one_of(_structured(BASES[kind]), _bytewise(BASES[kind])))
    return payload, draw(st.one_of(st.sampled_from(NATURAL_ROLES[kind]), _ROLES))


def _check_accepted(payload: bytes, role: str, resolved: str, info: Any, rule: RoleRule) -> None:
    text = payload.decode("utf-8")
    obj = json.loads(text, strict=False)
    assert str(encode_canonical(obj)) == text, "accepted bytes are canonical JSON"
    if role or obj["_type"] != "targets":
        assert resolved == (role or obj["_type"])
    else:  # inferred (issue 14): the top-level targets, a bin, or an empty bin
        empty = is_empty_bin_role(resolved)
        assert resolved == "targets" or bin_index(PROPERTY_BINS, resolved) is not None or empty
        if empty:
            assert obj["targets"] == {} and "delegations" not in obj
            resolved = bin_name(PROPERTY_BINS, 0)  # allowed as every bin is
    assert obj["_type"] == info.type == TYPE_FOR_ROLE.get(resolved, "targets")
    assert resolved != "root" and fnmatchcase(resolved, rule.pattern)
    if resolved.startswith("bins-"):  # a declared bin: exactly a bin, its paths hash into it
        assert bin_index(PROPERTY_BINS, resolved) is not None
        assert {bin_for_path(PROPERTY_BINS, path) for path in obj["targets"]} <= {resolved}
        assert "delegations" not in obj
    assert type(obj["version"]) is int and 1 <= obj["version"] == info.version <= 2**63 - 1
    expires = datetime.strptime(obj["expires"], TUF_EXPIRES_FORMAT).replace(tzinfo=UTC)
    assert expires == info.expires
    assert NOW < expires <= NOW + timedelta(seconds=rule.max_validity)
    assert obj["spec_version"].split(".")[0] == "1"
    assert info.payload_sha256 == hashlib.sha256(payload).hexdigest()


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_requests())
def test_policy_refuses_with_a_reason_or_accepts_only_sane_metadata(
    request: tuple[bytes, str],
) -> None:
    payload, role = request
    try:
        resolved, info, rule = check_sign_request(
            payload, role, "k", RULES, NOW, MAX_PAYLOAD, bins=PROPERTY_BINS
        )
    except TufSignerError as e:
        error = e
    else:
        event(f"accepted for {resolved}")
        _check_accepted(payload, role, resolved, info, rule)
        return
    event(f"refused {error.code}")
    assert error.code in REFUSAL_CODES
    assert error.reason and error.reason.isprintable() and len(error.reason) <= 512


@pytest.mark.parametrize("kind", sorted(BASES))
def test_unmutated_payloads_are_accepted(kind: str) -> None:
    """The other side of the property: its starting points pass, so acceptance is reachable."""
    payload, role = BASES[kind], NATURAL_ROLES[kind][0]
    resolved, info, rule = check_sign_request(
        payload, role, "k", RULES, NOW, MAX_PAYLOAD, bins=PROPERTY_BINS
    )
    _check_accepted(payload, role, resolved, info, rule)


# =====================================================================================
# 2. The RPC, one server per hypothesis run
# =====================================================================================

KEYS = ("ec", "ed")  # ECDSA signatures are randomised: a re-sign instead of a replay shows
ROLES = ("timestamp", "snapshot", "bins-00", "bins-01")  # two of the keys' TEST_BINS
OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
FAILED = grpc.StatusCode.FAILED_PRECONDITION
# A defect that makes the payload wrong whatever the role state, and its status.
DEFECTS = {
    "expired": FAILED,
    "beyond-max-validity": FAILED,
    "spec-version-2": FAILED,
    "wrong-type": INVALID,
    "whitespace": INVALID,
    "float-version": INVALID,
    "not-utf8": INVALID,
}


@dataclass(frozen=True)
class Op:
    key: str
    role: str
    name_role: bool  # send the role name even where it defaults from _type
    delta: int  # version relative to the model's high-water mark
    salt: int  # varies the payload: same version, other bytes
    defect: str  # "" for a valid payload


_OPS = st.builds(
    Op,
    key=st.sampled_from(KEYS),
    role=st.sampled_from(ROLES),
    name_role=st.booleans(),
    delta=st.integers(-2, 2),
    salt=st.integers(0, 2),
    defect=st.one_of(st.just(""), st.just(""), st.sampled_from(sorted(DEFECTS))),
)
_STEPS = st.lists(st.lists(_OPS, min_size=1, max_size=3), min_size=1, max_size=6)


@dataclass(frozen=True)
class Signed:
    version: int
    digest: str
    signature: str
    seq: int


@dataclass
class Model:
    """What the server has signed so far, as its responses said."""

    marks: dict[tuple[str, str], Signed] = field(default_factory=dict)
    by_version: dict[tuple[str, str, int], Signed] = field(default_factory=dict)
    history: list[tuple[str, str, Signed]] = field(default_factory=list)


@dataclass
class Rpc:
    h: Harness
    model: Model
    public: dict[str, SSlibKey]

    def payload(self, op: Op, version: int) -> bytes:
        p = self.h.payloads
        kw: dict[str, Any] = {}
        if op.defect == "expired":
            kw["expires"] = self.h.clock.now - timedelta(seconds=1)
        elif op.defect == "beyond-max-validity":
            skew = self.h.config.policy.max_clock_skew  # the bound's tolerance (issue 14)
            kw["expires"] = self.h.clock.now + timedelta(days=1, seconds=skew + 1)
        kind = {"timestamp": "timestamp", "snapshot": "snapshot"}.get(op.role, "targets")
        if op.defect == "wrong-type":
            kind = {"timestamp": "snapshot", "snapshot": "targets"}.get(op.role, "timestamp")
        if kind == "timestamp":
            # Coherence (issue 14): name a snapshot version the key signed
            # before this step (marks only grow), so that the model's rules
            # alone decide; the salt varies the expiry instead.
            snapshot = self.model.marks.get((op.key, "snapshot"))
            kw.setdefault("expires", p.expires() - timedelta(seconds=op.salt))
            payload = p.timestamp(
                version, snapshot_version=snapshot.version if snapshot else 1, **kw
            )
        elif kind == "snapshot":
            payload = p.snapshot(version, bins=op.salt + 1, **kw)
        else:
            payload = p.targets(version, n_targets=2, salt=str(op.salt), role=op.role, **kw)
        if op.defect == "spec-version-2":
            payload = payload.replace(b'"spec_version":"1.', b'"spec_version":"2.', 1)
        elif op.defect == "whitespace":
            payload += b" "
        elif op.defect == "float-version":
            payload = payload.replace(b'"version":%d}' % version, b'"version":%d.0}' % version)
        elif op.defect == "not-utf8":
            payload = payload.replace(b'"expires"', b'"expires\xff"', 1)
        return payload


@pytest.fixture
async def rpc(harness: Harness) -> Rpc:
    """The conftest harness (one server for the test function, so for every example)."""
    public = {}
    for name, algorithm in zip(KEYS, (pb.ECDSA_P256, pb.ED25519), strict=True):
        info = await harness.create_key(name, algorithm)
        v1 = info.versions[0]
        public[name] = SSlibKey.from_dict(v1.keyid, json.loads(v1.public_key_json))
    return Rpc(harness, Model(), public)


def _predict(model: Model, op: Op, version: int, digest: str) -> tuple[grpc.StatusCode, str]:
    """The status (and, for OK, "new" or "replay") a lone request must get."""
    if op.defect:
        return DEFECTS[op.defect], ""
    mark = model.marks.get((op.key, op.role))
    if mark is None or version > mark.version:
        return OK, "new"
    if version == mark.version and digest == mark.digest:
        return OK, "replay"
    return FAILED, ""


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    # No shrinking: the server keeps its state between examples, so a replayed
    # example meets other high-water marks and shrinking only burns minutes.
    # A failure reports the steps and the ops, which is enough to reproduce.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
@given(steps=_STEPS)
async def test_sign_sequences_keep_the_promises(rpc: Rpc, steps: list[list[Op]]) -> None:
    h, model = rpc.h, rpc.model
    head = h.records()[-1].seq
    sent: list[tuple[Op, int, bytes, pb.SignResponse | grpc.aio.AioRpcError]] = []

    for step in steps:
        requests = []
        for op in step:
            mark = model.marks.get((op.key, op.role))
            version = max(1, (mark.version if mark else 1) + op.delta)
            payload = rpc.payload(op, version)
            named = op.name_role or op.role.startswith("bins-") or op.defect == "wrong-type"
            role = op.role if named else ""
            requests.append(
                (op, version, payload, pb.SignRequest(key=op.key, role=role, payload=payload))
            )
        # A lone request, or a concurrent burst whose requests race per (key, role).
        results = await asyncio.gather(
            *(h.signer.Sign(r) for *_, r in requests), return_exceptions=True
        )
        racing = Counter((op.key, op.role) for op, *_ in requests if not op.defect)
        for (op, version, payload, _), result in zip(requests, results, strict=True):
            assert isinstance(result, pb.SignResponse | grpc.aio.AioRpcError), result
            code = OK if isinstance(result, pb.SignResponse) else result.code()
            digest = hashlib.sha256(payload).hexdigest()
            expected, how = _predict(model, op, version, digest)
            if racing[(op.key, op.role)] == 1 or op.defect:
                assert code == expected, (op, version, result)
            else:
                assert code in (OK, FAILED), (op, version, result)
            event(f"{'lone' if racing[(op.key, op.role)] == 1 else 'racing'} {code.name} {how}")
            if isinstance(result, grpc.aio.AioRpcError):
                assert result.details(), "every refusal has a reason"
            else:
                if racing[(op.key, op.role)] == 1:
                    assert result.replayed == (how == "replay")
                _check_granted(rpc, op, version, payload, result)
            sent.append((op, version, payload, result))

    _check_record(h, head, sent)


def _check_granted(rpc: Rpc, op: Op, version: int, payload: bytes, r: pb.SignResponse) -> None:
    """A granted Sign: verifies, and never equivocates or rolls back (P3)."""
    model = rpc.model
    rpc.public[op.key].verify_signature(Signature(r.signature.keyid, r.signature.sig), payload)
    assert (r.role, r.metadata_version) == (op.role, version)
    signed = Signed(version, hashlib.sha256(payload).hexdigest(), r.signature.sig, r.audit_seq)
    first = model.by_version.setdefault((op.key, op.role, version), signed)
    assert (first.digest, first.signature) == (signed.digest, signed.signature), (
        "one (key, role, version): one payload, one signature"
    )
    mark = model.marks.get((op.key, op.role))
    if mark is None or version > mark.version:
        model.marks[(op.key, op.role)] = signed
    if r.replayed:
        return  # an earlier signature, returned again: nothing new was signed
    # In commit order (audit seq), what each (key, role) signs only ever moves up.
    model.history.append((op.key, op.role, signed))
    mine = sorted(
        (s.seq, s.version) for k, role, s in model.history if (k, role) == (op.key, op.role)
    )
    assert [v for _, v in mine] == sorted(v for _, v in mine), "a version below one signed"


def _check_record(h: Harness, head: int, sent: list[Any]) -> None:
    """One record per request, saying what the response said; the chain verifies (P4, P5)."""
    new = [r for r in h.records() if r.seq > head]
    assert len(new) == len(sent)
    by_seq = {r.seq: r.event for r in new}
    refused: Counter[tuple[str, str, str]] = Counter()
    for op, version, payload, result in sent:
        digest = hashlib.sha256(payload).hexdigest()
        if isinstance(result, pb.SignResponse):
            event = by_seq[result.audit_seq]
            assert event.outcome is Outcome.GRANTED and event.status == "OK"
            assert event.signature == result.signature.sig
            assert (event.key_name, event.role, event.metadata_version) == (
                op.key,
                op.role,
                version,
            )
            assert event.payload_sha256 == digest
        else:
            refused[(result.code().name, result.details(), digest)] += 1
    assert refused == Counter(
        (e.status, e.reason, e.payload_sha256)
        for e in by_seq.values()
        if e.outcome is Outcome.REFUSED
    )
    store = SqliteAuditStore(h.config.audit.path)
    try:
        verify_store(store)
    finally:
        store.close()
