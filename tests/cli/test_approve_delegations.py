"""``tuf-signer keys approve-delegations --metadata FILE`` (issue 14, rotation), on a dev signer.

A rotation moves the bins to the new key version: the top-level ``targets``
the repository will sign has new delegations, which the service signs only
after an admin approved their digest. The admin computes it from the file
the repository is about to sign, before the Sign (no refusal needed first).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
from tuf.api.metadata import Delegations, Metadata, SuccinctRoles, Targets

from tuf_signer.policy import delegations_digest, parse_canonical

from .conftest import DevSigner

APPROVE = ("keys", "approve-delegations", "online", "targets")


def _targets_file(path: Path, keyid: str) -> bytes:
    succinct = SuccinctRoles([keyid], 1, 14, "bins")
    t = Targets(version=2)
    t.delegations = Delegations(keys={}, succinct_roles=succinct)
    md = Metadata(t)
    path.write_bytes(md.to_bytes())
    return md.signed_bytes


def test_an_admin_approves_delegations_from_the_metadata_file(
    dev_signer: DevSigner, tmp_path: Path
) -> None:
    admin = functools.partial(dev_signer.as_, "admin")
    signed = _targets_file(tmp_path / "targets.json", "cd" * 32)
    out = json.loads(
        admin(*APPROVE, "--metadata", str(tmp_path / "targets.json"), "--reason", "INC-8").stdout
    )
    assert out["delegations_sha256"] == delegations_digest(parse_canonical(signed))
    tail = dev_signer.as_(
        "admin", "audit", "tail", "--config", str(dev_signer.config), "-n", "1", "--json"
    )
    (record,) = [json.loads(line) for line in tail.stdout.splitlines()]
    assert record["seq"] == out["audit_seq"]
    assert record["event"]["operation"] == "approve-delegations"
    assert record["event"]["detail"]["delegations_sha256"] == out["delegations_sha256"]


BAD = {
    "neither": ((), "give the delegations digest or --metadata FILE, not both or neither"),
    "both": (("ab" * 32, "--metadata", "{dir}/targets.json"), "not both or neither"),
    "missing-file": (("--metadata", "{dir}/nope.json"), "--metadata: cannot read"),
    "not-json": (("--metadata", "{dir}/junk"), "is not JSON"),
    "not-targets": (("--metadata", "{dir}/snapshot.json"), "is not targets metadata"),
}


@pytest.mark.parametrize("case", BAD.values(), ids=BAD.keys())
def test_bad_approvals_name_the_input(
    dev_signer: DevSigner, tmp_path: Path, case: tuple[tuple[str, ...], str]
) -> None:
    args, reason = case
    _targets_file(tmp_path / "targets.json", "cd" * 32)
    (tmp_path / "junk").write_bytes(b"\x00not json")
    (tmp_path / "snapshot.json").write_text(json.dumps({"signed": {"_type": "snapshot"}}))
    filled = [a.format(dir=tmp_path) for a in args]
    done = dev_signer.as_("admin", *APPROVE, *filled, "--reason", "x", check=False)
    assert done.returncode == 1 and reason in done.stderr, done.stderr
    tail = dev_signer.as_("admin", "audit", "tail", "--config", str(dev_signer.config), "-n", "3")
    assert "approve-delegations" not in tail.stdout
