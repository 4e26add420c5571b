"""``serve`` says at start-up when payloads are checked without a native check (issue 16).

Without it every payload runs the pure-Python reference (~3 times the CPU per
PEP 458 bin): an install that silently lost the extension (no C compiler)
would only show as a slow signer.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from ..conftest import free_port
from .conftest import CLI, _env, credentials, run, wait_healthy

WARNING = "a native payload check is not in use"


@pytest.mark.parametrize(("native", "warned"), [("0", True), ("1", False)])
def test_serve_warns_when_the_native_check_is_off(
    tmp_path: Path, native: str, warned: bool
) -> None:
    directory = tmp_path / "dev"
    address = f"127.0.0.1:{free_port()}"
    witness = f"127.0.0.1:{free_port()}"
    config = run(
        "dev-init", str(directory), "--listen", address, "--witness-listen", witness
    ).stdout.strip()
    stderr = tmp_path / "stderr"
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            [*CLI, "serve", "--config", config],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=_env() | {"TUF_SIGNER_NATIVE": native},
        )
        try:
            wait_healthy(address, proc, credentials(directory, "admin"))
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
    text = stderr.read_text()
    assert (WARNING in text) is warned, text
    if warned:  # both checks named, and why
        assert "_ccanonical: TUF_SIGNER_NATIVE=0 is set" in text
        assert "_cbins: TUF_SIGNER_NATIVE=0 is set" in text
