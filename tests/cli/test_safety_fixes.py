"""Issue 15's safety fixes, as a user meets them on the command line.

- an unset ``pin_env`` variable is named, with the setting that names it;
- ``sign --in-place`` without ``--metadata`` is refused before anything is sent;
- a client without TLS settings that meets a mutual-TLS server says so and
  points at the ``.env`` files.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import free_port
from tuf_signer.config._secrets import SecretSource
from tuf_signer.errors import ConfigError

from .conftest import CLI, DevSigner, _env, run

PIN_VAR = "TUF_SIGNER_TEST_UNSET_PIN"


@pytest.mark.parametrize(
    ("value", "state"),
    [(None, "it is not set"), ("  ", "it is set but empty")],
    ids=["unset", "blank"],
)
def test_a_missing_pin_variable_is_named(
    value: str | None, state: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if value is None:
        monkeypatch.delenv(PIN_VAR, raising=False)
    else:
        monkeypatch.setenv(PIN_VAR, value)
    read = SecretSource(setting="backends.hsm.pin", env=PIN_VAR).reader()
    with pytest.raises(ConfigError) as raised:
        read()
    assert raised.value.reason == (
        f"backends.hsm.pin_env: environment variable {PIN_VAR} is empty or missing "
        f"({state} in the environment this process started with)"
    )


def test_serve_names_the_unset_pin_variable(tmp_path: Path) -> None:
    config = Path(
        run(
            "dev-init", str(tmp_path / "dev"), "--listen", f"127.0.0.1:{free_port()}"
        ).stdout.strip()
    )
    text = config.read_text()
    config.write_text(text.replace('pin_file = "hsm.pin"', f'pin_env = "{PIN_VAR}"'))
    env = _env()
    env.pop(PIN_VAR, None)
    done = subprocess.run(
        [*CLI, "serve", "--config", str(config)], capture_output=True, text=True, timeout=60,
        env=env,
    )  # fmt: skip
    assert done.returncode == 1
    assert f"backends.softhsm.pin_env: environment variable {PIN_VAR} is empty or missing" in (
        done.stderr
    )
    assert "it is not set" in done.stderr


def test_sign_in_place_needs_metadata(tmp_path: Path) -> None:
    payload = run("dev-payload", "timestamp", "--version", "2").stdout
    path = tmp_path / "ts.json"
    path.write_text(payload)
    # No server listens there: the refusal must come before any connection.
    server = f"127.0.0.1:{free_port()}"
    done = run("sign", "--key", "online", "--in-place", "--server", server, str(path), check=False)
    assert done.returncode == 1
    assert done.stderr == (
        "error: --in-place needs --metadata: only a whole TUF metadata file has a "
        "'signatures' list to add the signature to\n"
    )
    assert path.read_text() == payload
    stdin = run(
        "sign", "--key", "online", "--metadata", "--in-place", "--server", server, "-",
        stdin=payload.encode(), check=False,
    )  # fmt: skip
    assert stdin.returncode == 1
    assert "error: --in-place needs a FILE, not standard input (-)" in stdin.stderr


def test_a_plaintext_client_meeting_mutual_tls_is_told_why(dev_signer: DevSigner) -> None:
    env = dev_signer.env("backend")
    for name in ("TUF_SIGNER_CA", "TUF_SIGNER_CERT", "TUF_SIGNER_KEY"):
        env.pop(name)
    done = run("keys", "list", "--timeout", "5", env=env, check=False)
    assert done.returncode == 1
    assert "refused: UNAVAILABLE" in done.stderr
    assert "hint: no TLS settings (--ca or $TUF_SIGNER_CA)" in done.stderr
    assert ". .dev/backend.env" in done.stderr
    # With its TLS settings the same client works: the hint was about them.
    assert run("keys", "list", env=dev_signer.env("admin")).returncode == 0


def test_no_hint_when_nothing_listens(tmp_path: Path) -> None:
    """A server that is not there is not a TLS problem: no hint."""
    env = _env()
    for name in ("TUF_SIGNER_CA", "TUF_SIGNER_CERT", "TUF_SIGNER_KEY"):
        env.pop(name, None)
    done = run(
        "keys", "list", "--server", f"127.0.0.1:{free_port()}", "--timeout", "3", env=env,
        check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "refused: UNAVAILABLE" in done.stderr
    assert "hint:" not in done.stderr
