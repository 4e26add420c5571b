"""Drive a service with the Go load generator (``bench/loadgen``) or with h2load.

Why a generator of our own: h2load (nghttp2-client) is a C HTTP/2 generator
that speaks gRPC framing, but it sends one request body for every request.
tuf-signer answers an identical Sign as an idempotent replay (no HSM, no
policy), so h2load can measure the echo ceiling and the replay path, not
signing. ``bench/loadgen`` is a small Go program on Debian's grpc-go
(the library ghz is built on) that sends a file of distinct, pre-serialised
request bodies with a pass-through codec: it builds and parses no protobuf on
the hot path and reports latency percentiles, status codes, per-item SignBatch
outcomes and its own CPU time. On the 2-vCPU bench box it spends ~90 µs of CPU
per call, twice h2load's ~45 µs and a third of the echo server's ~270 µs, so
against the echo ceiling it gets within ~10-20% of h2load's rate (``figures.w2``).
"""

from __future__ import annotations

import dataclasses
import json
import re
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench._procs import BenchError, Service

SIGN = "/tuf_signer.v1.Signer/Sign"
SIGN_BATCH = "/tuf_signer.v1.Signer/SignBatch"
GET_PUBLIC_KEYS = "/tuf_signer.v1.Signer/GetPublicKeys"
NOTARY_SIGN = "/proto.Signer/Sign"
_GRACE = 120.0  # seconds an h2load run may take beyond its duration
_UNTIMED_BOUND = 1800.0  # seconds a phase that sends every record (no duration) may take


@dataclasses.dataclass
class Phase:
    """One phase of a loadgen run; phases run one after another on the same connections.

    Attributes:
        name: a label for the results.
        records: (method index, serialised request) in sending order.
        methods: gRPC method paths the indexes refer to.
        concurrency: calls in flight (closed loop), or at most in flight (rate).
        rate: requests per second, open loop; 0 for closed loop.
        duration: stop issuing after this many seconds; 0 to send every record.
        warmup: records sent first and left out of the figures.
        batch: responses are SignBatchResponse; count items and item failures.
        timeline: report every measured completion as ``[seconds after the
            phase's start, items signed]``, sorted by time (``steady_rate``).
    """

    name: str
    records: Iterable[tuple[int, bytes]]
    methods: list[str]
    concurrency: int = 1
    rate: float = 0.0
    duration: float = 0.0
    warmup: int = 0
    batch: bool = False
    timeline: bool = False


def _write_records(path: Path, records: Iterable[tuple[int, bytes]]) -> tuple[int, int]:
    count = size = 0
    with open(path, "wb", buffering=1 << 20) as f:
        for method, body in records:
            f.write(struct.pack("<BI", method, len(body)))
            f.write(body)
            count += 1
            size += len(body)
    return count, size


