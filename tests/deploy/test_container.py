"""deploy/container: what can be checked without building the image (no daemon here).

The image was not built on this machine. What is checked: the Containerfile's
ENTRYPOINT, run as it stands with a config where the image expects one, serves
(probes on the ops port answer, the gRPC port wants a client certificate); the
image runs as the same non-root user the Deployment names, on Debian, with no
secret or config copied in; and the build script parses.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.cli.conftest import _env, run
from tests.conftest import free_port

from .test_kubernetes import CONTAINERFILE, ROOT, container_entrypoint, render

BUILD = CONTAINERFILE.with_name("build.sh")


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_the_entrypoint_serves(tmp_path: Path) -> None:
    """The ENTRYPOINT's argv, with only the config path moved to a dev-init directory."""
    listen, ops = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    config = run(
        "dev-init", str(tmp_path / "etc"), "--listen", listen, "--ops-listen", ops
    ).stdout.strip()
    argv = container_entrypoint()
    argv[argv.index("--config") + 1] = config
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name(argv[0])), *argv[1:]],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    try:
        deadline = time.monotonic() + 30
        status = 0
        while time.monotonic() < deadline and status != 200:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                status, _ = _get(f"http://{ops}/readyz")
            except OSError:
                time.sleep(0.2)
        assert status == 200
        assert _get(f"http://{ops}/healthz")[0] == 200
        # kubelet's plaintext gRPC probe, as the Deployment's readinessProbe sends it.
        with grpc.insecure_channel(ops) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="readiness"), timeout=5
            )
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        # The signing port stays mutual TLS: plaintext gets nothing.
        with grpc.insecure_channel(listen) as channel, pytest.raises(grpc.RpcError) as refused:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0  # SIGTERM drains and exits 0 (STOPSIGNAL)


def test_the_image_runs_as_the_pods_user_with_nothing_secret_inside() -> None:
    text = CONTAINERFILE.read_text()
    froms = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert froms and all("bookworm" in image for image in froms)  # Debian 12
    (user,) = re.findall(r"^USER (\d+):(\d+)$", text, re.MULTILINE)
    deployment = next(o for o in render() if o["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]["securityContext"]
    assert (int(user[0]), int(user[1])) == (pod["runAsUser"], pod["runAsGroup"]) != (0, 0)
    assert re.search(r"^STOPSIGNAL SIGTERM$", text, re.MULTILINE)
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.MULTILINE)
    # The package and its .pth hook (setup.py) and licence; no .dev/, no key, no config.
    assert copied == ["pyproject.toml setup.py README.md LICENSE", "service"]
    assert not re.search(r"^(ENV|ARG) .*(PIN|DSN|PASSWORD|SECRET|KEY)", text, re.MULTILINE)
    assert "apt-get install -y --no-install-recommends softhsm2" in text  # dev images only
    assert '[ "$WITH_SOFTHSM" = 1 ]' in text


def test_the_build_stage_builds_the_native_checks() -> None:
    """pip skips an optional extension it cannot compile; the image must not ship so."""
    text = CONTAINERFILE.read_text()
    build = text[: text.index("\nFROM ", text.index("AS build"))]
    installed = re.search(r"apt-get install -y --no-install-recommends ([^\\&]+)", build)
    assert installed and {"gcc", "libc6-dev", "libssl-dev"} <= set(installed.group(1).split())
    native = re.findall(r"tuf_signer\.policy\.(_c\w+)", build)
    built = {p.name.split(".")[0] for p in (ROOT / "service/tuf_signer/policy").glob("_c*.c")}
    assert set(native) == built == {"_ccanonical", "_cbins"}  # a new extension is checked too
    assert (
        build.index("apt-get install")
        < build.index("pip install")
        < build.index("import tuf_signer")
    )


def test_the_build_script_parses() -> None:
    done = subprocess.run(["sh", "-n", str(BUILD)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    usage = subprocess.run(["sh", str(BUILD), "--nonsense"], capture_output=True, text=True)
    assert usage.returncode == 2
    assert "usage:" in usage.stderr
