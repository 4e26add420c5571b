"""SoftHSM helpers: each test uses its own configuration, in softhsm2-util only.

Nothing here loads libsofthsm2 into the test process (see tests/conftest.py).
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tuf_signer.errors import BackendError, ConfigError
from tuf_signer.testing.softhsm import (
    init_token,
    softhsm_module_path,
    token_directory,
    write_softhsm_config,
)


def show_slots(conf: Path) -> str:
    return subprocess.run(
        ["softhsm2-util", "--show-slots"],
        env={**os.environ, "SOFTHSM2_CONF": str(conf)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_write_softhsm_config(tmp_path: Path) -> None:
    conf = write_softhsm_config(tmp_path / "hsm")

    assert conf == (tmp_path / "hsm" / "softhsm2.conf").resolve()
    lines = conf.read_text().splitlines()
    assert f"directories.tokendir = {tmp_path / 'hsm' / 'tokens'}" in lines
    assert "objectstore.backend = file" in lines
    assert "log.level = ERROR" in lines
    assert stat.S_IMODE((tmp_path / "hsm" / "tokens").stat().st_mode) == 0o700
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600


def test_init_token_creates_a_token(tmp_path: Path) -> None:
    conf = write_softhsm_config(tmp_path)

    init_token(conf, "fresh", "246810", "135791")

    assert "Label:            fresh" in show_slots(conf)


def test_init_token_refuses_an_existing_label(tmp_path: Path) -> None:
    conf = write_softhsm_config(tmp_path)
    init_token(conf, "twice", "246810", "135791")

    with pytest.raises(ConfigError, match="'twice' already exists"):
        init_token(conf, "twice", "246810", "135791")


def test_init_token_failure_does_not_show_the_pins(tmp_path: Path) -> None:
    conf = write_softhsm_config(tmp_path)

    # SoftHSM refuses labels over 32 characters.
    with pytest.raises(BackendError, match=r"softhsm2-util exited with status.*32") as raised:
        init_token(conf, "x" * 40, "q7z9", "w8x4v2")

    error: BaseException | None = raised.value
    assert raised.value.__cause__ is None
    assert raised.value.__suppress_context__
    while error is not None:
        assert "q7z9" not in str(error)
        assert "w8x4v2" not in str(error)
        error = error.__cause__
    assert "x" * 40 not in show_slots(conf)


@pytest.mark.parametrize(
    ("pin", "so_pin"), [("q7z", "w8x4v2"), ("q7z9", "w" * 256)], ids=["short", "long"]
)
def test_init_token_refuses_pins_softhsm_would_reprompt_for(
    tmp_path: Path, pin: str, so_pin: str
) -> None:
    conf = write_softhsm_config(tmp_path)
    with pytest.raises(ConfigError, match="4 to 255 characters") as raised:
        init_token(conf, "bad-pin", pin, so_pin)
    assert pin not in str(raised.value)


def test_softhsm_module_path() -> None:
    path = softhsm_module_path()

    assert path.name == "libsofthsm2.so"
    assert path.is_file()


def test_token_directory_finds_the_token_by_exact_label(tmp_path: Path) -> None:
    conf = write_softhsm_config(tmp_path)
    for label in ("t", "t2"):  # one label a prefix of the other
        init_token(conf, label, "1234", "5678")

    found = {label: token_directory(conf, label) for label in ("t", "t2")}

    assert found["t"] != found["t2"]
    assert {p.parent for p in found.values()} == {tmp_path.resolve() / "tokens"}
    assert all((p / "token.object").is_file() for p in found.values())
    with pytest.raises(ConfigError, match="0 SoftHSM tokens labelled 'x'"):
        token_directory(conf, "x")
