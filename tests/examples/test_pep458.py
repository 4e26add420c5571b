"""examples/pep458_repository.py end to end, checked by python-tuf's ngclient.

``make test`` runs it with 256 bins. PEP 458 scale (16,384 bins) takes minutes:

    TUF_SIGNER_EXAMPLE_BINS=16384 .venv/bin/pytest tests/examples -k end_to_end
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from examples.pep458_repository import run
from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata, MetaFile, Timestamp

from tuf_signer.client import (
    KeyVersionInfo,
    RemotePolicyError,
    SignerUri,
    register,
    shared_client,
    sslib_key,
)
from tuf_signer.model import BinsDelegation
from tuf_signer.policy import bins_pattern

from ..client.conftest import RunningSigner

EXAMPLE = Path(__file__).parents[2] / "examples" / "pep458_repository.py"
BINS = int(os.environ.get("TUF_SIGNER_EXAMPLE_BINS", "256"))


def create_bins_key(s: RunningSigner, name: str, bins: int) -> KeyVersionInfo:
    """An ACTIVE key declaring ``bins`` succinct hash bins "bins-…", as the example needs."""
    bits = bins.bit_length() - 1
    pattern = bins_pattern(BinsDelegation("bins", bits))
    roles = [("timestamp", 86400), ("snapshot", 86400), (pattern, 86400)]
    key = s.client.create_key(name, roles, activate=True, bins=f"bins:{bits}")
    assert key["bins"] == {"prefix": "bins", "bit_length": bits}
    (active,) = key["versions"]
    return active


@pytest.mark.slow
def test_end_to_end(signer_server: RunningSigner, tmp_path: Path) -> None:
    assert BINS >= 2 and BINS & (BINS - 1) == 0, "TUF_SIGNER_EXAMPLE_BINS: a power of 2"
    s = signer_server
    active = create_bins_key(s, "pep458", BINS)
    client = shared_client(s.address)
    report = run(client, "pep458", BINS.bit_length() - 1, tmp_path / "repo", n_targets=2 * BINS)

    # ngclient refreshed and downloaded at every stage; root went 1 -> 3 in the rotation.
    views = report.views
    assert views["first"].root_version == 1
    assert views["upload"].root_version == 1
    assert views["fresh"].root_version == views["returning"].root_version == 3
    assert (
        views["first"].timestamp_version
        < views["upload"].timestamp_version
        < views["returning"].timestamp_version
    )
    # A new client with only the first root and a returning one agree on the latest state.
    fresh, returning = views["fresh"], views["returning"]
    assert (fresh.timestamp_version, fresh.snapshot_version) == (
        returning.timestamp_version,
        returning.snapshot_version,
    )
    assert all(len(v.downloaded) > 0 for v in views.values())
    assert report.new_key != report.old_key == active["keyid"]

    # The signer's side: every online role was last signed by the new key.
    states = client.role_state("pep458")
    assert sum(st["role"].startswith("bins-") for st in states) == BINS
    assert {st["keyid"] for st in states} == {report.new_key}
    (key,) = client.public_keys("pep458")
    assert [v["state"] for v in key["versions"]] == ["RETIRED", "ACTIVE"]

    # A repository that missed the rotation (it still lists the old key) is refused.
    register()
    stale = Signer.from_priv_key_uri(
        str(SignerUri(s.address, "pep458", "timestamp")), sslib_key(active)
    )
    ts = Timestamp(version=views["fresh"].timestamp_version + 1, expires=s.expires())
    ts.snapshot_meta = MetaFile(views["fresh"].snapshot_version)
    with pytest.raises(RemotePolicyError, match="not the ACTIVE version") as raised:
        stale.sign(Metadata(ts).signed_bytes)
    assert raised.value.code == "FAILED_PRECONDITION"


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLE), *args], capture_output=True, text=True, timeout=300
    )


def test_runs_as_a_script_and_again(signer_server: RunningSigner, tmp_path: Path) -> None:
    create_bins_key(signer_server, "bins16", 16)
    server = ["--server", signer_server.address, "--key", "bins16"]  # its 16 declared bins
    first = _script(*server, "--out", str(tmp_path / "one"))
    assert first.returncode == 0, first.stderr
    assert "OK: 16 bins, 48 targets" in first.stdout
    assert (tmp_path / "one" / "metadata" / "3.root.json").is_file()
    # A second repository on the same signer continues above the versions signed so far.
    second = _script(*server)
    assert second.returncode == 0, second.stderr
    assert "OK: 16 bins" in second.stdout
    mismatched = _script(*server, "--bins", "32")
    assert mismatched.returncode == 2
    assert "--bins 32: key 'bins16' declares 16 bins" in mismatched.stderr
    signer_server.client.create_key("plain", [("timestamp", 86400)], activate=True)
    undeclared = _script(*server[:2], "--key", "plain")
    assert undeclared.returncode == 1
    assert "key 'plain' declares no 'bins' hash bins" in undeclared.stderr
    refused = _script(*server[:2], "--key", "nope")
    assert refused.returncode == 1
    assert "refused: NOT_FOUND: unknown key 'nope'" in refused.stderr
