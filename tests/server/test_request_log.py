"""One request line per decision (issue 15, item 4), from a real ``tuf-signer serve``.

``--log-format json`` and ``ops.request_log = "all"``: a signed Sign, a
refused Sign, a SignBatch and a KeyAdmin call each write one INFO line on a
``tuf_signer.requests.*`` logger with the request fields, and its
``audit_seq`` is the seq of that request's record, read back through the audit
log. A client string cannot forge a line; no PIN or payload appears.
``ops.request_log`` picks the lines: ``all``, ``refused`` (the default) or
``none``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.cli.conftest import CLI, _env, credentials, run, wait_healthy
from tests.conftest import free_port
from tests.server.conftest import Clock, Payloads, write_config
from tuf_signer._logs import JsonFormatter
from tuf_signer.audit import AuditRecord, SqliteAuditStore
from tuf_signer.config import load_config
from tuf_signer.errors import ConfigError
from tuf_signer.policy import PEP458_BINS, bin_name
from tuf_signer.v1 import signer_pb2 as pb
from tuf_signer.v1 import signer_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow

# gRPC's C core (absl) logs past Python: "I1201 17:57:05.252113   16659 file.cc:2563] ...".
GRPC_CORE_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [\w.]+:\d+\] ")
REQUESTS = "tuf_signer.requests"
BACKEND = "uri:spiffe://tuf-signer.dev/backend"
ADMIN = "uri:spiffe://tuf-signer.dev/admin"


@dataclass
class Served:
    directory: Path
    address: str
    proc: subprocess.Popen[bytes]
    stderr: Path

    def channel(self, client: str) -> grpc.Channel:
        return grpc.secure_channel(self.address, credentials(self.directory, client))

    def lines(self) -> list[dict[str, Any]]:
        """Every whole line of ours, parsed (each must be one JSON object)."""
        text = self.stderr.read_text()
        return [
            json.loads(line)
            for line in text.split("\n")[:-1]  # a line being written is not whole yet
            if not GRPC_CORE_LINE.match(line)
        ]

    def requests(self) -> list[dict[str, Any]]:
        return [r for r in self.lines() if r["logger"].startswith(REQUESTS + ".")]

    def records(self) -> dict[int, AuditRecord]:
        store = SqliteAuditStore(self.directory / "audit.db")
        try:
            return {r.seq: r for r in store.records()}
        finally:
            store.close()


@contextlib.contextmanager
def _served(tmp_path: Path, ops: str = "") -> Iterator[Served]:
    directory = tmp_path / "dev"
    address = f"127.0.0.1:{free_port()}"
    config = Path(run("dev-init", str(directory), "--listen", address).stdout.strip())
    if ops:
        config.write_text(config.read_text().replace("[ops]\n", f"[ops]\n{ops}\n", 1))
    stderr = tmp_path / "stderr.log"
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            [*CLI, "--log-format", "json", "serve", "--config", str(config)],
            env=_env(),
            stderr=err,
        )
    try:
        proc.stderr = stderr.open("rb")  # for wait_healthy's message
        wait_healthy(address, proc, credentials(directory, "backend"))
        yield Served(directory, address, proc, stderr)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def _wait_lines(s: Served, n: int) -> list[dict[str, Any]]:
    """The request lines once there are ``n`` (each is written before its call answers,
    but the admin's rotate-key line is the last: wait for it rather than race it)."""
    deadline = time.monotonic() + 10
    while len(found := s.requests()) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def test_each_decision_is_one_line_with_its_record(tmp_path: Path) -> None:
    payloads = Payloads(Clock())
    with _served(tmp_path, 'request_log = "all"') as s:
        with s.channel("backend") as channel:
            signer = pb_grpc.SignerStub(channel)
            signed = signer.Sign(
                pb.SignRequest(
                    key="online",
                    role=bin_name(PEP458_BINS, 1),
                    payload=payloads.targets(1, n_targets=0),
                ),
                timeout=30,
            )
            with pytest.raises(grpc.RpcError) as refused:
                # A key name with a newline: it must not forge a line of its own.
                signer.Sign(
                    pb.SignRequest(key="online", role="timestamp", payload=b"not json\n{}"),
                    timeout=30,
                )
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(grpc.RpcError) as forged:
                signer.Sign(
                    pb.SignRequest(key='x\n{"level":"INFO"}', role="timestamp", payload=b"{}"),
                    timeout=30,
                )
            batch = signer.SignBatch(
                pb.SignBatchRequest(
                    requests=[
                        pb.SignRequest(
                            key="online",
                            role=bin_name(PEP458_BINS, i),
                            payload=payloads.targets(1, n_targets=0),
                        )
                        for i in (2, 3)
                    ]
                    + [pb.SignRequest(key="online", role="snapshot", payload=b"[]")]
                ),
                timeout=30,
            )
        with s.channel("admin") as channel:
            rotated = pb_grpc.KeyAdminStub(channel).RotateKey(
                pb.RotateKeyRequest(key="online"), timeout=30
            )

        lines = _wait_lines(s, 5)
        records = s.records()
        pin = (s.directory / "hsm.pin").read_text().strip()
        text = s.stderr.read_text()

    assert all(r["level"] == "INFO" for r in lines)
    sign_ok, sign_refused, sign_forged, batch_line, admin_line = lines

    # The signed Sign: its fields, and its record is the one the client got.
    assert sign_ok["audit_seq"] == signed.audit_seq
    assert {k: sign_ok[k] for k in ("operation", "identity", "key", "role", "status")} == {
        "operation": "sign",
        "identity": BACKEND,
        "key": "online",
        "role": bin_name(PEP458_BINS, 1),
        "status": "OK",
    }
    record = records[sign_ok["audit_seq"]].event
    assert (record.operation, record.outcome.value, record.role) == (
        "sign",
        "granted",
        bin_name(PEP458_BINS, 1),
    )

    # The refused Sign: its status, and the seq of its refused record.
    assert (sign_refused["status"], sign_refused["key"], sign_refused["role"]) == (
        "INVALID_ARGUMENT",
        "online",
        "timestamp",
    )
    record = records[sign_refused["audit_seq"]].event
    assert (record.operation, record.outcome.value, record.status, record.identity) == (
        "sign",
        "refused",
        "INVALID_ARGUMENT",
        BACKEND,
    )
    assert sign_refused["audit_seq"] > signed.audit_seq

    # The hostile key name stays inside its own line (JSON escapes it).
    assert sign_forged["status"] == forged.value.code().name
    assert sign_forged["key"].startswith("x") and "{" in sign_forged["key"]
    assert records[sign_forged["audit_seq"]].event.status == forged.value.code().name

    # The SignBatch: one line, items by status, the first and last item records.
    assert [r.response.audit_seq for r in batch.results if r.code == 0] == [
        batch_line["first_audit_seq"],
        batch_line["first_audit_seq"] + 1,
    ]
    assert batch_line["operation"] == "sign-batch" and batch_line["key"] == "online"
    assert batch_line["statuses"] == {"OK": 2, "INVALID_ARGUMENT": 1}
    assert batch_line["last_audit_seq"] == batch_line["first_audit_seq"] + 2
    first, last = batch_line["first_audit_seq"], batch_line["last_audit_seq"]
    items = [records[q].event for q in range(first, last + 1)]
    assert [(e.operation, e.status) for e in items] == [
        ("sign", "OK"),
        ("sign", "OK"),
        ("sign", "INVALID_ARGUMENT"),
    ]

    # The KeyAdmin call: its record is the one the admin got.
    assert (admin_line["operation"], admin_line["identity"], admin_line["key"]) == (
        "rotate-key",
        ADMIN,
        "online",
    )
    assert admin_line["audit_seq"] == rotated.audit_seq
    assert records[rotated.audit_seq].event.operation == "rotate-key"

    # Never a PIN, never a payload's bytes.
    assert pin not in text
    assert "not json" not in text


@pytest.mark.parametrize(
    ("setting", "loggers"),
    [
        ("", {"tuf_signer.requests.refused"}),  # the default: refusals only
        ('request_log = "none"', set()),
    ],
    ids=["default-refused", "none"],
)
def test_ops_request_log_picks_the_lines(tmp_path: Path, setting: str, loggers: set[str]) -> None:
    payloads = Payloads(Clock())
    with _served(tmp_path, setting) as s:
        with s.channel("backend") as channel:
            signer = pb_grpc.SignerStub(channel)
            signer.Sign(
                pb.SignRequest(
                    key="online",
                    role=bin_name(PEP458_BINS, 1),
                    payload=payloads.targets(1, n_targets=0),
                ),
                timeout=30,
            )
            with pytest.raises(grpc.RpcError):
                signer.Sign(
                    pb.SignRequest(key="online", role="timestamp", payload=b"[]"), timeout=30
                )
        refused = max(s.records())
        if loggers:
            _wait_lines(s, 1)
        lines = s.lines()
    assert lines, "the server logged nothing at all"
    found = [r for r in lines if r["logger"].startswith(REQUESTS)]
    assert {r["logger"] for r in found} == loggers
    if loggers:
        (line,) = found
        assert (line["status"], line["audit_seq"]) == ("INVALID_ARGUMENT", refused)


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("", "refused"),
        ('request_log = "all"', "all"),
        ('request_log = "none"', "none"),
        ('request_log = "granted"', ValueError("ops.request_log: expected all, refused or none")),
        ("request_log = true", ValueError("ops.request_log: expected")),
    ],
    ids=["default", "all", "none", "unknown", "boolean"],
)
def test_ops_request_log_is_one_of_three(
    tmp_path: Path, softhsm: Any, setting: str, expected: str | ValueError
) -> None:
    path = write_config(tmp_path, softhsm)
    path.write_text(path.read_text() + f"\n[ops]\n{setting}\n")
    if isinstance(expected, ValueError):
        with pytest.raises(ConfigError, match=str(expected)):
            load_config(path)
    else:
        assert load_config(path).ops.request_log == expected


@pytest.mark.parametrize(
    ("statuses", "copied"),
    [
        ({"OK": 2, "INVALID_ARGUMENT": 1}, True),
        ({"OK": "2"}, False),
        ({"OK": True}, False),
        ({1: 2}, False),
        ("OK=2", True),
    ],
    ids=["counts", "string-count", "bool-count", "int-key", "string"],
)
def test_only_status_counts_are_copied_into_json(statuses: object, copied: bool) -> None:
    """``statuses`` is copied as an object of counts, and nothing else that is not a
    string or an integer reaches the line (no repr of an object a caller passed)."""
    record = logging.LogRecord(REQUESTS, logging.INFO, __file__, 1, "batch", (), None)
    record.__dict__["statuses"] = statuses
    out = json.loads(JsonFormatter().format(record))
    assert ("statuses" in out) is copied
    if copied:
        assert out["statuses"] == statuses
