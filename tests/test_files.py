"""Exclusive, no-follow file creation (issue 10, finding 11, below dev-init's directory check)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tuf_signer._files import PUBLIC, SECRET, make_private_dir, write_new
from tuf_signer.errors import ConfigError
from tuf_signer.testing.softhsm import write_softhsm_config

VICTIM = "the victim's own content\n"


@pytest.fixture
def victim(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "victim"
    path.write_text(VICTIM)
    path.chmod(0o600)
    yield path
    assert path.read_text() == VICTIM, "written through"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def _planted_symlink(tmp: Path, victim: Path) -> Path:
    (tmp / "planted").symlink_to(victim)
    return tmp / "planted"


def _dangling_symlink(tmp: Path, victim: Path) -> Path:
    (tmp / "planted").symlink_to(tmp / "would-be-created")
    return tmp / "planted"


def _existing_readable_file(tmp: Path, victim: Path) -> Path:
    (tmp / "planted").write_text("")
    (tmp / "planted").chmod(0o644)
    return tmp / "planted"


WRITES: dict[str, Callable[[Path, Path], Path]] = {
    "f11-write-planted-symlink": _planted_symlink,
    "f11-write-dangling-symlink": _dangling_symlink,
    "f11-write-existing-file": _existing_readable_file,
}


@pytest.mark.parametrize("plant", list(WRITES.values()), ids=list(WRITES))
def test_write_new_refuses_what_is_there(
    tmp_path: Path, victim: Path, plant: Callable[[Path, Path], Path]
) -> None:
    path = plant(tmp_path, victim)
    before = os.lstat(path)
    with pytest.raises(ConfigError, match="exists already"):
        write_new(path, "secret\n", SECRET)
    after = os.lstat(path)
    assert (after.st_ino, after.st_mode, after.st_size) == (
        before.st_ino,
        before.st_mode,
        before.st_size,
    )
    assert not (tmp_path / "would-be-created").exists()


@pytest.mark.parametrize(
    ("umask", "mode"),
    [(0o077, PUBLIC), (0o000, SECRET), (0o022, SECRET)],
    ids=["f11-write-mode-public-under-umask-077", "f11-write-mode-secret-under-umask-0",
         "f11-write-mode-secret-under-umask-022"],
)  # fmt: skip
def test_write_new_sets_the_mode_asked_for(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        write_new(tmp_path / "f", b"data", mode)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == mode
    assert (tmp_path / "f").read_bytes() == b"data"


def test_f11_softhsm_config_is_not_written_through_a_symlink(tmp_path: Path, victim: Path) -> None:
    (tmp_path / "hsm").mkdir()
    (tmp_path / "hsm" / "softhsm2.conf").symlink_to(victim)
    with pytest.raises(ConfigError, match="exists already"):
        write_softhsm_config(tmp_path / "hsm")


DIRS: dict[str, tuple[Callable[[Path], Path], bool, str]] = {
    "f11-dir-existing-not-adopted": (lambda t: _mkdir(t / "d"), False, "exists already"),
    "f11-dir-symlink-to-empty-dir": (
        lambda t: _symlink(t / "d", _mkdir(t / "target")),
        True,
        "is a symbolic link",
    ),
    "f11-dir-not-empty": (lambda t: _touch(_mkdir(t / "d") / "x").parent, True, "is not empty"),
}


def _mkdir(path: Path) -> Path:
    path.mkdir(mode=0o777)
    path.chmod(0o777)
    return path


def _symlink(path: Path, target: Path) -> Path:
    path.symlink_to(target)
    return path


def _touch(path: Path) -> Path:
    path.write_text("")
    return path


@pytest.mark.parametrize(("prepare", "empty_ok", "error"), list(DIRS.values()), ids=list(DIRS))
def test_make_private_dir_refuses(
    tmp_path: Path, prepare: Callable[[Path], Path], empty_ok: bool, error: str
) -> None:
    path = prepare(tmp_path)
    mode = os.lstat(path).st_mode
    with pytest.raises(ConfigError, match=error):
        make_private_dir(path, empty_ok=empty_ok)
    assert os.lstat(path).st_mode == mode  # refused before any chmod
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o777


def test_make_private_dir_adopts_an_empty_directory_as_0700(tmp_path: Path) -> None:
    path = _mkdir(tmp_path / "d")
    make_private_dir(path, empty_ok=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    make_private_dir(tmp_path / "new" / "dir")
    assert stat.S_IMODE((tmp_path / "new" / "dir").stat().st_mode) == 0o700
