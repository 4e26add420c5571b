"""Secrets the config names but never holds: PIN files and variables, connection strings."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tuf_signer.errors import ConfigError, TufSignerError


@dataclass(frozen=True)
class SecretSource:
    """Where a secret is read from: a file (mode 0600) or an environment variable.

    The value itself is never kept in a config object, so it cannot leak
    through ``repr`` or a traceback.
    """

    setting: str
    file: Path | None = None
    env: str | None = None

    @property
    def named_by(self) -> str:
        """The setting that names this source as the config spells it (``…pin_env``)."""
        suffix = "_file" if self.file is not None else "_env"
        return self.setting if self.setting.endswith(suffix) else self.setting + suffix

    def reader(self) -> Callable[[], str]:
        """A callable that reads the secret when it is needed.

        Raises (when called):
            ConfigError: the file or variable is missing or empty.
        """

        def read() -> str:
            if self.file is not None:
                try:
                    value = self.file.read_text(encoding="utf-8").strip()
                except OSError as e:
                    raise ConfigError(
                        f"{self.named_by}: cannot read {self.file}: {e.strerror}"
                    ) from e
                where = str(self.file)
            else:
                assert self.env is not None
                raw = os.environ.get(self.env)
                value = (raw or "").strip()
                if not value:
                    state = "it is not set" if raw is None else "it is set but empty"
                    raise ConfigError(
                        f"{self.named_by}: environment variable {self.env} is empty or "
                        f"missing ({state} in the environment this process started with)"
                    )
                where = f"environment variable {self.env}"
            if not value:
                raise ConfigError(f"{self.named_by}: {where} is empty or missing")
            return value

        return read


def check_secret_file(path: Path, setting: str) -> None:
    """Refuse a secret file that others could read or change.

    Raises:
        ConfigError: the file is missing, not a regular file, or its mode lets
            group or others read or write it.
    """
    try:
        st = path.stat()
    except OSError as e:
        raise ConfigError(f"{setting}: cannot read {path}: {e.strerror}") from e
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{setting}: {path} is not a regular file")
    if st.st_mode & 0o077:
        raise ConfigError(
            f"{setting}: {path} is accessible to group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run chmod 600 on it"
        )


def dsn_secrets(dsn: str, setting: str) -> list[str]:
    """The names of the secrets in a connection string that must parse.

    Raises:
        ConfigError: psycopg is missing, or ``dsn`` is not a connection string
            (the message never repeats it).
    """
    # Imported here, not at the top: only a postgres store needs the audit package.
    from tuf_signer.audit import dsn_secrets as secret_names

    try:
        return secret_names(dsn)
    except TufSignerError as e:
        raise ConfigError(f"{setting}: {e.reason}") from e


def check_dsn(dsn: str) -> None:
    """A connection string written in the file must parse and hold no password.

    Raises:
        ConfigError: it is empty, does not parse, or holds a secret.
    """
    if not dsn.strip():
        raise ConfigError("audit.dsn: empty; write a libpq connection string")
    secrets = dsn_secrets(dsn, "audit.dsn")
    if secrets:
        raise ConfigError(
            f"audit.dsn: holds a {secrets[0]}, and secrets are never written in the config; "
            "put the connection string in an environment variable named by audit.dsn_env, "
            "or the password in a libpq password file (passfile)"
        )
