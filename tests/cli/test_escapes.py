"""Issue 10, finding 7: nothing a client or the store holds reaches a terminal raw.

Hostile records are written straight into the store (as a compromised backend,
or a store edited behind the server's back, would leave them), then read back
through the real ``tuf-signer audit tail``.
"""

from __future__ import annotations

import dataclasses
import json
import unicodedata
from pathlib import Path
from typing import Any

import pytest

from tuf_signer.audit import Entry, open_audit_store
from tuf_signer.cli import _main
from tuf_signer.config import load_config
from tuf_signer.errors import RemoteError
from tuf_signer.model import AuditEvent, Outcome

from .conftest import run

FAKE_GRANT = (
    "\r\x1b[2K     7 2026-01-01T00:00:00Z backend sign granted OK online role=root version=99"
    "\x1b[8m"
)

# id: (field of the event, hostile value, what the tail must show for it)
HOSTILE: dict[str, tuple[str, str, str]] = {
    "f7-erase-line-fake-grant": ("role", FAKE_GRANT, "\\r\\x1b[2K     7"),
    "f7-hide-following-records": ("reason", "refused\x1b[8m", "refused\\x1b[8m"),
    "f7-c1-csi": ("key_name", "online\x9b2K", "online\\x9b2K"),
    "f7-osc-title": ("reason", "\x1b]0;all good\x07", "\\x1b]0;all good\\x07"),
    "f7-newline-forges-a-record": ("reason", "x\n     9 forged", "x\\n     9 forged"),
    "f7-bidi-override": ("identity", "spiffe://x/\u202enimda", "spiffe://x/\\u202enimda"),
    "f7-line-separator": ("role", "bins-0\u2028root", "bins-0\\u2028root"),
    "f7-del-and-nul": ("key_name", "k\x7f\x00", "k\\x7f\\x00"),
    "f7-zero-width": ("identity", "ad\u200bmin", "ad\\u200bmin"),
    "f7-backslash-stays-unambiguous": ("role", "bins-\\x1b", "bins-\\\\x1b"),
}

_CONFIG = """\
[audit]
store = "sqlite"
path = "audit.db"

[backends.hsm]
type = "pkcs11"
module = "/nonexistent/libsofthsm2.so"
token_label = "unused"
pin_env = "TUF_SIGNER_TEST_UNUSED_PIN"

[keys]
default_backend = "hsm"
"""


def _is_raw(ch: str) -> bool:
    """A character a terminal may act on: anything ``printable`` must have escaped."""
    return not ch.isprintable()


def _write(config: Path, fields: dict[str, str]) -> None:
    store = open_audit_store(load_config(config).audit)
    try:
        event = AuditEvent(
            time="2026-01-01T00:00:00.000000Z",
            identity="spiffe://tuf-signer.dev/backend",
            operation="sign",
            outcome=Outcome.REFUSED,
            status="PERMISSION_DENIED",
            key_name="online",
            role="timestamp",
            metadata_version=3,
        )
        event = dataclasses.replace(event, **fields)
        store.append([Entry(event)])
    finally:
        store.close()


@pytest.mark.parametrize(("field", "value", "shown"), list(HOSTILE.values()), ids=list(HOSTILE))
def test_audit_tail_escapes_hostile_records(
    tmp_path: Path, field: str, value: str, shown: str
) -> None:
    config = tmp_path / "tuf-signer.toml"
    config.write_text(_CONFIG)
    _write(config, {})  # an honest record before the hostile one
    _write(config, {field: value})
    _write(config, {})  # and one after, which the hostile one must not hide

    tail = run("audit", "tail", "--config", str(config)).stdout
    raw = sorted({f"U+{ord(c):04X}" for c in tail if c != "\n" and _is_raw(c)})
    assert raw == [], f"raw characters reach the terminal: {raw}"
    lines = tail.splitlines()
    assert len(lines) == 3, lines  # one line per record: nothing forged, nothing swallowed
    assert shown in lines[1]
    assert lines[0].split()[0] == "1" and lines[2].split()[0] == "3"

    # JSON stays JSON: the exact value comes back, and no raw control is printed.
    for command in (("tail", "--json"), ("export",)):
        out = run("audit", *command, "--config", str(config)).stdout
        assert not [c for c in out if c != "\n" and unicodedata.category(c) in ("Cc", "Cf")]
        event = json.loads(out.splitlines()[1])["event"]
        assert event[field] == value


class _FakeClient:
    def __init__(self, *_: Any, **__: Any) -> None:
        pass

    def __enter__(self) -> _FakeClient:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    def list_keys(self) -> list[dict[str, Any]]:
        return [
            {
                "name": "online\x1b[2K\rroot",
                "algorithm": "ed25519\u202e",
                "versions": [{"version": 1, "state": "ACTIVE\x9b8m", "keyid": "ab\x07"}],
            }
        ]

    def role_state(self, *_: Any) -> list[dict[str, Any]]:
        raise RemoteError("unknown key 'x'\x1b[2J\x1b]0;owned\x07", code="NOT_FOUND\x1b[8m")


def test_keys_list_and_server_reasons_are_escaped(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import tuf_signer.client

    monkeypatch.setattr(tuf_signer.client, "Client", _FakeClient)
    assert _main.main(["keys", "list"]) == 0
    out = capsys.readouterr().out
    assert "online\\x1b[2K\\rroot" in out and "ACTIVE\\x9b8m" in out and "ab\\x07" in out
    assert "ed25519\\u202e" in out
    assert all(c.isprintable() for c in out.replace("\n", ""))

    assert _main.main(["role-state"]) == 1
    err = capsys.readouterr().err
    assert err == "refused: NOT_FOUND\\x1b[8m: unknown key 'x'\\x1b[2J\\x1b]0;owned\\x07\n"