def run_loadgen(
    loadgen: Path,
    service: Service,
    phases: list[Phase],
    *,
    conns: int = 1,
    workdir: Path,
) -> dict[str, Any]:
    """Run ``phases`` against ``service``; return loadgen's results plus server CPU.

    ``server_cpu_s`` is the CPU the service's process tree used during the
    whole run, warm-up included (so divide by ``handled``, which counts the
    warm-up requests too).

    Raises:
        BenchError: loadgen failed or ran past its time bound.
    """
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        specs, counts = [], []
        for i, phase in enumerate(phases):
            path = Path(tmp) / f"phase-{i}.bin"
            count, size = _write_records(path, phase.records)
            counts.append((count, size))
            specs.append(
                {
                    "name": phase.name,
                    "file": str(path),
                    "methods": phase.methods,
                    "concurrency": phase.concurrency,
                    "rate": phase.rate,
                    "duration": phase.duration,
                    "warmup": phase.warmup,
                    "batch": phase.batch,
                    "timeline": phase.timeline,
                    # seconds; loadgen bounds the whole phase by duration + timeout
                    "timeout": 120 if phase.duration > 0 else _UNTIMED_BOUND,
                }
            )
        spec = {
            "target": service.address,
            "tls": service.tls.spec() if service.tls is not None else None,
            "conns": conns,
            "phases": specs,
        }
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        bound = sum(p.duration + 120 if p.duration > 0 else _UNTIMED_BOUND for p in phases)
        cpu0, wall0 = service.cpu(), time.monotonic()
        try:
            done = subprocess.run(
                [str(loadgen), str(spec_path)],
                capture_output=True,
                text=True,
                timeout=bound,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise BenchError(f"loadgen ran past {bound:.0f} s against {service.name}") from e
        cpu1, wall1 = service.cpu(), time.monotonic()
    if done.returncode != 0:
        raise BenchError(f"loadgen failed against {service.name}: {done.stderr.strip()[-2000:]}")
    out: dict[str, Any] = json.loads(done.stdout)
    for phase, spec_phase, (count, size) in zip(phases, out["phases"], counts, strict=True):
        spec_phase["records"] = count
        spec_phase["bytes_written"] = size
        spec_phase["warmup"] = min(phase.warmup, count)
        spec_phase["concurrency"] = phase.concurrency
    out["server_cpu_s"] = cpu1 - cpu0
    out["wall_s"] = wall1 - wall0
    out["conns"] = conns
    return out


# The part of a phase's items over which ``steady_rate`` measures: the start
# (connections, first calls, a pipeline filling) and the tail (the last calls
# finishing one by one) are left out, the same way on every side.
STEADY = (0.1, 0.9)


def steady_rate(phase: dict[str, Any]) -> float:
    """Items per second of a phase run with ``timeline``, in its steady state.

    From the completion that brings the phase past 10% of its items to the one
    that brings it past 90%. A phase too short to have a steady state (under
    four completions) gives its plain rate.
    """
    timeline = phase.get("timeline") or []
    total = sum(n for _, n in timeline)
    plain = float(phase["items_rate"] or phase["rate"])
    if len(timeline) < 4 or total <= 0:
        return plain
    lo, hi = STEADY[0] * total, STEADY[1] * total
    done = 0.0
    first: tuple[float, float] | None = None
    for t, n in timeline:
        done += n
        if first is None and done >= lo:
            first = (t, done)
        if done >= hi:
            assert first is not None
            if t > first[0]:
                return float(done - first[1]) / float(t - first[0])
            break
    return plain


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message (uncompressed), as it goes in an HTTP/2 DATA frame."""
    return struct.pack(">BI", 0, len(message)) + message


def run_h2load(
    service: Service,
    method: str,
    message: bytes,
    *,
    requests: int,
    conns: int,
    streams: int,
    workdir: Path,
    duration: float = 0.0,
) -> dict[str, Any]:
    """h2load against a plaintext gRPC service: one body for every request.

    Raises:
        BenchError: h2load is missing, failed, or printed no rate.
    """
    if service.tls is not None:
        raise BenchError("the h2load runs are plaintext only")
    with tempfile.NamedTemporaryFile(dir=workdir, suffix=".grpc") as body:
        body.write(grpc_frame(message))
        body.flush()
        argv = [
            "h2load",
            f"-c{conns}",
            f"-m{streams}",
            "-t1",
            "-d",
            body.name,
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
        ]
        argv += [f"-D{duration:g}"] if duration > 0 else [f"-n{requests}"]
        argv.append(f"http://{service.address}{method}")
        cpu0 = service.cpu()
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=duration + _GRACE, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise BenchError(f"h2load: {e}") from e
        cpu1 = service.cpu()
    text = done.stdout
    rate = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", text)
    reqs = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded", text)
    if done.returncode != 0 or rate is None or reqs is None:
        raise BenchError(f"h2load failed: {(done.stderr or text).strip()[-1000:]}")
    seconds = float(rate.group(1)) / (1000 if rate.group(2) == "ms" else 1)
    succeeded = int(reqs.group(4))
    return {
        "rate": float(rate.group(3)),
        "elapsed_s": seconds,
        "succeeded": succeeded,
        "server_cpu_s": cpu1 - cpu0,
        "server_cpu_us_per_request": 1e6 * (cpu1 - cpu0) / max(succeeded, 1),
        "in_flight": conns * streams,
    }
