"""Issue 15, "done when": a Prometheus scrape of a real signer with two workers.

``tuf-signer serve`` with ``server.workers = 2`` and ``--log-format json``:
real signing traffic reaches both workers, every scrape of the ops port (each
a new connection, landing on either worker) shows the same sums, the
kubelet-style probes answer there in plaintext while the gRPC port refuses a
client without a certificate, and the freshness watch records ONE warning for
roles about to expire, however many workers and ticks.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.cli.conftest import CLI, _env, children, credentials, run, wait_healthy
from tests.conftest import free_port
from tests.server.conftest import Clock, Payloads
from tuf_signer.audit import SqliteAuditStore
from tuf_signer.policy import PEP458_BINS, bin_name
from tuf_signer.v1 import signer_pb2 as pb
from tuf_signer.v1 import signer_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow

# gRPC's C core (absl) logs past Python: "I1201 17:57:05.252113   16659 file.cc:2563] ...".
GRPC_CORE_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [\w.]+:\d+\] ")


@dataclass
class Signer:
    directory: Path
    address: str
    ops: int
    proc: subprocess.Popen[bytes]
    stderr: Path
    tmp: Path

    def scrape(self) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        """One scrape of ``/metrics``, parsed: sample name -> labels -> value."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ops}/metrics", timeout=5) as r:
            text = r.read().decode()
        out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
        return out

    def signed(self, role_class: str = "bins") -> float:
        rows = self.scrape().get("tuf_signer_sign_requests_total", {})
        return sum(
            v
            for k, v in rows.items()
            if dict(k)["role_class"] == role_class and dict(k)["status"] == "OK"
        )

    def signers(self) -> set[int]:
        """The workers whose request lines say they signed (``--log-format json``)."""
        lines = self.stderr.read_text().split("\n")[:-1]  # whole lines only
        return {
            r["worker"]
            for r in (json.loads(line) for line in lines if not GRPC_CORE_LINE.match(line))
            if r["logger"] == "tuf_signer.requests.granted" and r.get("status") == "OK"
        }

    def metrics_dir(self) -> Path:
        (found,) = list(self.tmp.glob("tuf-signer-metrics-*"))
        return found


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code


@contextlib.contextmanager
def _signer(tmp_path: Path) -> Iterator[Signer]:
    directory = tmp_path / "dev"
    address, ops = f"127.0.0.1:{free_port()}", free_port()
    config = Path(
        run(
            "dev-init", str(directory), "--listen", address, "--ops-listen", f"127.0.0.1:{ops}"
        ).stdout.strip()
    )
    text = config.read_text().replace("[server]\n", "[server]\nworkers = 2\n", 1)
    settings = '[ops]\nfreshness_interval_seconds = 0.5\nrequest_log = "all"\n'
    config.write_text(text.replace("[ops]\n", settings, 1))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    stderr = tmp_path / "stderr.log"
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            [*CLI, "--log-format", "json", "serve", "--config", str(config)],
            env={**_env(), "TMPDIR": str(tmp)},
            stderr=err,
        )
    workers: list[int] = []
    try:
        proc.stderr = stderr.open("rb")  # for wait_healthy's message
        wait_healthy(address, proc, credentials(directory, "backend"))
        workers = children(proc.pid)
        assert len(workers) == 2
        yield Signer(directory, address, ops, proc, stderr, tmp)
    finally:
        with contextlib.suppress(FileNotFoundError):
            workers += children(proc.pid)
        for pid in [proc.pid, *workers]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _sign_bins(s: Signer, first: int, n: int) -> None:
    """Sign ``n`` empty bins, each over a new connection (the kernel spreads them)."""
    payloads = Payloads(Clock())
    for i in range(first, first + n):
        role = bin_name(PEP458_BINS, i)
        with grpc.secure_channel(s.address, credentials(s.directory, "backend")) as channel:
            pb_grpc.SignerStub(channel).Sign(
                pb.SignRequest(key="online", role=role, payload=payloads.targets(1, n_targets=0)),
                timeout=30,
            )


