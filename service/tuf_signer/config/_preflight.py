"""Checks run before a server starts: the listener it may open, the secret files it reads."""

from __future__ import annotations

from tuf_signer._net import is_loopback, split_host_port
from tuf_signer.config._secrets import SecretSource, check_secret_file
from tuf_signer.config._settings import Config, ServerConfig
from tuf_signer.errors import ConfigError


def check_listen(server: ServerConfig) -> None:
    """Mutual TLS, or plaintext only when declared and only on loopback.

    Raises:
        ConfigError: no TLS and not ``insecure``; both; or a plaintext listener
            on an address that is not loopback.
    """
    host, port = split_host_port(server.listen)
    if server.workers > 1 and port == 0:
        raise ConfigError("server.workers: several workers need a fixed port, not port 0")
    if server.insecure:
        if server.tls is not None:
            raise ConfigError("server.insecure: contradicts [server.tls]; remove one of them")
        if not is_loopback(host):
            raise ConfigError(
                f"server.listen: a plaintext (insecure) listener must be on a loopback "
                f"address, not {host!r}"
            )
    elif server.tls is None:
        raise ConfigError(
            "server.tls: mutual TLS is required (cert, key, client_ca); for a plaintext "
            "loopback listener set `insecure = true` explicitly"
        )


def check_secrets(config: Config) -> None:
    """Check every secret file the server will read (run at server start).

    Raises:
        ConfigError: naming the first secret file that is unsafe.
    """
    if config.server.tls is not None:
        check_secret_file(config.server.tls.key, "server.tls.key")
        for name in ("cert", "client_ca", "crl", "deny_list"):
            path = getattr(config.server.tls, name)
            if path is not None and not path.is_file():
                raise ConfigError(f"server.tls.{name}: {path} does not exist")
    for name, backend in config.backends.items():
        pin = getattr(backend, "pin", None)
        if isinstance(pin, SecretSource) and pin.file is not None:
            check_secret_file(pin.file, f"backends.{name}.pin_file")
