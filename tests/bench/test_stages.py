"""W1 says where a lone Sign's time goes, from the real server's stage histograms.

``TufSigner.stage_seconds`` reads ``tuf_signer_sign_stage_seconds`` from the
server's ops listener; ``stage_means`` turns two reads into mean µs per stage.
The test drives real Signs through a real ``tuf-signer serve`` (SoftHSM,
SQLite audit store) and checks that every Sign is counted once per stage.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bench._gen import SIGN
from bench._procs import TufSigner
from bench.run import sign_snapshot, stage_means, timestamps

SIGNS = 12


def test_stage_means_are_per_observation_between_two_reads() -> None:
    before = {"policy": (1.0, 10), "hsm": (2.0, 10)}
    after = {"policy": (1.5, 20), "hsm": (2.0, 10), "audit_commit": (0.003, 3)}
    # hsm saw nothing between the reads: no mean rather than a division by zero.
    assert stage_means(before, after) == pytest.approx({"policy": 50_000.0, "audit_commit": 1000.0})


def test_every_sign_is_seen_once_by_each_stage(tmp_path: Path) -> None:
    server = TufSigner(tmp_path / "signer", workers=1)
    server.start()
    try:
        snapshot_version = sign_snapshot(server, "ed", {})
        bodies = timestamps(server, "ed", SIGNS, snapshot_version)
        before = server.stage_seconds()
        with server.channel() as channel:
            sign = channel.unary_unary(SIGN)
            for _, body in bodies:
                sign(body, timeout=30)
        after = server.stage_seconds()
    finally:
        server.stop()
    counted = {stage: after[stage][1] - before.get(stage, (0.0, 0))[1] for stage in after}
    # One policy check, one HSM call and one commit per Sign: no stage missed, none twice.
    assert counted == {"policy": SIGNS, "hsm": SIGNS, "audit_commit": SIGNS}
    means = stage_means(before, after)
    assert set(means) == {"policy", "hsm", "audit_commit"}
    assert all(0 < us < 30e6 for us in means.values()), means
