"""``witness.toml``, ``create_witness`` and the ``tuf-signer witness`` commands."""

from __future__ import annotations

import socket
import stat
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.witness.conftest import CLI, Log
from tuf_signer.audit._note import COSIGNATURE_V1, VerifierKey, parse_verifier_key
from tuf_signer.errors import ConfigError
from tuf_signer.witness import (
    DEFAULT_WITNESS_LISTEN,
    WitnessKey,
    create_witness,
    load_witness_config,
    parse_witness_config,
)

ORIGIN = "log.test/a"
LOG_VKEY = Log(ORIGIN).vkey.text()
WITNESS_VKEY = VerifierKey("w.test", COSIGNATURE_V1, bytes(32)).text()


def _config(witness: str = "", logs: str | None = None) -> str:
    if logs is None:
        logs = f'[[logs]]\norigin = "{ORIGIN}"\nvkeys = ["{LOG_VKEY}"]\n'
    return f'[witness]\nname = "w.test/w1"\nkey_file = "w.key"\nstate = "w.db"\n{witness}\n{logs}'


def _parse(text: str) -> Any:
    return parse_witness_config(tomllib.loads(text), Path("/etc/witness/witness.toml"))


def test_defaults_and_relative_paths() -> None:
    config = _parse(_config())
    assert config.name == "w.test/w1"
    assert config.listen == DEFAULT_WITNESS_LISTEN
    assert (config.max_body_bytes, config.max_connections, config.timeout_seconds) == (
        65536,
        64,
        10.0,
    )
    assert config.key_file == Path("/etc/witness/w.key")
    assert config.state == Path("/etc/witness/w.db")
    assert config.tls_cert is None and config.tls_key is None
    (log,) = config.logs
    assert log.origin == ORIGIN and [k.text() for k in log.keys] == [LOG_VKEY]


