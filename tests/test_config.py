"""Config validation: every wrong setting stops us with a message naming it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from tuf_signer.audit._note import COSIGNATURE_V1, ED25519, VerifierKey
from tuf_signer.config import (
    AuditConfig,
    LogConfig,
    TlsConfig,
    check_listen,
    load_audit_config,
    load_config,
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


# The configuration reference in the README: `setting` | default | meaning.
_README = Path(__file__).resolve().parents[1] / "README.md"
_ROW = re.compile(r"^\| (`(?:server|limits|audit|policy|ops)\.[^|]*) \| ([^|]+) \|", re.MULTILINE)
_ATTRIBUTE = {
    "call_deadline_seconds": "call_deadline",
    "check_timeout_seconds": "check_timeout",
    "checkpoint_interval_seconds": "checkpoint_interval",
    "witness_timeout_seconds": "witness_timeout",
}
# The log's settings exist only with audit.origin and audit.key: their defaults are the dataclass's.
_LOG_DEFAULTS = LogConfig(origin="o", key_backend="b", key_handle="h")
_UNITS = {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def _documented(value: str) -> object:
    value = value.strip()
    if (sized := re.fullmatch(r"(\d+) ([KMG]iB)", value)) is not None:
        return int(sized[1]) * _UNITS[sized[2]]
    value = re.sub(r"^`([^`]*)`.*$", r"\1", value)  # `10` (at most half ...) -> 10
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value  # a bare word: sqlite, audit.db, 127.0.0.1:50051


def _documented_defaults() -> list[tuple[str, object]]:
    found = []
    for names, values in _ROW.findall(_README.read_text()):
        if values.strip() == "—":
            continue
        parts = [n.strip("` ") for n in names.split(" / ")]
        section = parts[0].partition(".")[0]
        for name, value in zip(parts, values.split(" / "), strict=True):
            found.append((name if "." in name else f"{section}.{name}", _documented(value)))
    return found


def test_the_readme_documents_the_defaults_the_parser_applies(tmp_path: Path) -> None:
    minimal = GOOD[GOOD.index("[backends.hsm]") :]  # every setting with a default left out
    config = _load(tmp_path, minimal)
    documented = _documented_defaults()
    assert len(documented) >= 30  # the table was found and read
    for name, expected in documented:
        *path, key = name.split(".")
        if path == ["server", "tls"]:  # TLS needs files: its defaults are the dataclass's
            owner: object = TlsConfig(cert=Path(), key=Path(), client_ca=Path())
        elif path == ["audit"] and hasattr(_LOG_DEFAULTS, _ATTRIBUTE.get(key, key)):
            owner = _LOG_DEFAULTS
        else:
            owner = getattr(config, path[0])
        actual = getattr(owner, _ATTRIBUTE.get(key, key))
        if isinstance(actual, Path):
            actual = actual.name  # resolved against the config's folder
        assert actual == expected, f"README: {name} defaults to {expected!r}; parsed: {actual!r}"


def test_check_timeout_left_out_is_at_most_half_the_call_deadline(tmp_path: Path) -> None:
    text = GOOD.replace("insecure = true", "insecure = true\ncall_deadline_seconds = 4")
    assert _load(tmp_path, text).server.check_timeout == 2.0


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


# [policy] max_version_step (issue 10, finding 8).
BAD += [
    ("f8-step-unknown-class", GOOD + "[policy]\nmax_version_step = { root = 5 }\n",
     "policy.max_version_step.root: unknown setting"),
    ("f8-step-zero", GOOD + "[policy]\nmax_version_step = { snapshot = 0 }\n",
     "policy.max_version_step.snapshot: must be between 1 and 2\\*\\*63-1, got 0"),
    ("f8-step-negative", GOOD + "[policy]\nmax_version_step = { timestamp = -1 }\n",
     "policy.max_version_step.timestamp: must be between 1"),
    ("f8-step-not-int", GOOD + '[policy]\nmax_version_step = { targets = "10" }\n',
     "policy.max_version_step.targets: expected int, got str"),
    ("f8-step-bool", GOOD + "[policy]\nmax_version_step = { targets = true }\n",
     "policy.max_version_step.targets: expected int, got a boolean"),
    ("f8-step-not-table", GOOD + "[policy]\nmax_version_step = 5\n",
     "policy.max_version_step: expected a table"),
    ("f8-policy-unknown", GOOD + "[policy]\nstep = 5\n", "policy.step: unknown setting"),
]  # fmt: skip


# Abuse limits and the off-loop payload checker (issue 10, findings 4 and 5).
BAD += [
    ("f4-bytes-rate-zero", GOOD + "[limits]\nbytes_rate = 0\n",
     "limits.bytes_rate: must be positive"),
    ("f4-bytes-burst-float", GOOD + "[limits]\nbytes_burst = 1.5\n",
     "limits.bytes_burst: expected int, got float"),
    ("f4-summary-negative", GOOD + "[limits]\nsummary_seconds = -1\n",
     "limits.summary_seconds: must be positive"),
    ("f4-summary-too-long", GOOD + "[limits]\nsummary_seconds = 7200\n",
     "limits.summary_seconds: at most 3600"),
    ("f5-check-cpu-zero", GOOD + "[limits]\ncheck_cpu_burst = 0\n",
     "limits.check_cpu_burst: must be positive"),
    ("f5-check-processes-zero",
     GOOD.replace("insecure = true", "insecure = true\ncheck_processes = 0"),
     "server.check_processes: must be between 1 and 16"),
    ("f5-check-timeout-past-deadline",
     GOOD.replace("insecure = true", "insecure = true\ncheck_timeout_seconds = 40"),
     "server.check_timeout_seconds: must be positive and below call_deadline_seconds"),
]  # fmt: skip


# Bounded resources (issue 12, finding 4).
def _srv(line: str) -> str:
    return GOOD.replace("insecure = true", "insecure = true\n" + line)


BAD += [
    ("i12-streams-zero", _srv("max_streams_per_connection = 0"),
     "server.max_streams_per_connection: must be between 1 and 100,000, got 0"),
    ("i12-connections-float", _srv("max_connections = 1.5"),
     "server.max_connections: expected int, got float"),
    ("i12-calls-zero", _srv("max_calls = 0"), "server.max_calls: must be between 1 and"),
    ("i12-streams-in-all-too-many",
     _srv("max_connections = 20000\nmax_streams_per_connection = 100"),
     "server.max_connections times server.max_streams_per_connection: must be at most 1,000,000, "
     "got 2,000,000"),
    ("i12-age-too-long", _srv("max_connection_age_seconds = 3000000"),
     "server.max_connection_age_seconds: must be between 1 and 2,000,000, got 3000000.0"),
    ("i12-keepalive-zero", _srv("keepalive_seconds = 0"),
     "server.keepalive_seconds: must be between 1 and"),
    ("i12-header-too-small", _srv("max_header_bytes = 100"),
     "server.max_header_bytes: must be between 1,024 and 1,048,576, got 100"),
    ("i12-inflight-below-batch", GOOD + "[limits]\nmax_inflight_bytes = 1048576\n",
     "limits.max_inflight_bytes: 1048576 is below server.max_batch_bytes \\(16777216\\)"),
    ("i12-inflight-zero", GOOD + "[limits]\nmax_inflight_bytes = 0\n",
     "limits.max_inflight_bytes: must be positive"),
]  # fmt: skip


# --- the transparency log (issue 13) ------------------------------------------------------

_W1 = VerifierKey("w1.example/witness", COSIGNATURE_V1, bytes(range(32))).text()
_W1B = VerifierKey("w2.example/witness", COSIGNATURE_V1, bytes(range(32))).text()
_LOGKEY = VerifierKey("w1.example/witness", ED25519, bytes(range(32))).text()


def _log(lines: str) -> str:
    return GOOD.replace('path = "audit.db"', 'path = "audit.db"\n' + lines)


_KEY = 'origin = "example.org/audit"\nkey = { backend = "hsm", handle = "0a0b" }\n'
_WITNESS = f'[[audit.witnesses]]\nurl = "https://w1.example"\nvkey = "{_W1}"\n'

BAD += [
    ("i13-origin-without-key", _log('origin = "example.org/audit"'),
     "audit.key: expected table|audit.key.backend: missing required setting"),
    ("i13-interval-without-origin", _log("checkpoint_interval_seconds = 1"),
     "audit.checkpoint_interval_seconds: needs audit.origin and audit.key"),
    ("i13-origin-with-space",
     _log('origin = "example.org audit"\nkey = { backend = "hsm", handle = "0a" }'),
     "audit.origin: key name contains a space"),
    ("i13-key-unknown-backend",
     _log('origin = "o.example"\nkey = { backend = "kms", handle = "0a" }'),
     "audit.key.backend: no backend named 'kms'"),
    ("i13-key-handle-empty", _log('origin = "o.example"\nkey = { backend = "hsm", handle = " " }'),
     "audit.key.handle: is empty"),
    ("i13-key-unknown-setting",
     _log('origin = "o.example"\nkey = { backend = "hsm", handle = "0a", pin = "x" }'),
     "audit.key.pin: unknown setting"),
    ("i13-witness-not-a-cosigner",
     _log(_KEY) + f'[[audit.witnesses]]\nurl = "https://w"\nvkey = "{_LOGKEY}"\n',
     "audit.witnesses\\[0\\].vkey: not a cosignature/v1 \\(0x04\\) witness key"),
    ("i13-witness-bad-vkey",
     _log(_KEY) + '[[audit.witnesses]]\nurl = "https://w"\nvkey = "w+1234+AA"\n',
     "audit.witnesses\\[0\\].vkey: verifier key ID"),
    ("i13-witness-url", _log(_KEY) + f'[[audit.witnesses]]\nurl = "w1.example"\nvkey = "{_W1}"\n',
     "audit.witnesses\\[0\\].url: must be http:// or https:// and name a host"),
    ("i13-witness-url-credentials",
     _log(_KEY) + f'[[audit.witnesses]]\nurl = "https://u:s3cret@w1.example"\nvkey = "{_W1}"\n',
     "audit.witnesses\\[0\\].url: must not hold credentials"),
    ("i13-witness-url-query",
     _log(_KEY) + f'[[audit.witnesses]]\nurl = "https://w1.example/p?t=1"\nvkey = "{_W1}"\n',
     "audit.witnesses\\[0\\].url: must not hold a query"),
    ("i13-witness-url-no-host",
     _log(_KEY) + f'[[audit.witnesses]]\nurl = "https://"\nvkey = "{_W1}"\n',
     "audit.witnesses\\[0\\].url: must be http:// or https:// and name a host"),
    ("i13-witness-url-bad-port",
     _log(_KEY) + f'[[audit.witnesses]]\nurl = "https://w1.example:99999"\nvkey = "{_W1}"\n',
     "audit.witnesses\\[0\\].url: not a URL"),
    ("i13-witness-same-key-two-names",
     _log(_KEY) + _WITNESS + f'[[audit.witnesses]]\nurl = "https://w2.example"\nvkey = "{_W1B}"\n',
     "audit.witnesses\\[1\\].vkey: witness 'w2.example/witness' \\(or its key\\) is listed twice"),
    ("i13-quorum-without-witnesses", _log(_KEY + "witness_quorum = 1"),
     "audit.witness_quorum: needs at least one"),
    ("i13-fail-closed-nan", _log(_KEY + "max_unwitnessed_seconds = nan") + _WITNESS,
     "audit.max_unwitnessed_seconds: must be 0 \\(off\\) or positive"),
    ("i13-witness-twice", _log(_KEY) + _WITNESS + _WITNESS,
     "audit.witnesses\\[1\\].vkey: witness 'w1.example/witness' \\(or its key\\) is listed twice"),
    ("i13-quorum-above-witnesses", _log(_KEY + "witness_quorum = 2") + _WITNESS,
     "audit.witness_quorum: must be between 1 and the 1 witnesses, got 2"),
    ("i13-fail-closed-without-witness", _log(_KEY + "max_unwitnessed_records = 10"),
     "audit.max_unwitnessed_records: needs at least one \\[\\[audit.witnesses\\]\\]"),
    ("i13-fail-closed-negative", _log(_KEY + "max_unwitnessed_seconds = -1") + _WITNESS,
     "audit.max_unwitnessed_seconds: must be 0 \\(off\\) or positive"),
    ("i13-fail-closed-window-below-interval",
     _log(_KEY + "checkpoint_interval_seconds = 5\nmax_unwitnessed_seconds = 14") + _WITNESS,
     "audit.max_unwitnessed_seconds: 14 is below twice audit.checkpoint_interval_seconds "
     "\\(5\\) plus audit.witness_timeout_seconds \\(5\\)"),
    ("i13-interval-zero", _log(_KEY + "checkpoint_interval_seconds = 0"),
     "audit.checkpoint_interval_seconds: must be between 0.01 and 3600, got 0"),
    ("i13-witness-timeout", _log(_KEY + "witness_timeout_seconds = 1000"),
     "audit.witness_timeout_seconds: must be between 0.1 and 300, got 1000"),
    ("i13-witnesses-not-tables", _log(_KEY + 'witnesses = ["x"]'),
     "audit.witnesses: expected an array of tables"),
]  # fmt: skip


def test_the_log_is_off_unless_configured(tmp_path: Path) -> None:
    assert _load(tmp_path, GOOD).audit.log is None


def test_log_settings_and_their_defaults(tmp_path: Path) -> None:
    log = _load(tmp_path, _log(_KEY) + _WITNESS).audit.log
    assert log is not None
    assert (log.origin, log.key_backend, log.key_handle) == ("example.org/audit", "hsm", "0a0b")
    assert (log.checkpoint_interval, log.witness_quorum, log.witness_timeout) == (1.0, 1, 5.0)
    assert (log.max_unwitnessed_records, log.max_unwitnessed_seconds) == (0, 0.0)
    (witness,) = log.witnesses
    assert (witness.url, witness.vkey, witness.name) == (
        "https://w1.example",
        _W1,
        "w1.example/witness",
    )
    # Without witnesses there is no quorum to wait for.
    alone = _load(tmp_path, _log(_KEY)).audit.log
    assert alone is not None and (alone.witnesses, alone.witness_quorum) == ((), 0)


def test_resource_limit_defaults(tmp_path: Path) -> None:
    config = _load(tmp_path, GOOD)
    server = config.server
    assert (server.max_connections, server.max_streams_per_connection, server.max_calls) == (
        100,
        300,
        2000,
    )
    # Above one identity's calls in flight, so that a client at its limit is
    # not refused a stream while gRPC is still freeing one that just ended.
    assert server.max_streams_per_connection > config.limits.max_concurrent
    assert server.max_connection_age_seconds == 600
    assert server.max_header_bytes == 16 * 1024
    # Four SignBatch calls of the largest size fit at once: 64 MiB of payloads,
    # where four calls of the old 64 MiB size took a worker to 1 GiB.
    assert server.max_batch_bytes == 16 * 1024 * 1024
    assert config.limits.max_inflight_bytes == 4 * server.max_batch_bytes


def test_limits_defaults_fit_a_pep458_resign(tmp_path: Path) -> None:
    limits = _load(tmp_path, GOOD).limits
    assert limits.bytes_burst >= 16_384 * 54 * 1024  # one re-sign of every bin at once
    assert limits.summary_seconds == 10
    server = _load(tmp_path, GOOD).server
    assert (server.check_processes, server.check_timeout) == (1, 10.0)


def test_f8_max_version_step_defaults_and_overrides(tmp_path: Path) -> None:
    assert _load(tmp_path, GOOD).policy.max_version_step == {
        "timestamp": 1_000_000,
        "snapshot": 1_000_000,
        "targets": 1_000_000,
    }
    text = GOOD + "[policy]\nmax_version_step = { timestamp = 10, targets = 2 }\n"
    assert _load(tmp_path, text).policy.max_version_step == {
        "timestamp": 10,
        "snapshot": 1_000_000,
        "targets": 2,
    }


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


# --- finding 6: typed identities in access rules, [server.tls] identity settings -------

TLS = GOOD.replace(
    "insecure = true",
    '[server.tls]\ncert = "s.crt"\nkey = "s.key"\nclient_ca = "ca.crt"',
)


def _rule(identity: str, tls: str = "") -> str:
    text = TLS.replace('client_ca = "ca.crt"', 'client_ca = "ca.crt"\n' + tls) if tls else TLS
    return text + f'\n[[authz.rules]]\nidentity = {identity}\noperations = ["read-keys"]\n'


IDENTITY_RULES = [
    (
        "f6-untyped-uri-suggests-uri",
        _rule('"spiffe://x.example/backend"'),
        r"authz.rules\[0\].identity: 'spiffe://x.example/backend' does not say its type.*"
        r"e.g. 'uri:spiffe://x.example/backend'",
    ),
    (
        "f6-untyped-name-suggests-dns",
        _rule('"backend.example"'),
        r"authz.rules\[0\].identity: .* e.g. 'dns:backend.example'",
    ),
    ("f6-unknown-type", _rule('"email:a@b"'), r"authz.rules\[0\].identity: .*does not say"),
    ("f6-empty-after-type", _rule('"uri:"'), r"authz.rules\[0\].identity: .*empty after its type"),
    (
        "f6-control-char-in-rule",
        _rule('"uri:spiffe://x/a\\u001b[2K"'),
        r"authz.rules\[0\].identity: identity 'uri:spiffe://x/a\\x1b\[2K' holds control",
    ),
    (
        "f6-nul-in-rule",
        _rule('"cn:a\\u0000b"'),
        r"authz.rules\[0\].identity: .*holds control",
    ),
    (
        "f6-space-in-uri",
        _rule('"uri:spiffe://x/a b"'),
        r"authz.rules\[0\].identity: .*holds control, space",
    ),
    (
        "f6-overlong-identity",
        _rule('"uri:spiffe://x/' + "a" * 1100 + '"'),
        r"authz.rules\[0\].identity: .*longer than 1024 characters",
    ),
    (
        "f6-dns-upper-case",
        _rule('"dns:Backend.Example"'),
        r"authz.rules\[0\].identity: .*write 'dns:backend.example'",
    ),
    (
        "f6-cn-rule-without-cn-switch",
        _rule('"cn:Repository Backend"'),
        r"authz.rules\[0\].identity: a cn: identity never matches unless "
        r"\[server.tls\] allow_cn_identity = true",
    ),
    (
        "f6-allow-cn-not-bool",
        _rule('"uri:spiffe://x/b"', 'allow_cn_identity = "yes"'),
        "server.tls.allow_cn_identity: expected bool",
    ),
    (
        "f6-require-single-uri-not-bool",
        _rule('"uri:spiffe://x/b"', "require_single_uri = 1"),
        "server.tls.require_single_uri: expected bool",
    ),
    (
        "f6-crl-not-a-path",
        _rule('"uri:spiffe://x/b"', "crl = true"),
        "server.tls.crl: expected str",
    ),
]


@pytest.mark.parametrize(
    ("text", "match"),
    [(t, m) for _, t, m in IDENTITY_RULES],
    ids=[i for i, _, _ in IDENTITY_RULES],
)
def test_access_rules_name_typed_identities(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _load(tmp_path, text)


def test_typed_identities_and_tls_identity_settings_parse(tmp_path: Path) -> None:
    text = _rule(
        '"cn:Repository Backend"',
        'allow_cn_identity = true\nrequire_single_uri = true\ncrl = "ca.crl"\n'
        'deny_list = "deny.txt"',
    )
    text += '\n[[authz.rules]]\nidentity = "dns:backend.example"\noperations = ["read-keys"]\n'
    text += '\n[[authz.rules]]\nidentity = "uri:spiffe://x/b"\noperations = ["read-keys"]\n'
    config = _load(tmp_path, text)
    assert set(config.authz.rules) == {
        "cn:Repository Backend",
        "dns:backend.example",
        "uri:spiffe://x/b",
    }
    tls = config.server.tls
    assert tls is not None
    assert (tls.allow_cn_identity, tls.require_single_uri) == (True, True)
    assert (tls.crl, tls.deny_list) == (tmp_path / "ca.crl", tmp_path / "deny.txt")
    # Off unless set.
    plain = _load(tmp_path, _rule('"uri:spiffe://x/b"')).server.tls
    assert plain is not None
    assert (plain.allow_cn_identity, plain.require_single_uri, plain.crl, plain.deny_list) == (
        False,
        False,
        None,
        None,
    )


def test_an_auditors_copy_needs_only_the_audit_table(tmp_path: Path) -> None:
    """audit verify reads [audit] alone, and the audit key may be left out (nothing signs)."""
    path = tmp_path / "auditor.toml"
    path.write_text('[audit]\npath = "audit.db"\norigin = "example.org/audit"\n' + _WITNESS)
    audit = load_audit_config(path)
    assert audit.path == tmp_path / "audit.db"
    assert audit.log is not None and audit.log.origin == "example.org/audit"
    assert (audit.log.key_backend, audit.log.key_handle) == ("", "")
    assert [w.name for w in audit.log.witnesses] == ["w1.example/witness"]
    # The server's reading of the same table still wants the key.
    with pytest.raises(ConfigError, match=r"audit.key.backend: missing required setting"):
        _load(tmp_path, _log('origin = "example.org/audit"'))
