"""Config validation: every wrong setting stops us with a message naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuf_signer.config import check_listen, load_config, parse_config
from tuf_signer.errors import ConfigError

GOOD = """
[server]
listen = "127.0.0.1:50051"
insecure = true

[audit]
path = "audit.db"

[backends.hsm]
type = "pkcs11"
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "t"
pin_env = "PIN_VAR"
"""


def _load(tmp_path: Path, text: str):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return load_config(path)


def test_good_config_resolves_paths(tmp_path: Path) -> None:
    config = _load(tmp_path, GOOD)
    assert config.audit.path == tmp_path / "audit.db"
    assert config.default_backend == "hsm"
    assert config.backends["hsm"].pin.env == "PIN_VAR"
    check_listen(config.server)


BAD = [
    ("unknown-top", GOOD + "\n[extra]\n", "extra: unknown setting"),
    (
        "unknown-server-key",
        GOOD.replace("insecure = true", "insecure = true\nport = 1"),
        "server.port: unknown setting",
    ),
    ("listen-no-port", GOOD.replace("127.0.0.1:50051", "127.0.0.1"), "server.listen"),
    (
        "insecure-not-bool",
        GOOD.replace("insecure = true", 'insecure = "yes"'),
        "server.insecure: expected bool",
    ),
    (
        "payload-limit-bool",
        GOOD.replace("insecure = true", "insecure = true\nmax_payload_bytes = true"),
        "server.max_payload_bytes: expected int, got a boolean",
    ),
    (
        "payload-limit-tiny",
        GOOD.replace("insecure = true", "insecure = true\nmax_payload_bytes = 10"),
        "server.max_payload_bytes",
    ),
    ("store-unknown", GOOD.replace('path = "audit.db"', 'store = "mongo"'), "audit.store"),
    ("no-backends", GOOD.split("[backends.hsm]")[0], "backends: at least one"),
    ("backend-type", GOOD.replace('type = "pkcs11"', 'type = "tpm"'), "backends.hsm.type"),
    (
        "backend-no-module",
        GOOD.replace('module = "/usr/lib/softhsm/libsofthsm2.so"\n', ""),
        "backends.hsm.module: missing",
    ),
    (
        "pin-inline",
        GOOD.replace('pin_env = "PIN_VAR"', 'pin_env = "PIN_VAR"\npin = "1234"'),
        "backends.hsm.pin: secrets are never written",
    ),
    (
        "pin-both",
        GOOD.replace('pin_env = "PIN_VAR"', 'pin_env = "X"\npin_file = "f"'),
        "set exactly one",
    ),
    ("pin-none", GOOD.replace('pin_env = "PIN_VAR"', ""), "set exactly one"),
    (
        "default-backend-unknown",
        GOOD + '\n[keys]\ndefault_backend = "kms"\n',
        "keys.default_backend",
    ),
    ("not-toml", "[server\n", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "match"), [(t, m) for _, t, m in BAD], ids=[i for i, _, _ in BAD])
def test_bad_config_names_the_setting(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _load(tmp_path, text)


@pytest.mark.parametrize(
    ("listen", "insecure", "match"),
    [
        ("0.0.0.0:50051", True, "loopback"),
        ("10.1.2.3:50051", True, "loopback"),
        ("example.org:50051", True, "loopback"),
        ("127.0.0.1:50051", False, "server.tls: mutual TLS is required"),
    ],
    ids=["any-address", "private-address", "hostname", "insecure-off"],
)
def test_plaintext_listener_only_on_loopback(listen: str, insecure: bool, match: str) -> None:
    config = parse_config(
        {
            "server": {"listen": listen, "insecure": insecure},
            "backends": {
                "h": {"type": "pkcs11", "module": "m", "token_label": "t", "pin_env": "P"}
            },
        },
        Path("/x/c.toml"),
    )
    with pytest.raises(ConfigError, match=match):
        check_listen(config.server)


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "localhost:50051", "[::1]:50051", "127.9.9.9:1"])
def test_loopback_addresses_accepted(listen: str) -> None:
    config = parse_config(
        {
            "server": {"listen": listen, "insecure": True},
            "backends": {
                "h": {"type": "pkcs11", "module": "m", "token_label": "t", "pin_env": "P"}
            },
        },
        Path("/x/c.toml"),
    )
    check_listen(config.server)


def test_pin_reader_reads_late_and_never_shows_the_pin(tmp_path: Path, monkeypatch) -> None:
    config = _load(tmp_path, GOOD)
    read = config.backends["hsm"].pin.reader()
    monkeypatch.delenv("PIN_VAR", raising=False)
    with pytest.raises(ConfigError, match="PIN_VAR is empty or missing"):
        read()
    monkeypatch.setenv("PIN_VAR", "s3cret-pin")
    assert read() == "s3cret-pin"
    assert "s3cret-pin" not in repr(config)
