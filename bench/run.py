"""The tuf-signer benchmark harness: every figure next to its baseline, in one run.

The machine is shared and noisy, so no figure is compared with a number from
another day: each ratio's baseline is measured in the same invocation, right
before or after it (and, in the full run, interleaved twice, best of two).

Workloads (README "Performance" has the table and how to read it):

- W1 latency: timestamp Sign at concurrency 1 against the echo ceiling plus
  one raw HSM signature plus one fsync of the audit store's directory.
- W2 throughput: unary Sign of 512-byte bins, 64 in flight, against the echo
  ceiling driven by the same generator.
- W3 HSM efficiency: SignBatch (or, while it is UNIMPLEMENTED, concurrent
  unary Sign: marked) against raw python-pkcs11 loops, one process and all.
- W4 PEP 458 bulk: every bin (~54 KB each), then snapshot, then timestamp,
  ECDSA P-256, against securesystemslib's in-process HSMSigner, and against
  the echo ceiling (same stream, mutual TLS) plus raw loops; steady state.
- W5 peer: notary-signer, small unary and W4's bulk workload.
- W6 soak: mixed load at a fixed rate; RSS, errors, ``audit verify``.

Every workload must end without one failed call or item: the exit status is 1
otherwise (after the results are written).

Usage: ``python -m bench [--quick] [--only w1,w2,...] [--keep] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from bench import _payloads, _report
from bench._gen import (
    GET_PUBLIC_KEYS,
    NOTARY_SIGN,
    SIGN,
    SIGN_BATCH,
    Phase,
    run_h2load,
    run_loadgen,
    steady_rate,
)
from bench._procs import REPO, BenchError, Echo, Notary, Service, Tls, TufSigner
from bench._setup import Tools, prepare
from tuf_signer.v1 import signer_pb2 as pb
from tuf_signer.v1 import signer_pb2_grpc as pb_grpc

RESULTS = Path(__file__).resolve().parent / "results"
N_BINS = 1 << _payloads.BIN_BITS
BULK_BATCH_BYTES = 4 << 20  # a SignBatch message stays well under gRPC's 8 MiB default limit
BATCH_ITEMS = 256  # items per SignBatch (capped by server.max_batch_items when it exists)
W2_IN_FLIGHT = 64  # the figure
# W4: bins per SignBatch (~1.7 MB), and batches in flight per server worker (one
# per connection). The same in both modes, so the quick run's 2,048 bins make
# enough rounds (64 batches on 8 connections) for a steady state.
W4_BATCH_ITEMS = 32
W4_IN_FLIGHT_PER_WORKER = 4
W4_ROUNDS = 2  # interleaved rounds of W4 on each side, in both modes; the best of each
GUESS_RATE = 20_000  # requests/s: bodies prepared per second of a closed-loop phase
SOAK_LAG_S = 5.0  # W6: a snapshot lists, a timestamp names, only what was sent this long before
# (longer than any Sign takes in the soak: at 300/s the server runs near its
# limit here, and a full run's p99 reached 1.3 s, max 2.4 s; with 2,048 bins
# re-signed every ~6 s, a 1 s lag listed versions still in flight)
# W6 signs with ECDSA P-256, as PEP 458's bins do in W4. SoftHSM 2.6.1 (Debian's)
# leaks ~64 bytes on every Ed25519 C_SignInit (upstream's fix, SoftHSMv2 #863,
# is in no release yet): a soak with Ed25519 would measure the dev HSM's leak.
SOAK_KEY = "ec"
# W6's warm-up signs every bin this many times: each worker caches a bin's
# state once it has signed it, and a bin goes to either worker, so after k
# laps a worker has missed about 2**-k of the bins.
SOAK_WARM_LAPS = 8


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes and durations of one mode (seconds, counts)."""

    mode: str
    repeats: int  # interleaved repetitions of each side-by-side pair; best of them
    w1_requests: int
    phase_s: float  # one closed-loop throughput phase
    raw_s: float  # one raw python-pkcs11 loop
    w4_bins: int
    soak_s: float
    soak_rate: float  # requests/s, open loop
    sweep: tuple[int, ...]  # concurrency levels for the plot
    sweep_s: float
    h2load: bool


QUICK = Settings(
    mode="quick",
    repeats=1,
    w1_requests=300,
    phase_s=1.2,
    raw_s=0.8,
    w4_bins=2048,
    soak_s=20.0,
    soak_rate=200.0,
    sweep=(),
    sweep_s=0.0,
    h2load=False,
)
FULL = Settings(
    mode="full",
    repeats=2,
    w1_requests=2000,
    phase_s=6.0,
    raw_s=4.0,
    w4_bins=N_BINS,
    soak_s=300.0,
    soak_rate=300.0,
    sweep=(1, 4, 16, 64, 256),
    sweep_s=3.0,
    h2load=True,
)
WORKLOADS = ("w1", "w2", "w3", "w4", "w5", "w6")


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _nproc() -> int:
    return len(os.sched_getaffinity(0))


def machine_info() -> dict[str, Any]:
    """What the figures were measured on, and on which commit."""
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30, check=False
        )
        return done.stdout.strip()

    return {
        "nproc": _nproc(),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "loadavg_start": os.getloadavg(),
        "mem_total_mib": os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") >> 20,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "git_commit": git("rev-parse", "HEAD"),
        # The results files are this harness's own output: not a change to what is measured.
        "git_dirty": bool(
            git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results")
        ),
    }


FSYNC_SAMPLES = 200


def stage_means(
    before: dict[str, tuple[float, int]], after: dict[str, tuple[float, int]]
) -> dict[str, float]:
    """Mean µs per observation of each Sign stage between two ``stage_seconds`` reads."""
    means = {}
    for stage, (total, count) in after.items():
        total0, count0 = before.get(stage, (0.0, 0))
        if count > count0:
            means[stage] = 1e6 * (total - total0) / (count - count0)
    return means


