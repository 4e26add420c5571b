"""Runbook "An online key is compromised: rotate it" (docs/runbooks.md), performed.

PEP 458's recovery from a compromised online key: a new key is listed in root
(timestamp, snapshot) and in targets' delegation to the bins, the old one is
removed from both at once (no overlap: its signatures must stop counting), every
online role is re-signed with the new key at a new version, and the old key
version is RETIRED on the signer, so it never signs again. A client that ships
only the first root, and one that refreshed before the compromise, both follow.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from examples.pep458_repository import (
    OfflineKeys,
    Pep458Repository,
    fetch_with_ngclient,
    make_target_files,
    serve,
)
from securesystemslib.signer import SSlibKey
from tuf.api.metadata import Metadata, MetaFile, Snapshot, Timestamp

from tuf_signer.client import RemotePolicyError, register, shared_client, sslib_key

from ..client.conftest import RunningSigner

BIT_LENGTH = 8  # the signer_server key "online" declares bins:8 (256 bins)


def recover_from_compromise(repo: Pep458Repository) -> SSlibKey:
    """The runbook's steps 2-6, as a repository operator runs them. Returns the new key."""
    old = repo.online_key
    # 2. A new key version, PENDING: its public key exists before it can sign.
    pending = repo.admin.rotate_key(repo.key)
    new = sslib_key(pending)
    # 3. Offline: root and targets swap the keys in ONE step (PEP 458: revoke the
    #    compromised key), each at a new version, signed by the offline keys.
    for role in (Snapshot.type, Timestamp.type):
        repo.root.signed.revoke_key(old.keyid, role)
        repo.root.signed.add_key(new, role)
    repo.root.signed.version += 1
    repo._sign_offline_root()
    repo.targets.signed.revoke_key(old.keyid)
    repo.targets.signed.add_key(new)
    repo.targets.signed.version += 1
    repo._sign_offline_targets()
    # 4. Activate the new version, pinned to the keyid root now lists: the old
    #    version is RETIRED in the same transaction and never signs again.
    repo.admin.activate(repo.key, pending["version"], expected_keyid=new.keyid)
    repo.online_key = new
    repo._signers.clear()
    # 5. Re-sign every online role with the new key, above the signer's marks
    #    (which include whatever the attacker had signed through the service).
    marks = {s["role"]: s["version"] for s in repo.client.role_state(repo.key)}
    for name, md in repo.bins.items():
        md.signed.version = max(md.signed.version, marks.get(name, 0))
        repo._bump_bin(name)
    repo.sign_bins(repo.bins)
    repo.snapshot.signed.version = max(repo.snapshot.signed.version, marks[Snapshot.type])
    repo.timestamp.signed.version = max(repo.timestamp.signed.version, marks[Timestamp.type])
    repo._snapshot_and_timestamp()
    # 6. Publish: root and targets, the bins, then snapshot and timestamp last.
    repo.publish(root=True, targets=True, bins=repo.bins)
    return new


@pytest.mark.slow
def test_recover_from_a_compromised_online_key(
    signer_server: RunningSigner, tmp_path: Path
) -> None:
    register()
    s = signer_server
    client = shared_client(s.address)
    repo = Pep458Repository(tmp_path / "repo", client, s.key, BIT_LENGTH, OfflineKeys.generate())
    files = make_target_files(32)
    repo.build(files)
    trusted_root = repo.first_root()
    old = repo.online_key
    with serve(tmp_path / "repo") as url:
        fetch_with_ngclient(url, tmp_path / "returning", files, trusted_root)

        # The compromise: whoever holds the backend's credential signs a timestamp
        # far ahead (a fast-forward), through the service, so it is on the record.
        rogue = Timestamp(version=repo.timestamp.signed.version + 500, expires=s.expires())
        rogue.snapshot_meta = MetaFile(repo.snapshot.signed.version)
        client.sign(s.key, Metadata(rogue).signed_bytes)

        new = recover_from_compromise(repo)

        # Root lists only the new key for the online roles, one version later.
        root = repo.root.signed
        assert root.version == 2
        for role in (Timestamp.type, Snapshot.type):
            assert root.roles[role].keyids == [new.keyid]
        assert repo.targets.signed.delegations.succinct_roles.keyids == [new.keyid]
        assert old.keyid not in root.keys
        assert old.keyid not in repo.targets.signed.delegations.keys
        repo.check()  # every role verifies against its delegator, as a client checks
        for md in (*repo.bins.values(), repo.snapshot, repo.timestamp):
            assert [sig.keyid for sig in md.signatures.values()] == [new.keyid]
        assert repo.timestamp.signed.version > rogue.version

        # Clients follow: a new one from the first root, a returning one from its cache.
        fresh = fetch_with_ngclient(url, tmp_path / "fresh", files, trusted_root)
        returning = fetch_with_ngclient(url, tmp_path / "returning", files, None)
        assert fresh.root_version == returning.root_version == 2
        assert fresh.timestamp_version == returning.timestamp_version > rogue.version

    # The old version is RETIRED for good: a request pinned to it is refused.
    (key,) = client.public_keys(s.key)
    assert [(v["keyid"], v["state"]) for v in key["versions"]] == [
        (old.keyid, "RETIRED"),
        (new.keyid, "ACTIVE"),
    ]
    late = Timestamp(version=repo.timestamp.signed.version + 1, expires=s.expires())
    late.snapshot_meta = MetaFile(repo.snapshot.signed.version)
    with pytest.raises(RemotePolicyError) as raised:
        client.sign(s.key, Metadata(late).signed_bytes, expected_keyid=old.keyid)
    assert raised.value.code == "FAILED_PRECONDITION"
    # Every online role's last signature, on the signer's record, is the new key's.
    states = client.role_state(s.key)
    assert {st["keyid"] for st in states} == {new.keyid}
    assert sum(st["role"].startswith("bins-") for st in states) == 2**BIT_LENGTH
