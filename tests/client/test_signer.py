"""The securesystemslib Signer plugin: URIs, registration, and signing through python-tuf."""

from __future__ import annotations

import pytest
from securesystemslib.signer import SIGNER_FOR_URI_SCHEME, CryptoSigner, Signer, SSlibKey
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import (
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    SuccinctRoles,
    TargetFile,
    Targets,
    Timestamp,
)

from tuf_signer.client import (
    SCHEME,
    RemotePolicyError,
    RemoteRequestError,
    SignerUri,
    TufSignerSigner,
    register,
    shared_client,
    sslib_key,
)
from tuf_signer.errors import KeyStateError, NotFoundError, RemoteError

from .conftest import RunningSigner


@pytest.fixture(autouse=True)
def _registered() -> None:
    register()


def signer_for(s: RunningSigner, role: str | None = None, key: SSlibKey | None = None) -> Signer:
    uri = SignerUri(s.address, "online", role)
    return Signer.from_priv_key_uri(str(uri), key or sslib_key(s.active))


def snapshot(s: RunningSigner, version: int, bins: int = 4) -> Metadata[Snapshot]:
    meta = {"targets.json": MetaFile(1)} | {f"bins-{i}.json": MetaFile(1) for i in range(bins)}
    return Metadata(Snapshot(version=version, expires=s.expires(), meta=meta))


# --- URIs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("tufsigner://signer:50051/online", SignerUri("signer:50051", "online")),
        (
            "tufsigner://10.0.0.7:443/online?role=bins-3fff",
            SignerUri("10.0.0.7:443", "online", "bins-3fff"),
        ),
        (
            "tufsigner://[::1]:50051/k.2?role=timestamp",
            SignerUri("[::1]:50051", "k.2", "timestamp"),
        ),
        ("tufsigner:///online", SignerUri(None, "online")),
    ],
    ids=["host-port-key", "with-role", "ipv6", "default-server"],
)
def test_uri_parses_and_round_trips(uri: str, expected: SignerUri) -> None:
    assert SignerUri.parse(uri) == expected
    assert str(expected) == uri


