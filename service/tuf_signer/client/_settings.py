"""Where the Signer plugin finds its server and TLS files, without the caller's environment.

RSTUF builds its signers inside ``isolated_env()``, which empties ``os.environ``
but for ``ONLINE_KEY_DIR`` (and a few cloud variables). So the plugin looks in
three places, in this order, and takes every setting from the first that has any:

1. the variables ``TUF_SIGNER_SERVER``, ``TUF_SIGNER_CA``, ``TUF_SIGNER_CERT``,
   ``TUF_SIGNER_KEY``, ``TUF_SIGNER_INSECURE``;
2. the TOML file named by ``TUF_SIGNER_CLIENT_CONFIG`` (it must exist);
3. ``$ONLINE_KEY_DIR/tuf-signer-client.toml``, when that file exists.

The file holds ``server``, ``ca``, ``cert``, ``key`` and ``insecure``; relative
paths are relative to the file. Settings are read when a signer is built and
kept with it (``isolated_env()`` is gone by the time RSTUF signs). There is no
default server: a URI without ``HOST:PORT`` and no server in the settings is an
error naming every place looked, and plaintext still goes to loopback only.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuf_signer.client._tls import (
    CA_ENV,
    CERT_ENV,
    INSECURE_ENV,
    KEY_ENV,
    SERVER_ENV,
    TlsConfig,
    _is_loopback_target,
)
from tuf_signer.errors import ConfigError

CONFIG_ENV = "TUF_SIGNER_CLIENT_CONFIG"
ONLINE_KEY_DIR_ENV = "ONLINE_KEY_DIR"  # RSTUF's directory of online-key material
SETTINGS_FILE_NAME = "tuf-signer-client.toml"
SETTINGS_ENVS = (SERVER_ENV, CA_ENV, CERT_ENV, KEY_ENV, INSECURE_ENV)
_FILE_KEYS = ("server", "ca", "cert", "key", "insecure")
_MAX_FILE_BYTES = 64 * 1024  # a settings file is a few lines; refuse to parse a huge one


@dataclass(frozen=True)
class ClientSettings:
    """The server and TLS files a signer uses, and where they came from.

    Attributes:
        server: ``HOST:PORT`` from the settings, or None.
        tls: TLS files (paths absolute when they came from a file).
        source: where the settings came from, for messages.
        looked: every place looked, in order, with what was found there.
    """

    server: str | None
    tls: TlsConfig
    source: str
    looked: tuple[str, ...]

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None) -> ClientSettings:
        """Find the settings: variables, else ``$TUF_SIGNER_CLIENT_CONFIG``, else the key dir.

        Args:
            environ: the environment to read (default ``os.environ``).

        Raises:
            ConfigError: the place that has settings holds bad ones: a file
                that is missing (named by ``TUF_SIGNER_CLIENT_CONFIG``),
                unreadable, not TOML, with unknown keys or wrong types, naming
                a certificate or key file that cannot be read, or
                contradictory TLS settings. The message names the file and key.
        """
        env = os.environ if environ is None else environ
        set_vars = [name for name in SETTINGS_ENVS if env.get(name)]
        if set_vars:
            source = "$" + ", $".join(set_vars)
            return cls(
                server=env.get(SERVER_ENV) or None,
                tls=TlsConfig.from_env(environ=env),
                source=source,
                looked=(f"{source} (set)",),
            )
        looked = ["$TUF_SIGNER_SERVER, _CA, _CERT, _KEY, _INSECURE (none set)"]
        named = env.get(CONFIG_ENV)
        if named:
            path = Path(named)
            return _from_file(path, f"${CONFIG_ENV}", (*looked, f"${CONFIG_ENV} = {path}"))
        online_dir = env.get(ONLINE_KEY_DIR_ENV)
        looked.append(f"${CONFIG_ENV} (not set)")
        if not online_dir:
            looked.append(
                f"${ONLINE_KEY_DIR_ENV}/{SETTINGS_FILE_NAME} (${ONLINE_KEY_DIR_ENV} not set)"
            )
            return cls(None, TlsConfig(), "no settings", tuple(looked))
        path = Path(online_dir, SETTINGS_FILE_NAME)
        if not os.path.lexists(path):
            looked.append(f"{path} (no such file)")
            return cls(None, TlsConfig(), "no settings", tuple(looked))
        return _from_file(path, f"${ONLINE_KEY_DIR_ENV}", (*looked, str(path)))

    def endpoint(self, uri_server: str | None, uri: str) -> tuple[str, TlsConfig]:
        """The server and TLS settings for a URI: its own ``HOST:PORT``, else ``server``.

        Raises:
            ConfigError: no server anywhere, or plaintext to a host that is not
                loopback without ``insecure``; names every place looked.
        """
        server = uri_server or self.server
        where = "; ".join(self.looked)
        if server is None:
            raise ConfigError(
                f"{uri}: no tuf-signer server: the URI names none (tufsigner://HOST:PORT/KEY) "
                f"and no settings give one; looked in: {where}"
            )
        if not (self.tls.secure or self.tls.insecure or _is_loopback_target(server)):
            raise ConfigError(
                f"{uri}: no CA for {server!r}, so the channel would be plaintext, and "
                f"{server!r} is not a loopback address; settings from {self.source}; "
                f"looked in: {where}. Set a CA for TLS, or allow plaintext explicitly "
                f"(insecure = true in the file, {INSECURE_ENV}=1)"
            )
        return server, self.tls


def _from_file(path: Path, named_by: str, looked: tuple[str, ...]) -> ClientSettings:
    """Read and check one settings file (see the module docstring)."""
    where = f"client settings {path} (from {named_by})"
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file") from None
    except OSError as e:
        raise ConfigError(f"{where}: cannot read it: {e.strerror}") from e
    if len(data) > _MAX_FILE_BYTES:
        raise ConfigError(f"{where}: larger than {_MAX_FILE_BYTES} bytes")
    try:
        table = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{where}: not TOML: {e}") from e
    unknown = sorted(set(table) - set(_FILE_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {unknown}; known: {', '.join(_FILE_KEYS)}")
    server = _string(table, "server", where)
    insecure = table.get("insecure", False)
    if not isinstance(insecure, bool):
        raise ConfigError(f"{where}: insecure must be true or false")
    base = path.parent
    files = {name: _pem_file(table, name, base, where) for name in ("ca", "cert", "key")}
    ca, cert, key = files["ca"], files["cert"], files["key"]
    if (cert is None) != (key is None):
        given, missing = ("cert", "key") if key is None else ("key", "cert")
        raise ConfigError(f"{where}: {given} is set but {missing} is not: give both or neither")
    if cert is not None and ca is None:
        raise ConfigError(f"{where}: cert and key need ca, the CA that issued the server's")
    if insecure and ca is not None:
        raise ConfigError(f"{where}: insecure = true asks for plaintext but ca is set")
    tls = TlsConfig(ca=ca, cert=cert, key=key, insecure=insecure)
    return ClientSettings(server, tls, where, looked)


def _string(table: dict[str, Any], name: str, where: str) -> str | None:
    value = table.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value or value != value.strip() or "\n" in value:
        raise ConfigError(f"{where}: {name} must be a non-empty string without spaces around it")
    return value


def _pem_file(table: dict[str, Any], name: str, base: Path, where: str) -> Path | None:
    """The absolute path of a PEM file setting, checked readable now (secrets never shown)."""
    value = _string(table, name, where)
    if value is None:
        return None
    path = base / value  # an absolute value stays absolute
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{where}: {name} = {value!r}: cannot read {path}: {e.strerror}") from e
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{where}: {name} = {value!r}: {path} holds no PEM data")
    return path
