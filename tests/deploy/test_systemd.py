"""deploy/systemd: the unit verifies with no warning, and its sandbox scores at most 1.5.

``systemd-analyze verify`` checks every directive (and that ExecStart is
executable, so the test points it at this checkout's ``tuf-signer`` instead of
``/opt/tuf-signer``, the one change made to the file). ``systemd-analyze
security --offline=yes --threshold=15`` fails above an exposure of 1.5 (on its
scale of 0 to 10; the unit measures 1.1).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tuf_signer.config import load_config
from tuf_signer.config._preflight import check_listen

from .test_kubernetes import container_entrypoint

ROOT = Path(__file__).parents[2]
UNIT = ROOT / "deploy" / "systemd" / "tuf-signer.service"
CONFIG = ROOT / "deploy" / "systemd" / "tuf-signer.toml"
INSTALLED = "/opt/tuf-signer/bin/tuf-signer"
THRESHOLD = 15  # tenths: an overall exposure above 1.5 fails


def _analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail("systemd-analyze is missing: make test-deps installs Debian's systemd")
    return found


def _settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            name, _, value = line.partition("=")
            settings.setdefault(name.strip(), []).append(value.strip())
    return settings


@pytest.fixture
def unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's ``tuf-signer``."""
    here = Path(sys.executable).with_name("tuf-signer")
    assert here.exists()
    text = UNIT.read_text()
    assert f"ExecStart={INSTALLED} " in text
    path = tmp_path / "tuf-signer.service"
    path.write_text(text.replace(f"ExecStart={INSTALLED} ", f"ExecStart={here} "))
    return path


def test_the_unit_verifies_without_a_warning(unit: Path) -> None:
    done = subprocess.run(
        [_analyze(), "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and done.stdout == "", done.stderr + done.stdout


def test_verify_fails_on_a_misspelt_directive(unit: Path) -> None:
    unit.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSytem=strict"))
    done = subprocess.run(
        [_analyze(), "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert "ProtectSytem" in done.stderr


def test_the_sandbox_scores_below_the_threshold(unit: Path) -> None:
    done = subprocess.run(
        [_analyze(), "security", "--offline=yes", f"--threshold={THRESHOLD}", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    (overall,) = [line for line in done.stdout.splitlines() if "Overall exposure level" in line]
    assert float(overall.split(":")[1].split()[0]) <= THRESHOLD / 10


def test_the_threshold_catches_a_weaker_unit(unit: Path) -> None:
    weaker = "\n".join(
        line
        for line in unit.read_text().splitlines()
        if not line.startswith(("Protect", "Private", "Restrict", "SystemCall"))
    )
    unit.write_text(weaker + "\n")
    done = subprocess.run(
        [_analyze(), "security", "--offline=yes", f"--threshold={THRESHOLD}", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0


def test_the_sandbox_settings_the_issue_asks_for() -> None:
    settings = _settings(UNIT.read_text())
    for name, value in {
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "User": "tuf-signer",
    }.items():
        assert settings[name] == [value], name
    assert "@system-service" in settings["SystemCallFilter"]
    # It writes only to the store's directory.
    assert settings["ReadWritePaths"] == ["/var/lib/tuf-signer"]
    config = load_config(CONFIG)
    assert config.audit.path.parent == Path("/var/lib/tuf-signer")
    assert settings["StateDirectory"] == ["tuf-signer"]


def test_systemd_and_the_container_run_the_same_serve() -> None:
    (exec_start,) = _settings(UNIT.read_text())["ExecStart"]
    argv = shlex.split(exec_start)
    entrypoint = container_entrypoint()
    assert Path(argv[0]).name == entrypoint[0] == "tuf-signer"
    assert argv[1:] == entrypoint[1:] == ["serve", "--config", "/etc/tuf-signer/tuf-signer.toml"]


def test_the_systemd_config_names_the_credentials() -> None:
    config = load_config(CONFIG)
    check_listen(config.server)
    credentials = {
        value.split(":")[0]: value.split(":")[1]
        for value in _settings(UNIT.read_text())["LoadCredential"]
    }
    where = Path("/run/credentials/tuf-signer.service")
    (backend,) = config.backends.values()
    assert backend.pin.file == where / "hsm-pin"
    assert config.server.tls is not None
    assert config.server.tls.key == where / "server.key"
    assert set(credentials) == {"hsm-pin", "server.key"}
    assert config.ops.listen == "127.0.0.1:9090"  # loopback on a host
