"""Issue 10, finding 11: ``tuf-signer dev-init`` on a directory someone else prepared.

dev-init writes the CA key (anyone holding it can mint an admin certificate)
and the HSM PINs. A directory it did not create is used only when it is empty,
ours and not a symlink; everything else is refused before a byte is written.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import run

VICTIM = "the victim's own content\n"


def _no_dir(tmp: Path) -> Path:
    return tmp / "dev"


def _empty_0777(tmp: Path) -> Path:
    (tmp / "dev").mkdir()
    (tmp / "dev").chmod(0o777)
    return tmp / "dev"


def _not_empty(tmp: Path) -> Path:
    (tmp / "dev").mkdir()
    (tmp / "dev" / "notes.txt").write_text("mine\n")
    return tmp / "dev"


def _symlinked_dir(tmp: Path) -> Path:
    (tmp / "elsewhere").mkdir(mode=0o777)
    (tmp / "dev").symlink_to(tmp / "elsewhere")
    return tmp / "dev"


def _planted_admin_key(tmp: Path) -> Path:
    (tmp / "dev" / "tls").mkdir(parents=True)
    (tmp / "dev").chmod(0o777)
    (tmp / "dev" / "tls" / "admin.key").symlink_to(tmp / "victim")
    return tmp / "dev"


def _readable_ca_key(tmp: Path) -> Path:
    (tmp / "dev" / "tls").mkdir(parents=True)
    (tmp / "dev" / "tls" / "ca.key").write_text("")
    (tmp / "dev" / "tls" / "ca.key").chmod(0o644)
    return tmp / "dev"


def _a_file(tmp: Path) -> Path:
    (tmp / "dev").write_text("not a directory\n")
    return tmp / "dev"


def _not_ours(tmp: Path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("needs root to hand a directory to another user")
    (tmp / "dev").mkdir()
    os.chown(tmp / "dev", 65534, 65534)
    return tmp / "dev"


# id: (prepare DIR, error naming DIR or None when dev-init must succeed)
CASES: dict[str, tuple[Callable[[Path], Path], str | None]] = {
    "f11-new-dir": (_no_dir, None),
    "f11-empty-0777-dir-becomes-0700": (_empty_0777, None),
    "f11-non-empty-dir": (_not_empty, "is not empty"),
    "f11-symlinked-dir": (_symlinked_dir, "is a symbolic link"),
    "f11-planted-symlink-at-tls-admin-key": (_planted_admin_key, "is not empty"),
    "f11-world-readable-ca-key": (_readable_ca_key, "is not empty"),
    "f11-dir-is-a-file": (_a_file, "is not a directory"),
    "f11-empty-dir-of-another-user": (_not_ours, "belongs to uid 65534"),
}

SECRETS = {"hsm.pin", "hsm.so-pin", "softhsm2.conf", "ca.key", "server.key", "backend.key",
           "admin.key"}  # fmt: skip


def _snapshot(root: Path) -> dict[str, tuple[int, bytes | str]]:
    """Every path under ``root``: its mode and content (or link target)."""
    found: dict[str, tuple[int, bytes | str]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        body: bytes | str = (
            os.readlink(path) if path.is_symlink() else path.read_bytes() if path.is_file() else b""
        )
        found[str(path.relative_to(root))] = (st.st_mode, body)
    return found


@pytest.mark.parametrize(("prepare", "error"), list(CASES.values()), ids=list(CASES))
def test_dev_init_on_a_hostile_directory(
    tmp_path: Path, prepare: Callable[[Path], Path], error: str | None
) -> None:
    (tmp_path / "victim").write_text(VICTIM)
    (tmp_path / "victim").chmod(0o600)
    directory = prepare(tmp_path)
    before = _snapshot(tmp_path)
    out = run("dev-init", str(directory), "--listen", "127.0.0.1:1", check=False)
    assert (tmp_path / "victim").read_text() == VICTIM
    if error is not None:
        assert out.returncode == 1, out.stdout
        assert out.stderr.startswith(f"error: dev-init: {directory} {error}"), out.stderr
        assert _snapshot(tmp_path) == before, "dev-init changed something before refusing"
        return

    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(directory / "tuf-signer.toml")
    assert stat.S_IMODE(directory.lstat().st_mode) == 0o700
    for path in directory.rglob("*"):
        st = path.lstat()
        mode = stat.S_IMODE(st.st_mode)
        assert st.st_uid == os.geteuid(), path
        assert not stat.S_ISLNK(st.st_mode), path
        if stat.S_ISDIR(st.st_mode):
            assert mode == 0o700, f"{path}: {mode:o}"
        elif path.name in SECRETS or path.parent.name == "tokens" or path.name.startswith("audit"):
            assert mode & 0o077 == 0, f"{path}: {mode:o}"
        else:
            assert mode & 0o022 == 0, f"{path}: {mode:o}"
    tls = directory / "tls"
    assert {p.name for p in tls.iterdir()} >= {
        f"{n}.{e}" for n in ("ca", "admin") for e in ["key", "crt"]
    }
    assert stat.S_IMODE((tls / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tls / "ca.crt").stat().st_mode) == 0o644