def fsync_us(directory: Path, samples: int = FSYNC_SAMPLES) -> dict[str, float]:
    """What durability costs in ``directory`` (the audit store's), µs at p50.

    ``dir_fsync``: one fsync of the directory itself, as issue 16 defines W1's
    floor. ``page_fdatasync``: rewrite one 4 KiB page of a preallocated file
    there in place and fdatasync it, the least a commit to SQLite's WAL (which
    reuses its file) does; recorded, not in the floor. The file is removed.
    """
    page = b"\0" * 4096
    scratch = directory / f".bench-fsync-{os.getpid()}"
    dirs: list[int] = []
    pages: list[int] = []
    fd = os.open(scratch, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.pwrite(fd, page, 0)
        os.fsync(fd)
        os.fsync(dir_fd)
        for _ in range(samples):
            t0 = time.perf_counter_ns()
            os.fsync(dir_fd)
            t1 = time.perf_counter_ns()
            os.pwrite(fd, page, 0)
            os.fdatasync(fd)
            pages.append(time.perf_counter_ns() - t1)
            dirs.append(t1 - t0)
    finally:
        os.close(fd)
        os.close(dir_fd)
        scratch.unlink()
    return {
        "samples": samples,
        "dir_fsync_p50_us": statistics.median(dirs) / 1000,
        "page_fdatasync_p50_us": statistics.median(pages) / 1000,
    }


# --- request bodies ------------------------------------------------------------------


def _sign(key: str, keyid: str, role: str, payload: bytes) -> pb.SignRequest:
    return pb.SignRequest(key=key, role=role, payload=payload, expected_keyid=keyid)


def sign_snapshot(server: TufSigner, key: str, listed: dict[int, int]) -> int:
    """Sign one snapshot listing ``listed`` (bin -> version) with ``key``; its version.

    A key whose rules allow snapshots signs a timestamp only for a snapshot
    it signed (issue 14), so timestamps need one first.

    Raises:
        BenchError: the signer refused it.
    """
    version = server.take_versions(1)
    payload = _payloads.snapshot(version, listed, _payloads.expires())
    request = _sign(key, server.keyids[key], "snapshot", payload)
    with server.channel() as channel:
        try:
            pb_grpc.SignerStub(channel).Sign(request, timeout=60)
        except grpc.RpcError as e:
            raise BenchError(f"snapshot refused: {e.code().name}: {e.details()}") from e
    return version


def timestamps(
    server: TufSigner, key: str, n: int, snapshot_version: int
) -> list[tuple[int, bytes]]:
    """``n`` timestamp Signs naming ``snapshot_version``, with increasing versions.

    Send them in order, one at a time.
    """
    exp, base = _payloads.expires(), server.take_versions(n)
    keyid = server.keyids[key]
    return [
        (
            0,
            _sign(
                key, keyid, "timestamp", _payloads.timestamp(base + i, snapshot_version, exp)
            ).SerializeToString(),
        )
        for i in range(n)
    ]


def small_signs(server: TufSigner, key: str, n: int) -> list[pb.SignRequest]:
    """``n`` distinct 512-byte bin Signs: (bin, version) pairs never repeat.

    Request ``i`` signs bin ``i mod 16384``, so one bin's successive versions
    are 16,384 requests apart and never in flight together.
    """
    exp, base = _payloads.expires(), server.take_versions(n // N_BINS + 1)
    keyid = server.keyids[key]
    return [
        _sign(
            key,
            keyid,
            _payloads.bin_name(i),
            _payloads.small_bin(i, base + i // N_BINS, exp),
        )
        for i in range(n)
    ]


def _bulk_seconds(phases: list[dict[str, Any]], n: int) -> tuple[float, float]:
    """A bulk re-sign's time in steady state, and its bins/s: W4's bins phase, then its tail.

    ``n`` bins at the bins phase's ``steady_rate``, plus each later phase's
    time (the snapshot and the timestamp, one call each).
    """
    rate = steady_rate(phases[0])
    return n / rate + sum(p["elapsed_s"] for p in phases[1:]), rate


def _side(result: dict[str, Any], n: int, *, api: str) -> dict[str, Any]:
    """One side's figures from one W4 round (``_bulk_seconds``), timelines dropped."""
    phases = result["phases"]
    seconds, rate = _bulk_seconds(phases, n)
    return {
        "s": seconds,
        "rate": rate,
        "api": api,
        "timed_wall_s": phases[-1]["end_unix"] - phases[0]["start_unix"],
        "server_cpu_s": result["server_cpu_s"],
        "server_cpu_us_per_signature": 1e6 * result["server_cpu_s"] / (n + 2),
        "phases": [{k: v for k, v in p.items() if k != "timeline"} for p in phases],
    }


def unary(requests: list[pb.SignRequest], method: int = 0) -> list[tuple[int, bytes]]:
    return [(method, r.SerializeToString()) for r in requests]


def batches(
    requests: list[pb.SignRequest], items: int, max_bytes: int = BULK_BATCH_BYTES
) -> list[tuple[int, bytes]]:
    """SignBatch bodies of at most ``items`` requests and about ``max_bytes`` each."""
    out: list[tuple[int, bytes]] = []
    chunk: list[pb.SignRequest] = []
    size = 0
    for r in requests:
        if chunk and (len(chunk) >= items or size + len(r.payload) > max_bytes):
            out.append((0, pb.SignBatchRequest(requests=chunk).SerializeToString()))
            chunk, size = [], 0
        chunk.append(r)
        size += len(r.payload)
    if chunk:
        out.append((0, pb.SignBatchRequest(requests=chunk).SerializeToString()))
    return out


# --- the harness ---------------------------------------------------------------------


class Bench:
    """One invocation: starts services, runs the selected workloads, gathers results."""

    def __init__(self, settings: Settings, tools: Tools, workdir: Path, only: set[str]) -> None:
        self.s = settings
        self.tools = tools
        self.workdir = workdir
        self.only = only
        self.nproc = _nproc()
        self.keys: dict[str, float | None] = {}
        self.notes: dict[str, str] = {}
        self.errors: dict[str, list[str]] = {}
        self.figures: dict[str, Any] = {}
        self.skipped: dict[str, str] = dict(tools.skipped)
        self.sweep: dict[str, dict[int, float]] = {}
        self._services: list[Service] = []
        self.batch_api: bool | None = None
        self.batch_items = BATCH_ITEMS

    # --- plumbing ---------------------------------------------------------------------

    def _dir(self, name: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.workdir))
        return path

    def signer(self, *, tls: bool = False, workers: int = 1, keys: dict[str, int] | None = None):
        server = TufSigner(self._dir("signer"), tls=tls, workers=workers)
        self._services.append(server)
        server.start(keys)
        if self.batch_api is None:
            self.batch_api = server.sign_batch_implemented()
            cap = server.features.max_batch_items
            self.batch_items = min(BATCH_ITEMS, cap) if cap else BATCH_ITEMS
            _log(
                f"server: SignBatch {'implemented' if self.batch_api else 'UNIMPLEMENTED'}; "
                f"server.workers {'supported' if server.features.workers else 'not supported'}"
            )
        return server

    def echo(self, processes: int, tls: Tls | None = None) -> Echo:
        echo = Echo(self._dir("echo"), processes, tls)
        self._services.append(echo)
        return echo.start()

    def stop(self, service: Service) -> list[int | None]:
        codes = service.stop()
        if service.orphans:
            self.errors.setdefault("shutdown", []).append(
                f"{service.name}: processes {service.orphans} outlived SIGTERM by 5 s (killed)"
            )
        if service in self._services:
            self._services.remove(service)
        return codes

    def stop_all(self) -> None:
        for service in list(self._services):
            self.stop(service)

    def workers(self, server: TufSigner) -> int:
        return server.workers

    def loadgen(self, service: Service, phases: list[Phase], conns: int = 1) -> dict[str, Any]:
        if self.tools.loadgen is None:
            raise BenchError(f"no load generator: {self.skipped.get('loadgen')}")
        result = run_loadgen(self.tools.loadgen, service, phases, conns=conns, workdir=self.workdir)
        handled = sum(p["ok"] + p["errors"] + p["warmup"] for p in result["phases"])
        result["handled"] = handled
        result["server_cpu_us_per_request"] = 1e6 * result["server_cpu_s"] / max(handled, 1)
        gen_cpu = result["cpu_user_s"] + result["cpu_sys_s"]
        result["gen_cpu_us_per_request"] = 1e6 * gen_cpu / max(handled, 1)
        return result

    def _check(self, workload: str, result: dict[str, Any]) -> None:
        """Record every failed call or item of ``result``, its warm-up included."""
        for p in result["phases"]:
            if p["errors"] or p["item_errors"]:
                self.errors.setdefault(workload, []).append(
                    f"{p['name']}: {p['errors']} failed calls, {p['item_errors']} failed items; "
                    f"{p['samples'][:2]}"
                )
            if p.get("warmup_errors") or p.get("warmup_item_errors"):
                self.errors.setdefault(workload, []).append(
                    f"{p['name']} warm-up: {p['warmup_errors']} failed calls, "
                    f"{p['warmup_item_errors']} failed items; {p['warmup_samples'][:2]}"
                )

    def raw(
        self,
        server: TufSigner,
        processes: int,
        *,
        algorithm: str = "ed25519",
        payload: str = "small",
        duration: float = 0.0,
        count: int,
        bins: int = 0,
        per_sign: bool = False,
    ) -> dict[str, Any]:
        """``processes`` raw python-pkcs11 loops at once on ``server``'s token."""
        hsm = server.hsm
        argv = [
            sys.executable,
            "-m",
            "bench.hsm_baselines",
            "raw",
            "--module",
            str(hsm.module),
            "--label",
            hsm.label,
            "--pin-file",
            str(hsm.pin_file),
            "--algorithm",
            algorithm,
            "--payload",
            payload,
            "--duration",
            str(duration),
            "--bins",
            str(bins),
        ]
        if per_sign:
            argv.append("--per-sign")
        share = -(-count // processes)
        procs = []
        for k in range(processes):
            extra = ["--start", str(k * share), "--stop", str(min(count, (k + 1) * share))]
            if payload == "bulk" and k == 0:
                extra.append("--with-tail")
            procs.append(
                subprocess.Popen(
                    [*argv, *extra],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    cwd=REPO,
                    env={**os.environ, **hsm.env(), "PYTHONPATH": str(REPO)},
                )
            )
        outs = []
        for p in procs:
            try:
                stdout, stderr = p.communicate(timeout=duration + 600)
            except subprocess.TimeoutExpired as e:
                p.kill()
                p.communicate()
                raise BenchError("raw python-pkcs11 loop ran past its time bound") from e
            if p.returncode != 0:
                raise BenchError(f"raw python-pkcs11 loop failed: {stderr.strip()[-800:]}")
            outs.append(json.loads(stdout))
        wall = max(o["end_unix"] for o in outs) - min(o["start_unix"] for o in outs)
        return {
            "processes": processes,
            "algorithm": algorithm,
            "payload": payload,
            "count": sum(o["count"] for o in outs),
            "rate": sum(o["rate"] for o in outs),
            "wall_s": wall,
            "per_process": outs,
        }

    def record(self, key: str, value: float | None, note: str = "") -> None:
        self.keys[key] = value
        if note:
            self.notes[key] = note
        shown = "n/a" if value is None else f"{value:.3f}"
        _log(f"{key} = {shown}{'  (' + note + ')' if note else ''}")

    # --- W1 ------------------------------------------------------------------------

    def w1(self, server: TufSigner, echo: Echo) -> None:
        n = self.s.w1_requests
        warm = max(20, n // 10)
        runs: dict[str, list[dict[str, Any]]] = {"sign": [], "echo": []}
        fsyncs: list[dict[str, float]] = []
        # The timestamps name a snapshot this key signed: one listing no bin.
        snapshot_version = sign_snapshot(server, "ed", {})
        for _ in range(self.s.repeats):
            bodies = timestamps(server, "ed", n + warm, snapshot_version)
            for name, target in (("sign", server), ("echo", echo)):
                phase = Phase(f"w1-{name}", bodies, [SIGN], concurrency=1, warmup=warm)
                before = server.stage_seconds()
                result = self.loadgen(target, [phase])
                self._check("w1", result)
                if name == "sign":
                    result["stages_mean_us"] = stage_means(before, server.stage_seconds())
                runs[name].append(result)
            fsyncs.append(fsync_us(server.audit_dir))  # next to the Signs it stands for
        raw = self.raw(server, 1, payload="timestamp", count=2000, per_sign=True)
        fsync = min(fsyncs, key=lambda f: f["dir_fsync_p50_us"])
        sign_p50 = min(r["phases"][0]["latency_us"]["p50"] for r in runs["sign"])
        sign_p99 = min(r["phases"][0]["latency_us"]["p99"] for r in runs["sign"])
        echo_p50 = min(r["phases"][0]["latency_us"]["p50"] for r in runs["echo"])
        hsm_us = raw["per_process"][0]["per_sign_us"]["p50"]
        # P4: a signature goes back only once its record is durable, so one
        # fsync of the audit store's directory is part of any Sign's floor.
        floor = echo_p50 + hsm_us + fsync["dir_fsync_p50_us"]
        self.figures["w1"] = {
            "payload_bytes": len(_payloads.timestamp(1, 1, _payloads.expires())),
            "sign_p50_us": sign_p50,
            "sign_p99_us": sign_p99,
            "echo_p50_us": echo_p50,
            "echo_p99_us": min(r["phases"][0]["latency_us"]["p99"] for r in runs["echo"]),
            "raw_hsm_sign_us": hsm_us,
            "fsync": fsync,
            "fsync_runs": fsyncs,
            "floor_us": floor,
            "sign_server_cpu_us_per_request": min(
                r["server_cpu_us_per_request"] for r in runs["sign"]
            ),
            "echo_server_cpu_us_per_request": min(
                r["server_cpu_us_per_request"] for r in runs["echo"]
            ),
            "runs": runs,
            "raw": raw,
        }
        # Where a lone Sign's time goes, from the server's own stage histograms
        # (the run with the best p50): what each stage costs over its floor.
        best = min(runs["sign"], key=lambda r: r["phases"][0]["latency_us"]["p50"])
        stages = best.get("stages_mean_us", {})
        self.figures["w1"]["sign_stages_mean_us"] = stages
        mean = best["phases"][0]["latency_us"]["mean"]
        self.figures["w1"]["sign_mean_us"] = mean
        echo_mean = min(r["phases"][0]["latency_us"]["mean"] for r in runs["echo"])
        where = ""
        if stages:
            rest = mean - sum(stages.values())
            where = (
                f"; a Sign's mean {mean:.0f} µs = policy {stages.get('policy', 0):.0f} + "
                f"HSM call {stages.get('hsm', 0):.0f} (raw {hsm_us:.0f}) + audit commit "
                f"{stages.get('audit_commit', 0):.0f} (page fdatasync "
                f"{fsync['page_fdatasync_p50_us']:.0f}) + the rest {rest:.0f} (gRPC, admission, "
                f"verify, reply; echo mean {echo_mean:.0f})"
            )
        self.record(
            "w1_p50_over_floor",
            sign_p50 / floor,
            f"Sign p50 {sign_p50:.0f} µs, p99 {sign_p99:.0f} µs; floor {floor:.0f} µs = "
            f"echo p50 {echo_p50:.0f} + raw HSM {hsm_us:.0f} + audit directory fsync "
            f"{fsync['dir_fsync_p50_us']:.0f} (a 4 KiB page rewritten and fdatasynced there: "
            f"{fsync['page_fdatasync_p50_us']:.0f}){where}",
        )

    # --- W2 ------------------------------------------------------------------------

    def _closed(self, name: str, records: list[tuple[int, bytes]], method: str, **kw: Any) -> Phase:
        return Phase(name, records, [method], duration=self.s.phase_s, **kw)

    def w2(self, server: TufSigner, echo: Echo) -> None:
        n = int(self.s.phase_s * GUESS_RATE)
        warm = 500
        conns = max(8, 4 * server.workers)
        runs: dict[str, list[dict[str, Any]]] = {"sign": [], "echo": []}
        for _ in range(self.s.repeats):
            bodies = unary(small_signs(server, "ed", n + warm))
            for name, target in (("sign", server), ("echo", echo)):
                phase = self._closed(
                    f"w2-{name}", bodies, SIGN, concurrency=W2_IN_FLIGHT, warmup=warm
                )
                result = self.loadgen(target, [phase], conns=conns)
                self._check("w2", result)
                runs[name].append(result)
        best = {k: max(runs[k], key=lambda r: r["phases"][0]["rate"]) for k in runs}
        sign_rate = best["sign"]["phases"][0]["rate"]
        echo_rate = best["echo"]["phases"][0]["rate"]
        fig: dict[str, Any] = {
            "payload_bytes": 512,
            "in_flight": W2_IN_FLIGHT,
            "conns": conns,
            "sign_rate": sign_rate,
            "echo_rate": echo_rate,
            "sign_latency_us": best["sign"]["phases"][0]["latency_us"],
            "echo_latency_us": best["echo"]["phases"][0]["latency_us"],
            "sign_server_cpu_us_per_request": best["sign"]["server_cpu_us_per_request"],
            "echo_server_cpu_us_per_request": best["echo"]["server_cpu_us_per_request"],
            "gen_cpu_us_per_request": best["sign"]["gen_cpu_us_per_request"],
            "runs": runs,
        }
        if self.s.h2load and self.tools.h2load:
            one = small_signs(server, "ed", 1)[0].SerializeToString()
            fig["echo_h2load"] = run_h2load(
                echo,
                SIGN,
                one,
                requests=0,
                conns=8,
                streams=8,
                workdir=self.workdir,
                duration=self.s.phase_s,
            )
            # Every request after the first is an identical retry: the replay path.
            fig["sign_replay_h2load"] = run_h2load(
                server,
                SIGN,
                one,
                requests=0,
                conns=8,
                streams=8,
                workdir=self.workdir,
                duration=self.s.phase_s,
            )
        if "echo_h2load" in fig:
            fig["sign_over_echo_h2load"] = sign_rate / fig["echo_h2load"]["rate"]
        self.figures["w2"] = fig
        self.record(
            "w2_over_echo",
            sign_rate / echo_rate,
            f"Sign {sign_rate:.0f}/s vs echo {echo_rate:.0f}/s; server CPU "
            f"{fig['sign_server_cpu_us_per_request']:.0f} µs/Sign vs "
            f"{fig['echo_server_cpu_us_per_request']:.0f} µs/echo"
            + (
                f"; h2load's echo: {fig['echo_h2load']['rate']:.0f}/s"
                if "echo_h2load" in fig
                else ""
            ),
        )

    # --- W3 ------------------------------------------------------------------------

    def w3(self, server: TufSigner, raw_processes: dict[str, int]) -> None:
        """SignBatch (or the unary fallback) on ``server`` vs raw loops in N processes.

        ``raw_processes`` maps a key suffix (``1p``, ``np``) to the number of raw
        processes to compare with; the server is measured once for all of them.
        """
        workers = server.workers
        runs: dict[str, list[dict[str, Any]]] = {"server": []}
        for _ in range(self.s.repeats):
            for suffix, processes in raw_processes.items():
                # Payloads for the duration at twice ~7,000/s per process (docs/design.md §4).
                count = int(self.s.raw_s * 15_000) * processes
                raw = self.raw(server, processes, duration=self.s.raw_s, count=count)
                runs.setdefault(f"raw_{suffix}", []).append(raw)
            n = int(self.s.phase_s * GUESS_RATE)
            requests = small_signs(server, "ed", n)
            if self.batch_api:
                bodies = batches(requests, self.batch_items)
                warm = max(2, len(bodies) // 50)
                # One batch in flight per connection, 8 connections per worker: the
                # kernel spreads connections over SO_REUSEPORT workers at random, and
                # this many keeps every worker busy whatever the draw.
                phase = self._closed(
                    "w3-batch", bodies, SIGN_BATCH, concurrency=8 * workers, warmup=warm, batch=True
                )
                result = self.loadgen(server, [phase], conns=8 * workers)
                handled = sum(p["items"] + p["item_errors"] for p in result["phases"])
                handled += warm * self.batch_items
                result["server_cpu_us_per_item"] = 1e6 * result["server_cpu_s"] / max(handled, 1)
            else:
                phase = self._closed(
                    "w3-unary", unary(requests), SIGN, concurrency=W2_IN_FLIGHT, warmup=500
                )
                result = self.loadgen(server, [phase], conns=max(8, 4 * workers))
                result["server_cpu_us_per_item"] = result["server_cpu_us_per_request"]
            self._check("w3", result)
            runs["server"].append(result)
        key = "items_rate" if self.batch_api else "rate"
        best = max(runs["server"], key=lambda r: float(r["phases"][0][key]))
        server_rate = best["phases"][0][key]
        api = (
            "SignBatch" if self.batch_api else "unary Sign, 64 in flight (SignBatch UNIMPLEMENTED)"
        )
        for suffix, processes in raw_processes.items():
            raw_rate = max(r["rate"] for r in runs[f"raw_{suffix}"])
            self.figures[f"w3_{suffix}"] = {
                "api": api,
                "server_processes": workers,
                "raw_processes": processes,
                "batch_items": self.batch_items if self.batch_api else 1,
                "server_rate": server_rate,
                "raw_rate": raw_rate,
                "server_cpu_us_per_item": best["server_cpu_us_per_item"],
                "runs": {"server": runs["server"], "raw": runs[f"raw_{suffix}"]},
            }
            note = f"{api}: {server_rate:.0f} sig/s in {workers} server process(es) vs raw "
            note += f"{raw_rate:.0f} sig/s in {processes} process(es), Ed25519, 512 B"
            if workers != processes:
                note += "; server.workers not supported yet: 1 server process"
            self.record(f"w3_batch_over_raw_{suffix}", server_rate / raw_rate, note)

    # --- W5 small (and the TLS lines of the sweep) -------------------------------------

    def notary_small(self, notary: Notary, key_id: str, n: int) -> list[tuple[int, bytes]]:
        pb2, _ = notary.stubs
        exp = _payloads.expires()
        return [
            (
                0,
                pb2.SignatureRequest(
                    keyID=pb2.KeyID(ID=key_id), content=_payloads.small_bin(i, 1, exp)
                ).SerializeToString(),
            )
            for i in range(n)
        ]

    def w5_small(self, ours: TufSigner, notary: Notary, notary_ed: str) -> None:
        n = int(self.s.phase_s * GUESS_RATE)
        warm = 500
        conns = max(8, 4 * ours.workers)
        runs: dict[str, list[dict[str, Any]]] = {"ours": [], "notary": []}
        for _ in range(self.s.repeats):
            ours_bodies = unary(small_signs(ours, "ed", n + warm))
            r = self.loadgen(
                ours,
                [self._closed("w5-ours", ours_bodies, SIGN, concurrency=64, warmup=warm)],
                conns=conns,
            )
            self._check("w5", r)
            runs["ours"].append(r)
            notary_bodies = self.notary_small(notary, notary_ed, n + warm)
            r = self.loadgen(
                notary,
                [
                    self._closed(
                        "w5-notary", notary_bodies, NOTARY_SIGN, concurrency=64, warmup=warm
                    )
                ],
                conns=conns,
            )
            self._check("w5", r)
            runs["notary"].append(r)
        best = {k: max(v, key=lambda r: r["phases"][0]["rate"]) for k, v in runs.items()}
        ours_rate = best["ours"]["phases"][0]["rate"]
        notary_rate = best["notary"]["phases"][0]["rate"]
        self.figures["w5_small"] = {
            "transport": "mutual TLS on both",
            "payload_bytes": 512,
            "in_flight": 64,
            "ours_rate": ours_rate,
            "notary_rate": notary_rate,
            "ours_server_cpu_us_per_request": best["ours"]["server_cpu_us_per_request"],
            "notary_server_cpu_us_per_request": best["notary"]["server_cpu_us_per_request"],
            "runs": runs,
        }
        self.record(
            "w2_over_notary",
            ours_rate / notary_rate,
            f"both mutual TLS, 512 B, 64 in flight: Sign {ours_rate:.0f}/s "
            f"({best['ours']['server_cpu_us_per_request']:.0f} µs CPU each) vs notary-signer "
            f"{notary_rate:.0f}/s ({best['notary']['server_cpu_us_per_request']:.0f} µs)",
        )

    # --- W4 and W5 bulk ------------------------------------------------------------------

    def w4(
        self, ours: TufSigner, echo: Echo | None, notary: Notary | None, notary_ec: str | None
    ) -> None:
        """W4 and W5's bulk figure: one re-sign of every bin, then snapshot, then timestamp.

        Every side gets the same request stream with the same warm-up (one
        batch per connection, or as many bins unary), and its time is taken
        in its steady state (``steady_rate``): ``bins / rate`` plus the
        snapshot's and the timestamp's latency. Warm-up and tail are fixed
        costs; leaving them out on every side makes the 2,048 bins of the
        quick run predict the 16,384 of the full one. Tuf-signer, the echo
        ceiling, notary-signer, HSMSigner in-process and the raw loops take
        turns, ``W4_ROUNDS`` times; each keeps its best round.
        """
        n = self.s.w4_bins
        workers = ours.workers
        conns = W4_IN_FLIGHT_PER_WORKER * workers
        items = min(W4_BATCH_ITEMS, self.batch_items)
        warm_bins = min(n, conns * items)
        rounds: list[dict[str, Any]] = []
        for _ in range(W4_ROUNDS):
            rounds.append(self._w4_round(ours, echo, notary, notary_ec, conns, items, warm_bins))
        best = {
            side: min(rounds, key=lambda r: r[side]["s"])[side]
            for side in ("ours", "echo", "notary", "inprocess", "raw")
            if rounds[0][side] is not None
        }
        ours_s, ours_rate = best["ours"]["s"], best["ours"]["rate"]
        inprocess, raw = best["inprocess"]["result"], best["raw"]["result"]
        raw_s = best["raw"]["s"]
        fig: dict[str, Any] = {
            "bins": n,
            "warmup_bins": warm_bins,
            "bin_bytes_mean": rounds[0]["payload_bytes"] / n,
            "snapshot_bytes": rounds[0]["snapshot_bytes"],
            "algorithm": "ECDSA P-256 (HSMSigner supports only ECDSA)",
            "transport": "mutual TLS",
            "api": best["ours"]["api"],
            "how": "steady state: bins / rate between 10% and 90% of the timed bins, "
            "+ snapshot and timestamp latency; warm-up left out on every side; best of "
            f"{W4_ROUNDS} interleaved rounds",
            "ours_s": ours_s,
            "ours_rate": ours_rate,
            "ours_timed_wall_s": best["ours"]["timed_wall_s"],
            "ours_server_cpu_us_per_signature": best["ours"]["server_cpu_us_per_signature"],
            "echo_s": best["echo"]["s"] if "echo" in best else None,
            "inprocess_wall_s": inprocess["elapsed_s"],
            "inprocess": inprocess,
            "raw_processes": workers,
            "raw_s": raw_s,
            "raw_wall_s": raw["wall_s"],
            "raw": raw,
            "rounds": rounds,
        }
        self.figures["w4"] = fig
        self.record(
            "w4_over_inprocess",
            ours_s / inprocess["elapsed_s"],
            f"{n} bins + snapshot + timestamp: {ours_s:.2f} s vs HSMSigner in-process "
            f"{inprocess['elapsed_s']:.2f} s",
        )
        if echo is not None:
            echo_s = best["echo"]["s"]
            floor = echo_s + raw_s
            fig["floor_s"] = floor
            self.record(
                "w4_over_floor",
                ours_s / floor,
                f"{ours_s:.2f} s vs floor {floor:.2f} s = echo ceiling {echo_s:.2f} s (same "
                f"stream, mutual TLS, {echo.processes} process(es)) + raw HSM {raw_s:.2f} s "
                f"({workers} process(es))",
            )
        if "notary" not in best:
            return
        notary_s, notary_rate = best["notary"]["s"], best["notary"]["rate"]
        self.figures["w5_bulk"] = {
            "bins": n,
            "warmup_bins": warm_bins,
            "notary_api": "unary Sign, 64 in flight (it has no batch call)",
            "ours_s": ours_s,
            "notary_s": notary_s,
            "notary_rate": notary_rate,
            "notary_timed_wall_s": best["notary"]["timed_wall_s"],
        }
        self.record(
            "w5_bulk_over_notary",
            ours_s / notary_s,
            f"W4 workload, both mutual TLS, steady state: {ours_s:.2f} s ({ours_rate:.0f} bins/s) "
            f"vs notary-signer {notary_s:.2f} s ({notary_rate:.0f} bins/s) (ECDSA P-256, software "
            "key, no policy, no audit)",
        )

    def _w4_round(
        self,
        ours: TufSigner,
        echo: Echo | None,
        notary: Notary | None,
        notary_ec: str | None,
        conns: int,
        items: int,
        warm_bins: int,
    ) -> dict[str, Any]:
        """One round of W4 on each side, at fresh versions; each side's figures."""
        n = self.s.w4_bins
        exp = _payloads.expires()
        keyid = ours.keyids["ec"]
        version = ours.take_versions(1)
        requests = [
            _sign("ec", keyid, name, payload)
            for name, payload in _payloads.realistic_bins(n, version, exp)
        ]
        payload_bytes = sum(len(r.payload) for r in requests)
        # Coherent: the snapshot lists exactly the bins this round signs, at the
        # version it signs them; the timestamp names that snapshot.
        snapshot = _payloads.bulk_snapshot(version, n, version, exp)
        ts = _payloads.timestamp(version, version, exp)
        tail = [
            Phase(
                "w4-snapshot",
                [(0, _sign("ec", keyid, "snapshot", snapshot).SerializeToString())],
                [SIGN],
            ),
            Phase(
                "w4-timestamp",
                [(0, _sign("ec", keyid, "timestamp", ts).SerializeToString())],
                [SIGN],
            ),
        ]
        if self.batch_api:
            bodies = batches(requests, items)
            # One batch per connection in flight, the first round of them warm-up.
            first = Phase(
                "w4-bins",
                bodies,
                [SIGN_BATCH],
                concurrency=conns,
                batch=True,
                warmup=conns,
                timeline=True,
            )
            api = f"SignBatch of {items}, {len(bodies)} batches, {conns} in flight"
        else:
            first = Phase(
                "w4-bins", unary(requests), [SIGN], concurrency=64, warmup=warm_bins, timeline=True
            )
            api = "unary Sign, 64 in flight (SignBatch UNIMPLEMENTED)"
        del requests
        out: dict[str, Any] = {
            "version": version,
            "payload_bytes": payload_bytes,
            "snapshot_bytes": len(snapshot),
            "echo": None,
            "notary": None,
        }
        for side, target, workload in (("ours", ours, "w4"), ("echo", echo, "w4")):
            if target is None:
                continue
            result = self.loadgen(target, [first, *tail], conns=conns)
            self._check(workload, result)
            out[side] = _side(result, n, api=api)
        del first, tail
        inprocess = self._inprocess(ours, n)
        out["inprocess"] = {"s": inprocess["elapsed_s"], "result": inprocess}
        raw = self.raw(ours, ours.workers, algorithm="ecdsa", payload="bulk", count=n, bins=n)
        # The HSM's own time for the same n + 2 signatures, in steady state:
        # the processes' summed rates (their start-up skew left out).
        out["raw"] = {"s": raw["count"] / raw["rate"], "result": raw}
        if notary is None or notary_ec is None:
            return out
        pb2, _ = notary.stubs

        def notary_body(content: bytes) -> tuple[int, bytes]:
            request = pb2.SignatureRequest(keyID=pb2.KeyID(ID=notary_ec), content=content)
            return 0, request.SerializeToString()

        bins = [notary_body(p) for _, p in _payloads.realistic_bins(n, version, exp)]
        nresult = self.loadgen(
            notary,
            [
                Phase(
                    "w5-notary-bins",
                    bins,
                    [NOTARY_SIGN],
                    concurrency=64,
                    warmup=warm_bins,
                    timeline=True,
                ),
                Phase("w5-notary-snapshot", [notary_body(snapshot)], [NOTARY_SIGN]),
                Phase("w5-notary-timestamp", [notary_body(ts)], [NOTARY_SIGN]),
            ],
            conns=8,
        )
        self._check("w5", nresult)
        out["notary"] = _side(nresult, n, api="unary Sign, 64 in flight")
        return out

    def _inprocess(self, server: TufSigner, n: int) -> dict[str, Any]:
        hsm = server.hsm
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.hsm_baselines",
                "inprocess",
                "--module",
                str(hsm.module),
                "--label",
                hsm.label,
                "--pin-file",
                str(hsm.pin_file),
                "--bins",
                str(n),
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**os.environ, **hsm.env(), "PYTHONPATH": str(REPO)},
            timeout=1800,
            check=False,
        )
        if done.returncode != 0:
            raise BenchError(f"in-process HSMSigner baseline failed: {done.stderr[-800:]}")
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    # --- W6 ------------------------------------------------------------------------

    def soak_records(
        self, server: TufSigner, rate: float, seconds: float, n_bins: int
    ) -> Iterator[tuple[int, bytes]]:
        """Mixed load in time order (methods: Sign, GetPublicKeys, SignBatch).

        Per second: one timestamp, and a snapshot every other second; ~5%
        GetPublicKeys; ~5% PEP 458-size bins, the rest 512-byte bins, cycling
        over ``n_bins`` bins; ~5% SignBatch of 8 bins when the server has it.

        The repository stays coherent (issue 14): a snapshot lists each bin at
        the last version sent for it at least ``SOAK_LAG_S`` earlier (so
        signed by then), and only bins sent by then; a timestamp names the
        newest snapshot sent that long before. Until there is one to list or
        name, a GetPublicKeys takes the slot.
        """
        per_s = max(1, int(rate))
        total = int(rate * seconds)
        lag = max(1, int(rate * SOAK_LAG_S))  # records
        exp = _payloads.expires()
        keyid = server.keyids[SOAK_KEY]
        base = server.take_versions(2 * total + 2)
        ts_version = snap_version = base
        j = 0  # bins signed so far: bin j % n_bins, at version base + j // n_bins
        sent_bins: deque[tuple[int, int, int]] = deque()  # (record, bin, version)
        sent_snapshots: deque[tuple[int, int]] = deque()  # (record, snapshot version)
        listed: dict[int, int] = {}  # bin -> version the next snapshot lists
        named = 0  # the snapshot version the next timestamp names (0: none yet)

        def next_bin(i: int) -> tuple[int, str, int]:
            """The next bin's number, name and version (its payload's paths hash into it)."""
            nonlocal j
            j += 1
            index = (j - 1) % n_bins
            version = base + (j - 1) // n_bins
            sent_bins.append((i, index, version))
            return index, _payloads.bin_name(index), version

        def settle(i: int) -> None:
            """Take what was sent at least ``lag`` records before record ``i`` as signed."""
            nonlocal named
            while sent_bins and sent_bins[0][0] <= i - lag:
                _, index, version = sent_bins.popleft()
                listed[index] = version
            while sent_snapshots and sent_snapshots[0][0] <= i - lag:
                named = sent_snapshots.popleft()[1]

        empty = pb.GetPublicKeysRequest(key=SOAK_KEY).SerializeToString()
        for i in range(total):
            if i % per_s == per_s // 2:
                settle(i)
                if not named:
                    yield 1, empty
                    continue
                ts_version += 1
                payload = _payloads.timestamp(ts_version, named, exp)
                yield 0, _sign(SOAK_KEY, keyid, "timestamp", payload).SerializeToString()
            elif i % (2 * per_s) == 0:
                settle(i)
                if not listed:
                    yield 1, empty
                    continue
                snap_version += 1
                sent_snapshots.append((i, snap_version))
                payload = _payloads.snapshot(snap_version, listed, exp)
                yield 0, _sign(SOAK_KEY, keyid, "snapshot", payload).SerializeToString()
            elif i % 20 == 3:
                yield 1, empty
            elif i % 20 == 7 and self.batch_api:
                items = []
                for _ in range(8):
                    index, role, version = next_bin(i)
                    small = _payloads.small_bin(index, version, exp)
                    items.append(_sign(SOAK_KEY, keyid, role, small))
                yield 2, pb.SignBatchRequest(requests=items).SerializeToString()
            else:
                index, role, version = next_bin(i)
                if i % 20 == 11:
                    payload = _payloads.bin_payload(index, version, exp)
                else:
                    payload = _payloads.small_bin(index, version, exp)
                yield 0, _sign(SOAK_KEY, keyid, role, payload).SerializeToString()

    def w6(self) -> None:
        server = self.signer(workers=self.nproc, keys={SOAK_KEY: pb.ECDSA_P256})
        samples: list[tuple[float, int]] = []
        stop = threading.Event()

        def sample() -> None:
            t0 = time.monotonic()
            while not stop.wait(0.5):
                samples.append((time.monotonic() - t0, server.rss()))

        rate, seconds = self.s.soak_rate, self.s.soak_s
        warm = seconds * 0.25
        # Every bin is signed SOAK_WARM_LAPS times during warm-up, so every
        # worker's role-state cache is full before RSS is watched: growth after
        # that is a leak, not the working set. (With one lap of 16,384 bins,
        # each of two workers had signed about half of them: its cache went on
        # filling, ~10 MiB, through the whole soak.)
        n_bins = N_BINS
        while n_bins > 64 and n_bins * SOAK_WARM_LAPS > 0.8 * rate * warm:
            n_bins //= 2
        phase = Phase(
            "w6-soak",
            self.soak_records(server, rate, seconds, n_bins),
            [SIGN, GET_PUBLIC_KEYS, SIGN_BATCH],
            concurrency=256,
            rate=rate,
            duration=seconds,
            batch=False,
        )
        rss_start = server.rss()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            result = self.loadgen(server, [phase], conns=max(8, 4 * server.workers))
        finally:
            stop.set()
            sampler.join()
        codes = self.stop(server)
        verified, verify_out = server.verify_audit()
        p = result["phases"][0]
        base_samples = [r for t, r in samples if warm - 2.0 <= t <= warm] or [samples[0][1]]
        baseline = statistics.median(base_samples)
        after = [r for t, r in samples if t > warm] or [baseline]
        growth = (max(after) - baseline) / baseline
        errors = p["errors"] + p["item_errors"]
        self._check("w6", result)
        if not verified:
            self.errors.setdefault("w6", []).append(f"audit verify failed: {verify_out[-500:]}")
        if any(c != 0 for c in codes):
            self.errors.setdefault("w6", []).append(f"server exit status {codes} after SIGTERM")
        self.figures["w6"] = {
            "duration_s": seconds,
            "rate": rate,
            "sent": p["sent"],
            "ok": p["ok"],
            "errors": errors,
            "late": p["late"],
            "latency_us": p["latency_us"],
            "rss_start_bytes": rss_start,
            "rss_baseline_bytes": baseline,
            "rss_max_after_warmup_bytes": max(after),
            "rss_end_bytes": samples[-1][1] if samples else None,
            "warmup_s": warm,
            "bins": n_bins,
            "server_cpu_us_per_request": result["server_cpu_us_per_request"],
            "audit_verify": verify_out,
            "audit_verified": verified,
            "exit_codes": codes,
            "rss_samples": samples,
        }
        self.record(
            "w6_rss_growth",
            growth,
            f"{seconds:.0f} s at {rate:.0f}/s mixed, {n_bins} bins: {p['ok']} ok, {errors} errors, "
            f"RSS {baseline / 2**20:.0f} -> max {max(after) / 2**20:.0f} MiB after {warm:.0f} s "
            f"warm-up; audit verify {'OK' if verified else 'FAILED'}",
        )

    # --- the sweep for the plot -------------------------------------------------------

    def sweep_point(
        self, series: str, target: Service, bodies: list[tuple[int, bytes]], method: str, c: int
    ) -> None:
        phase = Phase(
            f"sweep-{series}-{c}",
            bodies,
            [method],
            concurrency=c,
            duration=self.s.sweep_s,
            warmup=min(200, 4 * c),
        )
        result = self.loadgen(target, [phase], conns=max(1, min(c, 8)))
        self._check("sweep", result)
        self.sweep.setdefault(series, {})[c] = result["phases"][0]["rate"]

    def sweep_plain(self, server: TufSigner, echo: Echo) -> None:
        for c in self.s.sweep:
            n = int(self.s.sweep_s * GUESS_RATE) + 200
            bodies = unary(small_signs(server, "ed", n))
            self.sweep_point("tuf-signer (plaintext)", server, bodies, SIGN, c)
            self.sweep_point("echo ceiling (plaintext)", echo, bodies, SIGN, c)

    def sweep_tls(self, ours: TufSigner, notary: Notary | None, notary_ed: str | None) -> None:
        for c in self.s.sweep:
            n = int(self.s.sweep_s * GUESS_RATE) + 200
            self.sweep_point("tuf-signer (mTLS)", ours, unary(small_signs(ours, "ed", n)), SIGN, c)
            if notary is not None and notary_ed is not None:
                bodies = self.notary_small(notary, notary_ed, n)
                self.sweep_point("notary-signer (mTLS)", notary, bodies, NOTARY_SIGN, c)

    # --- the run -------------------------------------------------------------------------

    def guarded(self, workload: str, fn: Callable[[], None]) -> None:
        """Run one workload; a failure skips it (with the reason) and the run goes on."""
        started = time.monotonic()
        try:
            fn()
        except BenchError as e:
            # A workload that could not finish is a failed run, not a quiet skip.
            self.skipped[workload] = str(e)
            self.errors.setdefault(workload, []).append(f"did not finish: {e}")
            _log(f"FAILED {workload}: {e}")
        _log(f"{workload} done in {time.monotonic() - started:.1f} s")

    def run(self) -> None:
        want = self.only
        p = self.nproc
        if {"w1", "w2", "w3"} & want or self.s.sweep:
            server = self.signer(workers=p)
            echo = self.echo(server.workers)
            if "w1" in want:
                self.guarded("w1", lambda: self.w1(server, echo))
            if "w2" in want:
                self.guarded("w2", lambda: self.w2(server, echo))
            if "w3" in want:
                # Without multi-process serving the one server process stands for both.
                pairs = {"np": p} if server.workers > 1 else {"1p": 1, "np": p}
                self.guarded("w3", lambda: self.w3(server, pairs))
            if self.s.sweep:
                self.guarded("sweep", lambda: self.sweep_plain(server, echo))
            self.stop(echo)
            self.stop(server)
            if "w3" in want and server.workers > 1:
                one = self.signer(workers=1)
                self.guarded("w3", lambda: self.w3(one, {"1p": 1}))
                self.stop(one)
        if {"w4", "w5"} & want or self.s.sweep:
            self._tls_part()
        if "w6" in want:
            self.guarded("w6", self.w6)

    def _tls_part(self) -> None:
        want = self.only
        ours = self.signer(
            tls=True, workers=self.nproc, keys={"ed": pb.ED25519, "ec": pb.ECDSA_P256}
        )
        notary: Notary | None = None
        notary_ed = notary_ec = None
        if self.tools.notary_stubs is not None and "w5" in want:
            assert ours.tls is not None
            try:
                notary = Notary(self._dir("notary"), ours.tls, self.tools.notary_stubs)
                self._services.append(notary)
                notary.start()
                notary_ed = notary.create_key("ed25519")
                notary_ec = notary.create_key("ecdsa")
            except (BenchError, grpc.RpcError) as e:
                self.skipped["notary-signer"] = f"could not start: {e}"
                notary = None
        elif "w5" in want:
            self.skipped["w5"] = "notary-signer unavailable: " + "; ".join(
                f"{k}: {v}" for k, v in self.tools.skipped.items() if "notary" in k
            )
        if notary is not None and notary_ed is not None:
            self.guarded("w5-small", lambda: self.w5_small(ours, notary, notary_ed))
        if self.s.sweep:
            self.guarded("sweep-tls", lambda: self.sweep_tls(ours, notary, notary_ed))
        if {"w4", "w5"} & want:  # W5's bulk figure compares with W4's own run
            # The echo ceiling of W4's floor: same TLS, certificates and process count.

            def w4() -> None:
                # The echo ceiling of W4's floor: same TLS, certificates and process count.
                echo = self.echo(ours.workers, ours.tls) if "w4" in want else None
                try:
                    self.w4(ours, echo, notary if "w5" in want else None, notary_ec)
                finally:
                    if echo is not None:
                        self.stop(echo)

            self.guarded("w4", w4)
        if notary is not None:
            self.stop(notary)
        self.stop(ours)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the ~2 minute variant, same keys")
    parser.add_argument("--only", default=",".join(WORKLOADS), help="e.g. w1,w2 (default: all)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directories")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument(
        "--replot",
        action="store_true",
        help="only redraw throughput.png from the sweep recorded in latest.json",
    )
    args = parser.parse_args(argv)
    if args.replot:
        return _replot(args.out)
    settings = QUICK if args.quick else FULL
    if settings.sweep and importlib.util.find_spec("matplotlib") is None:
        _log("matplotlib is not installed: no plot (pip install -e '.[bench]', or make bench)")
    only = {w.strip() for w in args.only.split(",") if w.strip()}
    if not only <= set(WORKLOADS):
        parser.error(f"--only: choose from {', '.join(WORKLOADS)}")
    started = time.monotonic()
    info = machine_info()
    info["started"] = datetime.now(UTC).isoformat(timespec="seconds")
    _log(
        f"{settings.mode} run on {info['nproc']} CPUs, load average "
        f"{' '.join(f'{x:.2f}' for x in info['loadavg_start'])}, commit {info['git_commit'][:12]}"
        f"{' (dirty)' if info['git_dirty'] else ''}"
    )
    tools = prepare(need_h2load=settings.h2load)
    info["tools"] = tools.versions
    setup_s = time.monotonic() - started
    _payloads.self_check()
    workdir = Path(tempfile.mkdtemp(prefix="tuf-signer-bench-"))
    bench = Bench(settings, tools, workdir, only)
    try:
        bench.run()
    finally:
        bench.stop_all()
        if args.keep:
            _log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    info["loadavg_end"] = os.getloadavg()
    info["setup_s"] = setup_s
    info["total_s"] = time.monotonic() - started
    info["sign_batch"] = bench.batch_api
    info["server_workers_supported"] = _workers_supported()
    report = _report.build(settings, info, bench)
    _report.write(report, args.out, settings.mode, bench.sweep)
    print(_report.console(report))
    _log(f"total {info['total_s']:.1f} s (setup {setup_s:.1f} s)")
    if bench.errors:
        # Loud: a figure measured while calls failed is not a figure.
        _log(f"FAILED: errors in {', '.join(sorted(bench.errors))} (see above and {args.out})")
        return 1
    return 0


def _replot(out: Path) -> int:
    """Redraw the plot of a finished full run from its recorded figures (no measuring)."""
    path = out / "latest.json"
    report = json.loads(path.read_text())
    sweep = {
        series: {int(k): v for k, v in points.items()}
        for series, points in report.get("sweep", {}).items()
    }
    if not sweep:
        print(f"{path} has no sweep to plot", file=sys.stderr)
        return 1
    report["sweep"] = sweep  # as the run wrote it: integer keys, in numeric order
    _report.write(report, out, "full", sweep)
    print(f"throughput.png: {report['plot']}")
    return 0 if report["plot"] == "throughput.png" else 1


def _workers_supported() -> bool:
    from bench._procs import server_features

    return server_features().workers


if __name__ == "__main__":
    sys.exit(main())
