"""Results: ``<mode>.json`` (every key, raw figures, machine, commit), a Markdown table, a plot.

The full run writes ``latest.json``, ``latest.md`` and ``throughput.png``;
the quick run writes ``quick.json`` and ``quick.md`` and leaves those alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.run import Bench, Settings

_NOTARY = ("w5", "notary-signer", "notary-stubs")


@dataclasses.dataclass(frozen=True)
class Target:
    """A key's goal, and which workloads' errors and skip reasons bear on it."""

    op: str  # "<=", ">=", or "" for a figure reported with no target
    value: float
    errors: tuple[str, ...]  # error groups (Bench.errors) that fail the key
    skips: tuple[str, ...]  # Bench.skipped entries that explain a missing value


# Issue 16's table.
TARGETS: dict[str, Target] = {
    "w1_p50_over_floor": Target("<=", 1.5, ("w1",), ("w1",)),
    "w2_over_echo": Target(">=", 0.5, ("w2",), ("w2",)),
    # CPython's gRPC echo alone is ~0.34x notary-signer here: reported, no target.
    "w2_over_notary": Target("", 0.0, ("w5",), ("w5-small", *_NOTARY)),
    "w3_batch_over_raw_1p": Target(">=", 0.8, ("w3",), ("w3",)),
    "w3_batch_over_raw_np": Target(">=", 0.8, ("w3",), ("w3",)),
    "w4_over_inprocess": Target("<=", 0.25, ("w4",), ("w4",)),
    "w4_over_floor": Target("<=", 1.5, ("w4",), ("w4",)),
    "w5_bulk_over_notary": Target("<=", 1.0, ("w4", "w5"), ("w4", *_NOTARY)),
    "w6_rss_growth": Target("<=", 0.10, ("w6",), ("w6",)),
}


def _target_text(t: Target) -> str:
    return f"{t.op} {t.value:g}" if t.op else "-"


def _status(key: str, value: float | None, bench: Bench) -> str:
    t = TARGETS[key]
    if value is None:
        return "SKIP"
    if any(bench.errors.get(g) for g in t.errors):
        return "FAIL (errors)"
    if not t.op:
        return "reported"
    ok = value <= t.value if t.op == "<=" else value >= t.value
    return "PASS" if ok else "FAIL"


def build(settings: Settings, info: dict[str, Any], bench: Bench) -> dict[str, Any]:
    """The whole result as one JSON-able dict."""
    rows = []
    for key, t in TARGETS.items():
        value = bench.keys.get(key)
        note = bench.notes.get(key, "")
        if value is None:
            reasons = [bench.skipped[w] for w in (*t.skips, "loadgen") if w in bench.skipped]
            note = reasons[0] if reasons else "not run (--only)"
        rows.append(
            {
                "key": key,
                "value": value,
                "target": _target_text(t),
                "status": _status(key, value, bench),
                "note": note,
            }
        )
    return {
        "schema": 1,
        "mode": settings.mode,
        "settings": dataclasses.asdict(settings),
        "machine": info,
        "keys": {k: bench.keys.get(k) for k in TARGETS},
        "table": rows,
        "errors": bench.errors,
        "skipped": bench.skipped,
        "figures": bench.figures,
        "sweep": {series: dict(sorted(points.items())) for series, points in bench.sweep.items()},
    }


def markdown(report: dict[str, Any]) -> str:
    """The ratio table with the machine it ran on."""
    m = report["machine"]
    load = " ".join(f"{x:.2f}" for x in m["loadavg_start"])
    lines = [
        f"Mode `{report['mode']}`, {m['started']}, commit `{m['git_commit'][:12]}`"
        f"{' (uncommitted changes)' if m['git_dirty'] else ''}; {m['nproc']} CPUs "
        f"({m['cpu_model']}), load average at start {load}; SignBatch "
        f"{'implemented' if m['sign_batch'] else 'UNIMPLEMENTED (unary Sign fallback)'}; "
        f"server.workers {'supported' if m['server_workers_supported'] else 'not supported'}.",
        "",
        "| Key | Value | Target | Status | Measured |",
        "|---|---|---|---|---|",
    ]
    for row in report["table"]:
        value = "—" if row["value"] is None else f"{row['value']:.3f}"
        note = row["note"].replace("|", "/").replace("\n", " ")
        lines.append(f"| `{row['key']}` | {value} | {row['target']} | {row['status']} | {note} |")
    if report["errors"]:
        lines += ["", "Errors:", ""]
        for workload, errs in report["errors"].items():
            lines += [f"- {workload}: {e}" for e in errs]
    return "\n".join(lines) + "\n"


def console(report: dict[str, Any]) -> str:
    """A plain table for the terminal: key, value, target, status."""
    lines = ["", f"{'key':<24} {'value':>9}  {'target':<8} status"]
    for row in report["table"]:
        value = "n/a" if row["value"] is None else f"{row['value']:.3f}"
        lines.append(f"{row['key']:<24} {value:>9}  {row['target']:<8} {row['status']}")
        if row["value"] is None:
            lines.append(f"{'':<24} ({row['note'][:150]})")
    for workload, errs in report["errors"].items():
        for e in errs:
            lines.append(f"error in {workload}: {e[:300]}")
    lines.append("")
    lines.append(
        " ".join(
            f"{row['key']}={'n/a' if row['value'] is None else format(row['value'], '.3f')}"
            for row in report["table"]
        )
    )
    return "\n".join(lines)


def plot(sweep: dict[str, dict[int, float]], path: Path, title: str) -> str | None:
    """Throughput against concurrency, one line per series; returns why not, if not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]')"
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for series, points in sweep.items():
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], marker="o", label=series)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("requests in flight")
    ax.set_ylabel("requests per second (log)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".png.tmp")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return None


def write(report: dict[str, Any], out: Path, mode: str, sweep: dict[str, dict[int, float]]) -> None:
    """Write the JSON, the Markdown table and (full run, when swept) the plot."""
    out.mkdir(parents=True, exist_ok=True)
    name = "latest" if mode == "full" else "quick"
    if mode == "full" and sweep:
        m = report["machine"]
        why = plot(
            sweep,
            out / "throughput.png",
            f"Unary Sign, 512-byte bins, Ed25519 ({m['nproc']} CPUs, commit "
            f"{m['git_commit'][:12]})",
        )
        report["plot"] = "throughput.png" if why is None else f"not drawn: {why}"
    for suffix, text in (
        (".json", json.dumps(report, indent=1, sort_keys=True, default=str) + "\n"),
        (".md", markdown(report)),
    ):
        tmp = out / f"{name}{suffix}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / f"{name}{suffix}")