OTHER_LOG = Log("log.test/b").vkey.text()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        pytest.param(
            _config().replace('name = "w.test/w1"\n', ""),
            r"^witness\.name: missing",
            id="name-missing",
        ),
        pytest.param(
            _config().replace('"w.test/w1"', '"w test"'),
            r"^witness\.name: .*space",
            id="name-space",
        ),
        pytest.param(
            _config().replace('"w.test/w1"', "5"), r"^witness\.name: expected str", id="name-type"
        ),
        pytest.param(
            _config().replace('key_file = "w.key"\n', ""),
            r"^witness\.key_file: missing",
            id="key-file-missing",
        ),
        pytest.param(
            _config('colour = "red"'), r"^witness\.colour: unknown setting", id="unknown-setting"
        ),
        pytest.param(_config() + "[other]\n", r"^other: unknown setting", id="unknown-table"),
        pytest.param(
            _config('listen = "nowhere"'), r"^witness\.listen: expected HOST:PORT", id="listen"
        ),
        pytest.param(
            _config('tls_cert = "c.pem"'), r"^witness\.tls_cert / witness\.tls_key", id="tls-half"
        ),
        pytest.param(
            _config("max_body_bytes = 10"), r"^witness\.max_body_bytes: must be", id="body-small"
        ),
        pytest.param(
            _config("max_body_bytes = true"),
            r"^witness\.max_body_bytes: expected int",
            id="body-bool",
        ),
        pytest.param(
            _config("max_connections = 0"),
            r"^witness\.max_connections: must be",
            id="connections-0",
        ),
        pytest.param(
            _config("timeout_seconds = 0"), r"^witness\.timeout_seconds: must be", id="timeout-0"
        ),
        pytest.param(_config(logs=""), r"^logs: at least one", id="no-logs"),
        pytest.param("logs = []\n" + _config(logs=""), r"^logs: at least one", id="logs-empty"),
        pytest.param(
            _config(logs='[logs]\norigin = "x"'), r"^logs: expected \[\[logs\]\]", id="logs-table"
        ),
        pytest.param(
            _config(logs=f'[[logs]]\nvkeys = ["{LOG_VKEY}"]'),
            r"^logs\[0\]\.origin: missing",
            id="origin-missing",
        ),
        pytest.param(
            _config(logs=f'[[logs]]\norigin = "a b"\nvkeys = ["{LOG_VKEY}"]'),
            r"^logs\[0\]\.origin: .*space",
            id="origin-space",
        ),
        pytest.param(
            _config(logs=f'[[logs]]\norigin = "{ORIGIN}"\nvkeys = []'),
            r"^logs\[0\]\.vkeys: at least one",
            id="vkeys-empty",
        ),
        pytest.param(
            _config(logs=f'[[logs]]\norigin = "{ORIGIN}"\nvkeys = [1]'),
            r"^logs\[0\]\.vkeys\[0\]: expected a string",
            id="vkey-type",
        ),
        pytest.param(
            _config(logs=f'[[logs]]\norigin = "{ORIGIN}"\nvkeys = ["nope"]'),
            r"^logs\[0\]\.vkeys\[0\]: verifier key is not",
            id="vkey-garbage",
        ),
        pytest.param(
            _config(logs=f'[[logs]]\norigin = "w.test"\nvkeys = ["{WITNESS_VKEY}"]'),
            r"^logs\[0\]\.vkeys\[0\]: a log key must be Ed25519 \(type 0x01\), not type 0x04",
            id="vkey-witness-type",
        ),
        pytest.param(
            _config(logs=f'[[logs]]\norigin = "{ORIGIN}"\nvkeys = ["{OTHER_LOG}"]'),
            r"^logs\[0\]\.vkeys\[0\]: the key is named 'log.test/b', not after the origin",
            id="vkey-other-name",
        ),
        pytest.param(
            _config(logs=f'[[logs]]\norigin = "{ORIGIN}"\nvkeys = ["{LOG_VKEY}", "{LOG_VKEY}"]'),
            r"^logs\[0\]\.vkeys\[1\]: listed twice",
            id="vkey-twice",
        ),
        pytest.param(
            _config(logs=f'[[logs]]\norigin = "{ORIGIN}"\nvkeys = ["{LOG_VKEY}"]\nurl = "x"'),
            r"^logs\[0\]\.url: unknown setting",
            id="log-unknown-setting",
        ),
        pytest.param(
            _config(
                logs=f'[[logs]]\norigin = "{ORIGIN}"\nvkeys = ["{LOG_VKEY}"]\n'
                f'[[logs]]\norigin = "{ORIGIN}"\nvkeys = ["{Log(ORIGIN).vkey.text()}"]'
            ),
            r"^logs\[1\]\.origin: 'log.test/a' is listed twice",
            id="origin-twice",
        ),
    ],
)
def test_config_errors_name_the_setting(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _parse(text)


def test_create_witness_writes_a_config_that_loads(tmp_path: Path) -> None:
    second = Log(ORIGIN).vkey.text()  # a second key of the same log
    config_path, vkey = create_witness(
        tmp_path / "new" / "w",
        'w.test/"quoted\\name"',
        "127.0.0.1:0",
        [(ORIGIN, LOG_VKEY), ("log.test/b", OTHER_LOG), (ORIGIN, second)],
    )
    assert stat.S_IMODE((config_path.parent / "witness.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o644
    config = load_witness_config(config_path)
    assert config.name == 'w.test/"quoted\\name"'
    assert [(log.origin, [k.text() for k in log.keys]) for log in config.logs] == [
        (ORIGIN, [LOG_VKEY, second]),
        ("log.test/b", [OTHER_LOG]),
    ]
    key = WitnessKey.load(config.key_file, config.name)
    assert key.vkey.text() == vkey
    assert parse_verifier_key(vkey).sig_type == COSIGNATURE_V1
    assert "PRIVATE" not in repr(key)
    # Nothing is overwritten, and nothing is written for settings that do not parse.
    with pytest.raises(ConfigError, match="exists already"):
        create_witness(config_path.parent, "w.test", "127.0.0.1:0", [(ORIGIN, LOG_VKEY)])
    with pytest.raises(ConfigError, match=r"^witness\.name"):
        create_witness(tmp_path / "bad", "w test", "127.0.0.1:0", [(ORIGIN, LOG_VKEY)])
    with pytest.raises(ConfigError, match=r"^logs: at least one"):
        create_witness(tmp_path / "bad", "w.test", "127.0.0.1:0", [])
    assert not (tmp_path / "bad").exists()


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)


def test_witness_commands(tmp_path: Path) -> None:
    done = _run(
        "witness", "init", str(tmp_path / "w"), "--name", "w.test/w1", "--log-vkey", LOG_VKEY
    )
    assert done.returncode == 0, done.stderr
    vkey = done.stdout.strip()
    assert parse_verifier_key(vkey).name == "w.test/w1"
    config = tmp_path / "w" / "witness.toml"
    assert load_witness_config(config).listen == DEFAULT_WITNESS_LISTEN
    printed = _run("witness", "verifier-key", "--config", str(config))
    assert (printed.returncode, printed.stdout.strip()) == (0, vkey)

    refused = _run("witness", "init", str(tmp_path / "x"), "--name", "w", "--log-vkey", "nope")
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: --log-vkey: verifier key is not name+id+key")


def test_serve_refuses_an_exposed_key_and_a_taken_port(tmp_path: Path) -> None:
    port = free_port()
    config, _ = create_witness(tmp_path / "w", "w.test", f"127.0.0.1:{port}", [(ORIGIN, LOG_VKEY)])
    key = config.parent / "witness.key"
    key.chmod(0o640)
    done = _run("witness", "serve", "--config", str(config))
    assert done.returncode == 1
    assert "error: witness.key_file:" in done.stderr
    assert "accessible to group or others (mode 0640)" in done.stderr
    key.chmod(0o600)
    with socket.create_server(("127.0.0.1", port)):
        done = _run("witness", "serve", "--config", str(config))
    assert done.returncode == 1
    assert f"error: witness.listen: cannot listen on 127.0.0.1:{port}" in done.stderr
    key.write_bytes(b"not a key\n")
    done = _run("witness", "verifier-key", "--config", str(config))
    assert done.returncode == 1
    assert "is not an unencrypted PEM private key" in done.stderr
    assert "not a key" not in done.stderr
