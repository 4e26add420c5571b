"""An independent log written in Go gets cosignatures from our witness and verifies them itself.

tests/witness/gocheck_witness/main.go signs its checkpoints with Go's
golang.org/x/mod/sumdb/note, proves consistency with x/mod's tlog, speaks
tlog-witness over HTTP, and checks each cosignature/v1 with its own code
written from c2sp.org/tlog-cosignature (sharing none with the Python).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import build_go_checker
from tests.witness.conftest import make_witness
from tuf_signer.audit._checkpoint import open_checkpoint
from tuf_signer.audit._note import parse_verifier_key

ORIGIN = "go.test/log"


@pytest.fixture(scope="module")
def go_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_go_checker(
        Path(__file__).with_name("gocheck_witness"),
        tmp_path_factory.mktemp("gocheck_witness"),
        "golang.org/x/mod/sumdb/tlog",
        "Go's x/mod note and tlog play an independent log",
    )


def _go(binary: Path, *args: str, stdin: bytes | None = None) -> dict[str, object]:
    done = subprocess.run(
        [str(binary), *args], input=stdin, capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr.decode()
    answer: dict[str, object] = json.loads(done.stdout)
    return answer


def test_a_go_log_is_cosigned_and_verifies_the_cosignatures(go_log: Path, tmp_path: Path) -> None:
    keys = _go(go_log, "genkey", ORIGIN)
    log_vkey = str(keys["vkey"])
    w = make_witness(tmp_path / "w", [], extra_vkeys=[(ORIGIN, log_vkey)])
    w.start()
    try:
        config = {
            "url": w.url,
            "origin": ORIGIN,
            "skey": keys["skey"],
            "witness_vkey": w.vkey.text(),
        }
        report = _go(go_log, "run", stdin=json.dumps(config).encode())
        steps = report["steps"]
        assert isinstance(steps, list)
        assert [(s["name"], s["status"], s["ok"], s.get("detail", "")) for s in steps] == [
            ("first", 200, True, ""),
            ("extend", 200, True, ""),
            ("conflict", 409, True, ""),
            ("bad-proof", 422, True, ""),
            ("other-key", 403, True, ""),
            ("monitor", 200, True, ""),
            ("extend-again", 200, True, ""),
        ]
        # What Go left with the witness reads the same way here.
        signed = open_checkpoint(
            w.latest(ORIGIN).body,
            origin=ORIGIN,
            log_key=parse_verifier_key(log_vkey),
            cosigners=[w.vkey],
            quorum=1,
        )
        assert signed.checkpoint.size == 20
    finally:
        w.stop()