def _wait(condition: object, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_a_scrape_of_two_workers_shows_all_their_traffic(tmp_path: Path) -> None:
    with _signer(tmp_path) as s:
        _wait(lambda: _status(f"http://127.0.0.1:{s.ops}/readyz") == 200)
        workers = children(s.proc.pid)
        metrics = s.metrics_dir()
        # Until both workers have counted a Sign (new connections spread over them):
        # each Sign's request line names its worker. (A worker's counter file is no
        # sign of it: its first TLS handshake, the health check's, writes one too.)
        signed = 0
        while s.signers() != {0, 1}:
            assert signed < 60, "the kernel never sent a connection to one worker"
            _sign_bins(s, signed, 4)
            signed += 4
        # Every scrape (a new connection, to either worker) sums both workers.
        for _ in range(8):
            assert s.signed() == signed
        # The key-version gauges are set by the freshness watch's first tick,
        # one interval after start.
        _wait(lambda: "tuf_signer_key_versions" in s.scrape())
        first = s.scrape()
        assert first["tuf_signer_serving"] == {(): 1.0}
        assert first["tuf_signer_key_versions"][(("state", "active"),)] >= 1
        stages = first["tuf_signer_sign_stage_seconds_count"]
        assert stages[(("stage", "hsm"),)] >= signed

        # The probes, in plaintext on the ops port; the gRPC port wants a certificate.
        with grpc.insecure_channel(f"127.0.0.1:{s.ops}") as ops:
            answer = health_pb2_grpc.HealthStub(ops).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        assert _status(f"http://127.0.0.1:{s.ops}/healthz") == 200
        no_cert = grpc.ssl_channel_credentials((s.directory / "tls" / "ca.crt").read_bytes())
        with grpc.secure_channel(s.address, no_cert) as anonymous:
            with pytest.raises(grpc.RpcError) as refused:
                health_pb2_grpc.HealthStub(anonymous).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

        # The freshness watch: the bins expire within the margin (1 h < 6 h).
        _wait(
            lambda: (
                ((("key", "online"), ("role", "bins")))
                in s.scrape().get("tuf_signer_role_expiry_seconds", {})
            )
        )
        left = s.scrape()["tuf_signer_role_expiry_seconds"][(("key", "online"), ("role", "bins"))]
        assert 3000 < left <= 3600
        time.sleep(2)  # several ticks of both workers
        store = SqliteAuditStore(s.directory / "audit.db")
        try:
            warnings = [r.event for r in store.records() if r.event.operation == "expiry-warning"]
        finally:
            store.close()
        assert len(warnings) == 1, warnings
        assert (warnings[0].key_name, warnings[0].metadata_version) == ("online", 1)
        assert warnings[0].role.startswith("bins-")

        # A worker killed: the supervisor restarts it; its counts stay in the sums,
        # its live gauges go.
        victim = workers[0]
        os.kill(victim, signal.SIGKILL)
        _wait(lambda: len(children(s.proc.pid)) == 2 and victim not in children(s.proc.pid))
        _wait(lambda: not (metrics / f"gauge_livemin_{victim}.db").exists())
        (new,) = set(children(s.proc.pid)) - set(workers)
        _wait(lambda: (metrics / f"gauge_livemin_{new}.db").exists())  # it has started
        _wait(lambda: _status(f"http://127.0.0.1:{s.ops}/readyz") == 200)
        assert s.signed() == signed
        assert s.scrape()["tuf_signer_serving"] == {(): 1.0}

        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(timeout=60) == 0
        assert not metrics.exists(), "the supervisor left its metrics directory"

    # One JSON object per line, with the request fields of the freshness warning.
    # (gRPC's C core writes its own lines, such as the refused handshake above,
    # past Python's logging: they are not ours to format.)
    lines = s.stderr.read_text().splitlines()
    records = [json.loads(line) for line in lines if not GRPC_CORE_LINE.match(line)]
    assert len(records) > len(lines) / 2
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    (warning,) = [r for r in records if r["logger"] == "tuf_signer.server._freshness"]
    assert (warning["level"], warning["key"], warning["role"]) == (
        "WARNING",
        "online",
        warning["role"],
    )
    assert warning["role"].startswith("bins-") and warning["worker"] == 0
    pin = (s.directory / "hsm.pin").read_text().strip()
    assert pin not in s.stderr.read_text()
