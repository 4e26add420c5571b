"""Files and directories created for the first time, never written through.

``dev-init`` writes PINs, the CA key and client keys. A file or symlink planted
where one of them goes must make it fail, not be overwritten or followed, and
every file gets the mode asked for whatever the umask or a pre-made file said.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from tuf_signer.errors import ConfigError

__all__ = ["PUBLIC", "SECRET", "make_private_dir", "write_new"]

SECRET = 0o600  # PINs, private keys, the SoftHSM config
PUBLIC = 0o644  # certificates, config files without secrets

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def write_new(path: Path, data: bytes | str, mode: int) -> None:
    """Create ``path`` (which must not exist, not even as a symlink) with ``mode`` and ``data``.

    ``O_EXCL`` refuses an existing file or symlink, dangling or not (with
    ``O_CREAT`` it never follows one); ``O_NOFOLLOW`` says so twice. The mode
    is set with ``fchmod`` so that the umask cannot change it.

    Raises:
        ConfigError: ``path`` exists (as anything), or cannot be created or written.
    """
    content = data.encode("utf-8") if isinstance(data, str) else data
    try:
        fd = os.open(path, _CREATE, mode)
    except FileExistsError as e:
        raise ConfigError(f"{path} exists already (refusing to write through it)") from e
    except OSError as e:
        raise ConfigError(f"cannot create {path}: {e.strerror}") from e
    try:
        os.fchmod(fd, mode)
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror}") from e
    finally:
        os.close(fd)


def make_private_dir(path: Path, *, empty_ok: bool = False) -> None:
    """Create directory ``path`` with mode 0700, or, if ``empty_ok``, adopt an empty one.

    An existing directory is adopted only when it is a real directory (not a
    symlink), owned by this user and empty once it is 0700: it is opened
    without following links, listed, chmod'ed through that descriptor, then
    listed again, so nothing another user slipped in before the chmod goes
    unnoticed. Missing
    parents are created with default modes, like ``mkdir -p``.

    Raises:
        ConfigError: ``path`` exists and may not be adopted, naming why.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, 0o700)
    except FileExistsError:
        if not empty_ok:
            raise ConfigError(f"{path} exists already") from None
    except OSError as e:
        raise ConfigError(f"cannot create {path}: {e.strerror}") from e
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR) and stat.S_ISLNK(os.lstat(path).st_mode):
            raise ConfigError(f"{path} is a symbolic link") from e
        if e.errno == errno.ENOTDIR:
            raise ConfigError(f"{path} is not a directory") from e
        raise ConfigError(f"cannot open {path}: {e.strerror}") from e
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise ConfigError(f"{path} belongs to uid {st.st_uid}, not to this user")
        if os.listdir(fd):
            raise ConfigError(f"{path} is not empty")
        os.fchmod(fd, 0o700)  # mkdir's mode is masked by the umask; a pre-made one had any
        if os.listdir(fd):  # slipped in before the chmod
            raise ConfigError(f"{path} is not empty")
    finally:
        os.close(fd)
