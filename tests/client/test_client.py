"""The synchronous client against a real server: every RPC, and refusals as our errors."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
from tuf.api.metadata import Metadata, MetaFile, Root, Targets, Timestamp

from tuf_signer.client import (
    Client,
    RemoteAlreadyExistsError,
    RemoteError,
    RemoteNotFoundError,
    RemotePermissionError,
    RemotePolicyError,
    RemoteRequestError,
    RemoteUnavailableError,
    SignRequest,
    sslib_key,
)
from tuf_signer.errors import (
    AlreadyExistsError,
    NotFoundError,
    PermissionError_,
    PolicyError,
    RequestError,
    TufSignerError,
)

from .conftest import ONLINE_BIN_PATTERN, RunningSigner


def timestamp(s: RunningSigner, version: int, expires_in: int = 3600) -> bytes:
    ts = Timestamp(version=version, expires=s.expires(expires_in), snapshot_meta=MetaFile(1))
    return Metadata(ts).signed_bytes


def bin_payload(s: RunningSigner, version: int = 1) -> bytes:
    return Metadata(Targets(version=version, expires=s.expires())).signed_bytes


def test_sign_returns_a_signature_that_verifies(signer_server: RunningSigner) -> None:
    s = signer_server
    payload = timestamp(s, 1)
    result = s.client.sign("online", payload)
    assert (result.keyid, result.role, result.metadata_version) == (
        s.active["keyid"],
        "timestamp",
        1,
    )
    assert (result.key_version, result.replayed) == (1, False)
    assert result.signature_dict() == {"keyid": result.keyid, "sig": result.sig}
    sslib_key(s.active).verify_signature(result.signature(), payload)
    again = s.client.sign("online", payload)
    assert again.replayed and again.sig == result.sig and again.audit_seq > result.audit_seq


def test_read_rpcs(signer_server: RunningSigner) -> None:
    s = signer_server
    s.client.sign("online", bin_payload(s, 3), role="bins-0a")
    (public,) = s.client.public_keys("online")
    (admin,) = s.client.list_keys()
    assert public == admin
    assert public["algorithm"] == "ed25519"
    assert {r["pattern"] for r in public["roles"]} == {"timestamp", "snapshot", ONLINE_BIN_PATTERN}
    assert public["bins"] == {"prefix": "bins", "bit_length": 8}
    assert public["versions"] == [s.active]
    (state,) = s.client.role_state("online", "bins-0a")
    assert (state["role"], state["version"], state["keyid"]) == ("bins-0a", 3, s.active["keyid"])
    assert s.client.role_state("online", "bins-0b") == []


def test_rotation_rpcs(signer_server: RunningSigner) -> None:
    s = signer_server
    pending = s.client.rotate_key("online")
    assert (pending["version"], pending["state"]) == (2, "PENDING")
    assert pending["keyid"] != s.active["keyid"]
    assert sslib_key(pending).keyid == pending["keyid"]
    active = s.client.activate("online", 2, expected_keyid=pending["keyid"])
    assert active["state"] == "ACTIVE" and active["activated_at"]
    (key,) = s.client.public_keys("online")
    assert [v["state"] for v in key["versions"]] == ["RETIRED", "ACTIVE"]
    assert s.client.sign("online", timestamp(s, 1)).keyid == pending["keyid"]
    retired = s.client.retire("online", 2)
    assert retired["state"] == "RETIRED" and retired["retired_at"]


def chain_hash(record: dict[str, Any]) -> str:
    """README "The audit log": the hash an auditor recomputes for a record."""
    body = {"prev_hash": record["prev_hash"], "seq": record["seq"], "event": record["event"]}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def test_audit_records_page_and_chain(signer_server: RunningSigner) -> None:
    s = signer_server
    granted = s.client.sign("online", timestamp(s, 1))
    with pytest.raises(RemotePolicyError):
        s.client.sign("online", timestamp(s, 1, expires_in=5 * 86400))
    first = s.client.audit_records(1, limit=2)
    rest = s.client.audit_records(first["records"][-1]["seq"] + 1)
    records = first["records"] + rest["records"]
    assert [r["seq"] for r in records] == list(range(1, rest["head_seq"] + 1))
    assert len(first["records"]) == 2
    prev = "0" * 64
    for r in records:
        assert r["prev_hash"] == prev and chain_hash(r) == r["hash"]
        prev = r["hash"]
    assert rest["head_hash"] == prev
    sign = records[granted.audit_seq - 1]["event"]
    assert (sign["operation"], sign["role"], sign["signature"]) == (
        "sign",
        "timestamp",
        granted.sig,
    )
    assert records[-1]["event"]["outcome"] == "refused"


# (what to call, the client class, the tree class, status, reason pattern)
Call = Callable[[RunningSigner], Any]
REFUSALS: list[tuple[Call, type[RemoteError], type[TufSignerError], str, str]] = [
    (
        lambda s: s.client.sign("nope", timestamp(s, 1)),
        RemoteNotFoundError,
        NotFoundError,
        "NOT_FOUND",
        "unknown key 'nope'",
    ),
    (
        lambda s: s.client.sign("online", Metadata(Root(expires=s.expires())).signed_bytes),
        RemotePermissionError,
        PermissionError_,
        "PERMISSION_DENIED",
        "root is an offline role",
    ),
    (
        lambda s: s.client.sign("online", b'{"a": 1}'),
        RemoteRequestError,
        RequestError,
        "INVALID_ARGUMENT",
        "not canonical JSON",
    ),
    (
        # A key with a bins declaration attributes a role-less bin by its paths (issue
        # 14); one without has nothing to infer the role from.
        lambda s: (
            s.client.create_key("plain", [("timestamp", 60)], activate=True),
            s.client.sign("plain", bin_payload(s)),
        ),
        RemoteRequestError,
        RequestError,
        "INVALID_ARGUMENT",
        "role name required for targets metadata: key 'plain' declares no hash-bin",
    ),
    (
        lambda s: s.client.sign("online", timestamp(s, 1, expires_in=2 * 86400)),
        RemotePolicyError,
        PolicyError,
        "FAILED_PRECONDITION",
        "beyond the maximum validity of 86400 s",
    ),
    (
        lambda s: s.client.sign("online", timestamp(s, 1), expected_keyid="00" * 32),
        RemotePolicyError,
        PolicyError,
        "FAILED_PRECONDITION",
        "expected keyid 0000000000000000... is not the ACTIVE version",
    ),
    (
        lambda s: (
            s.client.sign("online", timestamp(s, 2)),
            s.client.sign("online", timestamp(s, 1)),
        ),
        RemotePolicyError,
        PolicyError,
        "FAILED_PRECONDITION",
        "rollback: version 1 is not above version 2",
    ),
    (
        lambda s: s.client.create_key("online", [("timestamp", 60)]),
        RemoteAlreadyExistsError,
        AlreadyExistsError,
        "ALREADY_EXISTS",
        "key 'online' already exists",
    ),
    (
        lambda s: s.client.activate("online", 99),
        RemoteNotFoundError,
        NotFoundError,
        "NOT_FOUND",
        "key 'online' has no version 99",
    ),
    (
        lambda s: s.client.rotate_key("nope"),
        RemoteNotFoundError,
        NotFoundError,
        "NOT_FOUND",
        "unknown key 'nope'",
    ),
]


@pytest.mark.parametrize(
    ("call", "remote_class", "tree_class", "code", "reason"),
    REFUSALS,
    ids=[
        "unknown-key",
        "root-never-online",
        "not-canonical",
        "bin-without-role",
        "expiry-beyond-max",
        "stale-keyid-pin",
        "rollback",
        "key-exists",
        "unknown-version",
        "rotate-unknown-key",
    ],
)
def test_refusals_are_our_errors_with_status_and_reason(
    signer_server: RunningSigner,
    call: Call,
    remote_class: type[RemoteError],
    tree_class: type[TufSignerError],
    code: str,
    reason: str,
) -> None:
    with pytest.raises(remote_class, match=reason) as raised:
        call(signer_server)
    assert isinstance(raised.value, tree_class)
    assert raised.value.code == code
    assert raised.value.reason == str(raised.value)


def test_unknown_algorithm_is_refused_before_sending(signer_server: RunningSigner) -> None:
    with pytest.raises(RequestError, match="unknown algorithm 'dsa'") as raised:
        signer_server.client.create_key("other", [("timestamp", 60)], algorithm="dsa")
    assert not isinstance(raised.value, RemoteError)


def test_unreachable_server_is_unavailable() -> None:
    with (
        Client("127.0.0.1:1", timeout=5) as client,
        pytest.raises(RemoteUnavailableError) as raised,
    ):
        client.list_keys()
    assert raised.value.code == "UNAVAILABLE"


def test_one_client_serves_many_threads(signer_server: RunningSigner) -> None:
    s = signer_server
    results: dict[int, str] = {}

    def sign(i: int) -> None:
        results[i] = s.client.sign("online", bin_payload(s), role=f"bins-{i:02x}").role

    threads = [threading.Thread(target=sign, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: f"bins-{i:02x}" for i in range(16)}


def test_sign_many_from_sync_code(signer_server: RunningSigner) -> None:
    s = signer_server
    requests = [SignRequest("online", bin_payload(s), f"bins-{i:02x}") for i in range(40)]
    requests[7] = SignRequest("online", bin_payload(s), "bins-07", expected_keyid="ab" * 32)
    outcomes = s.client.sign_many(requests, max_in_flight=8)
    assert len(outcomes) == 40
    for i, outcome in enumerate(outcomes):
        if i == 7:
            assert isinstance(outcome, RemotePolicyError)
            assert outcome.code == "FAILED_PRECONDITION"
        else:
            assert not isinstance(outcome, RemoteError)
            assert outcome.role == f"bins-{i:02x}"


def _client_threads() -> int:
    return sum(t.name == "tuf-signer-client" for t in threading.enumerate())


def test_sign_many_thread_is_reused_and_stopped_by_close(signer_server: RunningSigner) -> None:
    s = signer_server
    before = _client_threads()
    with Client(s.address) as client:
        assert client.sign_many([]) == []
        assert _client_threads() == before + 1
        (outcome,) = client.sign_many([SignRequest("online", bin_payload(s), "bins-01")])
        assert not isinstance(outcome, RemoteError)
        assert _client_threads() == before + 1
    assert _client_threads() == before
