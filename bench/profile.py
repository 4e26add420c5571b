"""Where a server's CPU goes: py-spy profiles of the W1, W2, W3 and W4 workloads.

Starts one tuf-signer (mutual TLS, ``server.workers`` = 1 so that one process
holds the whole picture), drives a workload through the bench load generator
while ``py-spy record`` samples the server, and writes per workload:

- ``bench/results/profiles/<workload>.collapsed``: py-spy's collapsed stacks
  (speedscope.app and flamegraph.pl read them; not kept in git);
- ``bench/results/profiles/<workload>.txt``: per thread (event loop, PKCS#11
  thread, audit writer), the functions with the most samples, inclusive and
  self, as shares of that thread's samples.

Usage: ``python -m bench.profile [--only w1,w2,w3,w4] [--seconds N]`` (``make bench-profile``).

W1 (timestamps, one at a time) shows what a Sign costs when nothing is shared
with other requests: every commit, wake-up and hand-off is its own.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import _payloads
from bench._gen import SIGN, SIGN_BATCH, Phase
from bench._procs import _stat_fields, process_tree
from bench._setup import prepare
from bench.run import (
    QUICK,
    Bench,
    _log,
    batches,
    sign_snapshot,
    small_signs,
    timestamps,
    unary,
)
from tuf_signer.v1 import signer_pb2 as pb

OUT = Path(__file__).resolve().parent / "results" / "profiles"
TOP = 40


def _w1(bench: Bench, server, seconds: float) -> list[Phase]:
    # W1's Signs: timestamps, one at a time, naming a snapshot the key signed.
    snapshot_version = sign_snapshot(server, "ed", {})
    bodies = timestamps(server, "ed", int(seconds * 1500), snapshot_version)
    return [Phase("w1", bodies, [SIGN], concurrency=1, duration=seconds)]


def _w2(bench: Bench, server, seconds: float) -> list[Phase]:
    requests = small_signs(server, "ed", int(seconds * 4000))
    return [Phase("w2", unary(requests), [SIGN], concurrency=64, duration=seconds)]


def _w3(bench: Bench, server, seconds: float) -> list[Phase]:
    requests = small_signs(server, "ed", int(seconds * 8000))
    bodies = batches(requests, bench.batch_items)
    return [Phase("w3", bodies, [SIGN_BATCH], concurrency=8, duration=seconds, batch=True)]


def _w4(bench: Bench, server, seconds: float) -> list[Phase]:
    del seconds  # W4 sends a fixed workload: 4096 bins of ~54 KB
    n, exp = 4096, _payloads.expires()
    version = server.take_versions(1)
    keyid = server.keyids["ec"]
    requests = [
        pb.SignRequest(key="ec", role=name, payload=payload, expected_keyid=keyid)
        for name, payload in _payloads.realistic_bins(n, version, exp)
    ]
    return [Phase("w4", batches(requests, bench.batch_items), [SIGN_BATCH], 4, batch=True)]


WORKLOADS = {"w1": _w1, "w2": _w2, "w3": _w3, "w4": _w4}


_THREADS = (  # a frame that names the thread a stack was sampled on
    ("run_forever", "event loop"),
    ("Pkcs11Backend._drain", "PKCS#11 thread"),
    ("AuditWriter._run", "audit writer"),
)


def summarise(collapsed: Path, top: int = TOP) -> str:
    """Per thread, the functions with most samples in py-spy's collapsed stacks."""
    inclusive: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    own: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    per_thread: collections.Counter[str] = collections.Counter()
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        # "function (file.py:line)" -> "function (file.py)"; frame 0 names the thread
        frames = [
            f.split(" (")[0] + " (" + f.rsplit("/", 1)[-1].split(":")[0] + ")"
            for f in stack.split(";")[1:]
        ]
        if not frames:
            continue
        thread = next((t for marker, t in _THREADS if marker in stack), "other")
        per_thread[thread] += count
        for frame in set(frames):
            inclusive[thread][frame] += count
        own[thread][frames[-1]] += count
    total = sum(per_thread.values())
    lines = [
        f"{total} samples on CPU: "
        + ", ".join(f"{t} {100 * n / max(total, 1):.0f}%" for t, n in per_thread.most_common())
    ]
    for thread, n in per_thread.most_common():
        for title, counter in (("inclusive", inclusive[thread]), ("self", own[thread])):
            lines.append(f"\n{thread}, {title} (share of this thread's samples):")
            for frame, count in counter.most_common(top if title == "self" else top // 2):
                lines.append(f"  {100 * count / n:5.1f}%  {frame}")
    return "\n".join(lines) + "\n"


_TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")


def thread_cpu(pids: list[int]) -> collections.Counter[str]:
    """CPU microseconds so far of every thread of ``pids``, summed by thread name."""
    out: collections.Counter[str] = collections.Counter()
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                stat = (task / "stat").read_text()
                comm = (task / "comm").read_text().strip()
            except OSError:  # the thread ended meanwhile
                continue
            fields = stat.rpartition(")")[2].split()
            out[comm] += round((int(fields[11]) + int(fields[12])) * _TICK_US)
    return out


def _parent(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields is not None else None


def profile(bench: Bench, server, name: str, seconds: float, idle: bool = False) -> None:
    phases = WORKLOADS[name](bench, server, seconds)
    pids = process_tree(server.pids)
    # The processes that serve: the supervisor's workers, else the one server
    # (never its checker processes, which are its children too, nor the
    # witness, spawned before it when the transparency log is on).
    serve = server.pids[-1]
    serving = [serve]
    if bench.workers(server) > 1:
        serving = [p for p in pids if _parent(p) == serve] or serving
    raw = OUT / f"{name}.collapsed"
    spies = []
    for i, pid in enumerate(serving):
        out = raw if i == 0 else OUT / f"{name}.{i}.collapsed"
        spies.append(
            subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "--pid",
                    str(pid),
                    "--format",
                    "raw",
                    "--rate",
                    "250",
                    "--nonblocking",
                    "--threads",
                    *(["--idle"] if idle else []),
                    "-o",
                    str(out),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    time.sleep(1.0)
    before = thread_cpu(serving)
    result = bench.loadgen(server, phases, conns=4)
    used = thread_cpu(serving)
    used.subtract(before)
    for spy in spies:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)
    ok = sum(p["ok"] for p in result["phases"])
    errors = sum(p["errors"] + p["item_errors"] for p in result["phases"])
    unit = "item" if phases[0].batch else "request"
    items = sum(p["ok"] + p["warmup"] for p in result["phases"])
    if phases[0].batch:
        items = sum(p.get("items", 0) for p in result["phases"]) or items
    per_thread = ", ".join(
        f"{comm} {us / max(items, 1):.0f}" for comm, us in used.most_common() if us > 0
    )
    text = (
        f"{name}: {ok} ok, {errors} errors; server CPU per {unit} (µs), by OS thread name "
        f"(tuf-signer = the event loop, tuf-pkcs11, tuf-audit, the rest gRPC's): "
        f"{per_thread}\n" + summarise(raw)
    )
    (OUT / f"{name}.txt").write_text(text)
    _log(f"{name}: wrote {OUT / (name + '.txt')}")
    print(text[: text.find("\n\n", text.find("self (share"))])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("--only", default=",".join(WORKLOADS))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--idle", action="store_true", help="sample waiting threads too (where they wait)"
    )
    args = parser.parse_args(argv)
    if shutil.which("py-spy") is None and not Path(sys.prefix, "bin", "py-spy").exists():
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    os.environ["PATH"] = f"{Path(sys.prefix, 'bin')}:{os.environ['PATH']}"
    OUT.mkdir(parents=True, exist_ok=True)
    tools = prepare(need_h2load=False)
    workdir = Path(tempfile.mkdtemp(prefix="tuf-signer-profile-"))
    bench = Bench(QUICK, tools, workdir, set())
    try:
        server = bench.signer(tls=True, workers=1, keys={"ed": pb.ED25519, "ec": pb.ECDSA_P256})
        for name in args.only.split(","):
            profile(bench, server, name.strip(), args.seconds, args.idle)
    finally:
        bench.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