@pytest.mark.parametrize(
    ("uri", "match"),
    [
        ("gcpkms:projects/p/keys/k", "not a tufsigner:// URI"),
        ("tufsigner://signer:50051/", "exactly one key name"),
        ("tufsigner://signer:50051/a/b", "exactly one key name"),
        ("tufsigner://signer:50051/online?role=", "role must be given once"),
        ("tufsigner://signer:50051/online?role=a&role=b", "role must be given once"),
        (
            "tufsigner://signer:50051/online?timeout=3",
            r"unknown query parameter\(s\) \['timeout'\]",
        ),
        ("tufsigner://signer:50051/online?role", "malformed query"),
        ("tufsigner://signer:50051/online#frag", "no fragment"),
    ],
    ids=[
        "other-scheme",
        "no-key",
        "nested-path",
        "empty-role",
        "two-roles",
        "unknown-parameter",
        "malformed-query",
        "fragment",
    ],
)
def test_bad_uris_are_value_errors(uri: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SignerUri.parse(uri)


# --- registration -----------------------------------------------------------------------


def test_register_adds_the_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(SIGNER_FOR_URI_SCHEME, SCHEME)
    key = CryptoSigner.generate_ed25519().public_key
    with pytest.raises(ValueError, match="Unsupported private key scheme tufsigner"):
        Signer.from_priv_key_uri("tufsigner://127.0.0.1:1/online", key)
    register()
    register()
    assert SIGNER_FOR_URI_SCHEME[SCHEME] is TufSignerSigner
    assert isinstance(
        Signer.from_priv_key_uri("tufsigner://127.0.0.1:1/online", key), TufSignerSigner
    )


def test_public_key_must_be_an_sslib_key() -> None:
    with pytest.raises(ValueError, match="expected an SSlibKey"):
        TufSignerSigner.from_priv_key_uri("tufsigner://127.0.0.1:1/online", object())


# --- signing through python-tuf ----------------------------------------------------------


def test_round_trip_through_metadata_sign_and_verify_delegate(signer_server: RunningSigner) -> None:
    s = signer_server
    online = sslib_key(s.active)
    root = Root(expires=s.expires())
    for role in ("timestamp", "snapshot"):
        root.add_key(online, role)
    targets = Targets(expires=s.expires())
    succinct = SuccinctRoles([online.keyid], 1, 8, "bins")
    targets.delegations = Delegations(keys={online.keyid: online}, succinct_roles=succinct)

    ts = Metadata(Timestamp(version=1, expires=s.expires(), snapshot_meta=MetaFile(1)))
    sig = ts.sign(signer_for(s))  # no role: the server resolves "timestamp"
    assert sig.keyid == online.keyid
    root.verify_delegate("timestamp", ts.signed_bytes, ts.signatures)

    snap = snapshot(s, 1)
    snap.sign(signer_for(s, "snapshot"))
    root.verify_delegate("snapshot", snap.signed_bytes, snap.signatures)

    name = succinct.get_role_for_target("packages/ab/cd/example-1.0.tar.gz")
    bin_md = Metadata(Targets(version=1, expires=s.expires()))
    bin_md.sign(signer_for(s, name))
    targets.verify_delegate(name, bin_md.signed_bytes, bin_md.signatures)

    # Tampering after signing is caught by the same check.
    bin_md.signed.version = 2
    with pytest.raises(UnsignedMetadataError):
        targets.verify_delegate(name, bin_md.signed_bytes, bin_md.signatures)


def test_bin_without_role_in_uri_is_its_paths_bin(signer_server: RunningSigner) -> None:
    """One signer for every role (RSTUF): the server attributes a bin by its target paths."""
    s = signer_server
    path = "packages/ab/cd/example-1.0.tar.gz"
    name = SuccinctRoles([], 1, 8, "bins").get_role_for_target(path)
    bin_md = Metadata(Targets(version=1, expires=s.expires()))
    bin_md.signed.targets[path] = TargetFile.from_data(path, b"example", ["sha256"])
    bin_md.sign(signer_for(s))
    (state,) = s.client.role_state("online", name)
    assert state["version"] == 1

    s.client.create_key("plain", [("bins-a3", 3600)], activate=True)  # declares no bins
    (plain,) = s.client.public_keys("plain")
    plain_signer = Signer.from_priv_key_uri(
        str(SignerUri(s.address, "plain")), sslib_key(plain["versions"][0])
    )
    with pytest.raises(RemoteRequestError, match="role name required") as raised:
        plain_signer.sign(bin_md.signed_bytes)
    assert raised.value.code == "INVALID_ARGUMENT"


def test_stale_keyid_pin_is_refused_after_rotation(signer_server: RunningSigner) -> None:
    """A repository that missed the rotation still lists the old key: refused."""
    s = signer_server
    stale = signer_for(s, "timestamp")
    pending = s.client.rotate_key("online")
    s.client.activate("online", pending["version"], expected_keyid=pending["keyid"])

    ts = Metadata(Timestamp(version=1, expires=s.expires(), snapshot_meta=MetaFile(1)))
    with pytest.raises(RemotePolicyError, match="is not the ACTIVE version") as raised:
        stale.sign(ts.signed_bytes)
    assert raised.value.code == "FAILED_PRECONDITION"
    # python-tuf wraps a signer's error; the cause is ours.
    with pytest.raises(UnsignedMetadataError) as wrapped:
        ts.sign(stale)
    assert isinstance(wrapped.value.__cause__, RemotePolicyError)
    assert wrapped.value.__cause__.code == "FAILED_PRECONDITION"
    assert ts.signatures == {}

    # With the new key, as root now lists it, the same payload is signed.
    _, new_key = TufSignerSigner.import_("online", s.address)
    assert new_key.keyid == pending["keyid"]
    assert ts.sign(signer_for(s, "timestamp", new_key)).keyid == new_key.keyid


def test_equivocation_is_refused_and_a_retry_is_not(signer_server: RunningSigner) -> None:
    s = signer_server
    signer = signer_for(s, "snapshot")
    first = snapshot(s, 5, bins=4)
    sig = first.sign(signer)
    # A retry of the very same payload (a lost reply) gets the same signature.
    assert signer.sign(first.signed_bytes) == sig
    # A different snapshot with the same version is a fork.
    fork = snapshot(s, 5, bins=5)
    with pytest.raises(UnsignedMetadataError) as raised:
        fork.sign(signer)
    cause = raised.value.__cause__
    assert isinstance(cause, RemotePolicyError)
    assert cause.code == "FAILED_PRECONDITION"
    assert "equivocation" in cause.reason and "version 5" in cause.reason


def test_signers_share_one_client(signer_server: RunningSigner) -> None:
    s = signer_server
    signers = [signer_for(s, f"bins-{i % 256:02x}") for i in range(2000)]
    clients = {id(signer.client) for signer in signers if isinstance(signer, TufSignerSigner)}
    assert clients == {id(shared_client(s.address))}
    payload = Metadata(Targets(version=1, expires=s.expires())).signed_bytes
    for signer in signers[::500]:
        assert signer.sign(payload).keyid == s.active["keyid"]


# --- import_ -----------------------------------------------------------------------------


def test_import_returns_uri_and_active_key(signer_server: RunningSigner) -> None:
    s = signer_server
    uri, key = TufSignerSigner.import_("online", s.address, role="snapshot")
    assert uri == f"tufsigner://{s.address}/online?role=snapshot"
    assert key == sslib_key(s.active)
    assert key.to_dict() == s.active["public_key"]
    signer = Signer.from_priv_key_uri(uri, key)
    assert signer.sign(snapshot(s, 1).signed_bytes).keyid == key.keyid
    # As in the README: one URI for the key, a role appended per bin.
    base, _ = TufSignerSigner.import_("online", s.address)
    bin_signer = Signer.from_priv_key_uri(f"{base}?role=bins-a3", key)
    bin_md = Metadata(Targets(version=1, expires=s.expires()))
    assert bin_md.sign(bin_signer).keyid == key.keyid
    (state,) = s.client.role_state("online", "bins-a3")
    assert state["version"] == 1


def test_import_of_a_pending_version_gives_its_key_before_it_signs(
    signer_server: RunningSigner,
) -> None:
    s = signer_server
    pending = s.client.rotate_key("online")
    _, key = TufSignerSigner.import_("online", client=s.client, version=pending["version"])
    assert key.keyid == pending["keyid"]
    _, active = TufSignerSigner.import_("online", client=s.client)
    assert active.keyid == s.active["keyid"]


@pytest.mark.parametrize(
    ("name", "version", "error", "match"),
    [
        ("inactive", None, KeyStateError, "key 'inactive' has no ACTIVE version"),
        ("online", 7, NotFoundError, "key 'online' has no version 7"),
        ("nope", None, RemoteError, "unknown key 'nope'"),
    ],
    ids=["no-active-version", "unknown-version", "unknown-key"],
)
def test_import_refusals(
    signer_server: RunningSigner,
    name: str,
    version: int | None,
    error: type[Exception],
    match: str,
) -> None:
    s = signer_server
    s.client.create_key("inactive", [("timestamp", 600)])
    with pytest.raises(error, match=match):
        TufSignerSigner.import_(name, client=s.client, version=version)
