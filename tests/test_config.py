"""Config validation: every wrong setting stops us with a message naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuf_signer.config import (
    AuditConfig,
    check_listen,
    load_config,
    open_audit_store,
    parse_config,
)
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


PG = 'store = "postgres"\ndsn = "host=db.internal dbname=tuf_audit user=tuf"'


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
    # [audit]: each store takes its own settings, and a connection string in the
    # file never holds a password.
    (
        "audit-unknown-key",
        GOOD.replace('path = "audit.db"', 'path = "audit.db"\nhost = "db"'),
        "audit.host: unknown setting",
    ),
    (
        "postgres-no-dsn",
        GOOD.replace('path = "audit.db"', 'store = "postgres"'),
        r"audit.dsn / audit.dsn_env: set exactly one",
    ),
    (
        "postgres-dsn-and-env",
        GOOD.replace('path = "audit.db"', PG + '\ndsn_env = "AUDIT_DSN"'),
        r"audit.dsn / audit.dsn_env: set exactly one",
    ),
    (
        "postgres-with-path",
        GOOD.replace('path = "audit.db"', PG + '\npath = "audit.db"'),
        "audit.path: only for store 'sqlite', not 'postgres'",
    ),
    (
        "sqlite-with-dsn",
        GOOD.replace('path = "audit.db"', 'dsn = "host=db"'),
        "audit.dsn: only for store 'postgres', not 'sqlite'",
    ),
    (
        "sqlite-with-dsn-env",
        GOOD.replace('path = "audit.db"', 'store = "sqlite"\ndsn_env = "AUDIT_DSN"'),
        "audit.dsn_env: only for store 'postgres', not 'sqlite'",
    ),
    (
        "dsn-password",
        GOOD.replace('path = "audit.db"', PG.replace("user=tuf", "user=tuf password=pw")),
        "audit.dsn: holds a password, and secrets are never written in the config",
    ),
    (
        "dsn-uri-password",
        GOOD.replace('path = "audit.db"', 'store = "postgres"\ndsn = "postgresql://tuf:pw@db/a"'),
        "audit.dsn: holds a password",
    ),
    (
        "dsn-sslpassword",
        GOOD.replace('path = "audit.db"', PG.replace("user=tuf", "user=tuf sslpassword=pw")),
        "audit.dsn: holds a sslpassword",
    ),
    (
        "dsn-malformed",
        GOOD.replace('path = "audit.db"', 'store = "postgres"\ndsn = "host=db user"'),
        "audit.dsn: the PostgreSQL connection string is not valid",
    ),
    (
        "dsn-empty",
        GOOD.replace('path = "audit.db"', 'store = "postgres"\ndsn = " "'),
        "audit.dsn: empty",
    ),
    (
        "dsn-not-a-string",
        GOOD.replace('path = "audit.db"', 'store = "postgres"\ndsn = 5432'),
        "audit.dsn: expected str",
    ),
    (
        "dsn-env-empty-name",
        GOOD.replace('path = "audit.db"', 'store = "postgres"\ndsn_env = ""'),
        "audit.dsn_env: names no environment variable",
    ),
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


def test_postgres_store_from_the_file(tmp_path: Path) -> None:
    config = _load(tmp_path, GOOD.replace('path = "audit.db"', PG))
    assert config.audit == AuditConfig(
        store="postgres", dsn="host=db.internal dbname=tuf_audit user=tuf"
    )
    assert config.audit.read_dsn() == "host=db.internal dbname=tuf_audit user=tuf"


def test_postgres_dsn_env_is_read_late_and_never_shown(tmp_path: Path, monkeypatch) -> None:
    text = GOOD.replace('path = "audit.db"', 'store = "postgres"\ndsn_env = "DB"')
    config = _load(tmp_path, text)
    monkeypatch.delenv("DB", raising=False)
    with pytest.raises(ConfigError, match=r"audit\.dsn_env: environment variable DB is empty"):
        config.audit.read_dsn()
    # libpq would quote this one back in its error; the message must not.
    monkeypatch.setenv("DB", "postgresql://tuf:s3cret-pw@[::1/audit")
    with pytest.raises(ConfigError, match=r"audit.dsn_env \(DB\): .* not valid") as caught:
        config.audit.read_dsn()
    assert "s3cret-pw" not in str(caught.value)
    monkeypatch.setenv("DB", "host=db user=tuf password=s3cret-pw")
    assert config.audit.read_dsn() == "host=db user=tuf password=s3cret-pw"
    assert "s3cret-pw" not in repr(config)


def test_missing_sqlite_file_is_not_created_by_audit_commands(tmp_path: Path) -> None:
    config = _load(tmp_path, GOOD)
    with pytest.raises(ConfigError, match=r"audit\.path: .*audit\.db does not exist"):
        open_audit_store(config.audit, create=False)
    assert not (tmp_path / "audit.db").exists()
