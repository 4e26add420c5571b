"""What the tests of the native checks share: loading one, its compile check, atheris.

``make test`` sets TUF_SIGNER_REQUIRE_NATIVE=1: there a native check that did
not build fails its test module instead of skipping it.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from types import ModuleType

import pytest

REQUIRED = os.environ.get("TUF_SIGNER_REQUIRE_NATIVE") == "1"


def native_or_skip(name: str, needs: str) -> ModuleType:
    """``tuf_signer.policy.<name>``; else fail (``make test``) or skip the calling module."""
    try:
        return importlib.import_module(f"tuf_signer.policy.{name}")
    except ImportError:
        if REQUIRED:
            pytest.fail(
                f"tuf_signer.policy.{name} is not built (needs {needs}; "
                "pip install -e . rebuilds it)",
                pytrace=False,
            )
        pytest.skip(f"the {name} extension is not built", allow_module_level=True)


def check_warning_free(source: Path) -> None:
    """-Wall -Wextra -Werror clean (setup.py leaves -Werror out of the build itself)."""
    include = sysconfig.get_paths()["include"]
    if shutil.which("gcc") is None or not Path(include, "Python.h").exists():
        pytest.skip("no gcc or no Python headers")
    subprocess.run(
        ["gcc", "-fsyntax-only", "-O2", "-Wall", "-Wextra", "-Werror", f"-I{include}", source],
        check=True,
        capture_output=True,
    )


def run_atheris(harness: Path, tmp_path: Path, seconds: int, *args: str) -> None:
    """Run an atheris harness for ``seconds``: no disagreement, no crash."""
    pytest.importorskip("atheris")
    run = subprocess.run(
        [
            sys.executable,
            harness,
            f"-max_total_time={seconds}",
            "-timeout=10",
            f"-artifact_prefix={tmp_path}/",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    assert "Done" in run.stderr, run.stderr[-2000:]
