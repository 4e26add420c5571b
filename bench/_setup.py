"""What the benchmarks need from the system, installed at bench time.

Everything third-party comes from Debian and is built or generated into
``bench/.build/`` (git-ignored): nothing is vendored or committed.

- ``nghttp2-client``: h2load, the C HTTP/2 generator (echo ceiling cross-check).
- ``golang-go`` + ``golang-google-grpc-dev``: to build ``bench/loadgen``.
- ``notary``: notary-signer, the Go peer (W5).
- ``golang-github-docker-notary-dev``: notary's ``signer.proto``; only the
  ``.deb`` is fetched (``apt-get download``) and unpacked, and Python stubs are
  generated from it with grpcio-tools.

A piece that cannot be installed is skipped, with the reason printed and
recorded in the results; the workloads that need it are skipped too.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parent
BUILD = BENCH / ".build"
GRPC_GO = Path("/usr/share/gocode/src/google.golang.org/grpc")
NOTARY_PROTO = "usr/share/gocode/src/github.com/theupdateframework/notary/proto/signer.proto"
_APT_TIMEOUT = 900  # seconds


@dataclasses.dataclass
class Tools:
    """What is available; ``skipped`` maps a tool to why it is not."""

    loadgen: Path | None = None
    h2load: str | None = None
    notary_signer: str | None = None
    notary_stubs: tuple[ModuleType, ModuleType] | None = None
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    versions: dict[str, str] = dataclasses.field(default_factory=dict)


def _log(message: str) -> None:
    print(f"[setup] {message}", flush=True)


def _apt_install(packages: list[str], updated: list[bool]) -> str | None:
    """apt-get install ``packages``; returns an error message or None."""
    if shutil.which("apt-get") is None:
        return "apt-get not found (not Debian?)"
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        if not updated[0]:
            _log("apt-get update")
            subprocess.run(
                [*sudo, "apt-get", "update", "-qq"],
                env=env,
                check=True,
                capture_output=True,
                timeout=_APT_TIMEOUT,
            )
            updated[0] = True
        _log(f"apt-get install {' '.join(packages)}")
        subprocess.run(
            [*sudo, "apt-get", "install", "-y", "-qq", *packages],
            env=env,
            check=True,
            capture_output=True,
            timeout=_APT_TIMEOUT,
        )
    except subprocess.CalledProcessError as e:
        return f"apt-get failed: {(e.stderr or b'').decode(errors='replace').strip()[-300:]}"
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"apt-get failed: {e}"
    return None


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (done.stdout or done.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def _dpkg_version(package: str) -> str:
    return _version(["dpkg-query", "-W", "-f=${Version}", package])


def _build_loadgen(tools: Tools) -> None:
    source = BENCH / "loadgen" / "main.go"
    binary = BUILD / "loadgen"
    if binary.exists() and binary.stat().st_mtime >= source.stat().st_mtime:
        tools.loadgen = binary
        return
    _log("building bench/loadgen with Debian's Go and grpc-go")
    env = {
        **os.environ,
        "GOPATH": "/usr/share/gocode",  # Debian's Go packages, GOPATH layout
        "GO111MODULE": "off",
        "GOCACHE": str(BUILD / "gocache"),
        "GOFLAGS": "",
    }
    try:
        subprocess.run(
            ["go", "build", "-o", str(binary), "main.go"],
            cwd=source.parent,
            env=env,
            check=True,
            capture_output=True,
            timeout=600,
        )
    except subprocess.CalledProcessError as e:
        tools.skipped["loadgen"] = f"go build failed: {e.stderr.decode(errors='replace')[-500:]}"
        return
    except (OSError, subprocess.TimeoutExpired) as e:
        tools.skipped["loadgen"] = f"go build failed: {e}"
        return
    tools.loadgen = binary


def _notary_stubs(tools: Tools, updated: list[bool]) -> None:
    out = BUILD / "notary"
    proto = out / "notary_signer.proto"
    if not (out / "notary_signer_pb2_grpc.py").exists():
        out.mkdir(parents=True, exist_ok=True)
        debs = list(out.glob("golang-github-docker-notary-dev_*.deb"))
        if not debs:
            if shutil.which("apt-get") is None:
                tools.skipped["notary-stubs"] = "apt-get not found"
                return
            if not updated[0] and (err := _apt_install([], updated)) is not None:
                tools.skipped["notary-stubs"] = err
                return
            _log("apt-get download golang-github-docker-notary-dev (for notary's signer.proto)")
            done = subprocess.run(
                ["apt-get", "download", "golang-github-docker-notary-dev"],
                cwd=out,
                capture_output=True,
                text=True,
                timeout=_APT_TIMEOUT,
                check=False,
            )
            debs = list(out.glob("golang-github-docker-notary-dev_*.deb"))
            if done.returncode != 0 or not debs:
                tools.skipped["notary-stubs"] = f"apt-get download failed: {done.stderr[-300:]}"
                return
        unpacked = out / "deb"
        subprocess.run(["dpkg", "-x", str(debs[0]), str(unpacked)], check=True, timeout=120)
        shutil.copy(unpacked / NOTARY_PROTO, proto)
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"-I{out}",
                f"--python_out={out}",
                f"--grpc_python_out={out}",
                str(proto),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            tools.skipped["notary-stubs"] = f"protoc failed (grpcio-tools): {done.stderr[-300:]}"
            return
    sys.path.insert(0, str(out))
    tools.notary_stubs = (
        importlib.import_module("notary_signer_pb2"),
        importlib.import_module("notary_signer_pb2_grpc"),
    )


def prepare(need_h2load: bool = True) -> Tools:
    """Install, build and generate what the benchmarks use; skip what cannot be had."""
    BUILD.mkdir(parents=True, exist_ok=True)
    tools = Tools()
    updated = [False]
    wanted = {
        "loadgen": (["go"], ["golang-go", "golang-google-grpc-dev"]),
        "h2load": (["h2load"], ["nghttp2-client"]),
        "notary-signer": (["notary-signer"], ["notary"]),
    }
    if not need_h2load:
        del wanted["h2load"]
    missing: list[str] = []
    for _name, (binaries, packages) in wanted.items():
        absent = any(shutil.which(b) is None for b in binaries)
        if absent or (packages[-1] == "golang-google-grpc-dev" and not GRPC_GO.is_dir()):
            missing += packages
    if missing:
        err = _apt_install(missing, updated)
        if err is not None:
            _log(f"could not install {' '.join(missing)}: {err}")
    if shutil.which("go") and GRPC_GO.is_dir():
        _build_loadgen(tools)
    else:
        tools.skipped["loadgen"] = "golang-go / golang-google-grpc-dev not installed"
    tools.h2load = shutil.which("h2load")
    if tools.h2load is None and need_h2load:
        tools.skipped["h2load"] = "nghttp2-client not installed"
    tools.notary_signer = shutil.which("notary-signer")
    if tools.notary_signer is None:
        tools.skipped["notary-signer"] = "Debian package notary not installed"
    else:
        _notary_stubs(tools, updated)
    tools.versions = {
        "softhsm2": _dpkg_version("softhsm2"),
        "notary": _dpkg_version("notary") if tools.notary_signer else "absent",
        "nghttp2-client": _dpkg_version("nghttp2-client") if tools.h2load else "absent",
        "golang-google-grpc-dev": _dpkg_version("golang-google-grpc-dev"),
        "go": _version(["go", "version"]) if shutil.which("go") else "absent",
    }
    for name, reason in tools.skipped.items():
        _log(f"SKIP {name}: {reason}")
    return tools
