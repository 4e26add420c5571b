"""JSON logs (issue 15, item 4): one object per line, request fields, never secrets."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tuf_signer._logs import JsonFormatter, log_handler

PIN = "4711-secret-pin"


def _record(msg: str, *args: object, exc: bool = False, **extra: object) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError(f"could not parse {PIN!r}")
        except ValueError:
            exc_info = sys.exc_info()
    record = logging.LogRecord(
        "tuf_signer.server._x", logging.WARNING, __file__, 1, msg, args, exc_info
    )
    record.__dict__.update(extra)
    return record


def test_one_object_per_line_with_the_request_fields() -> None:
    line = JsonFormatter(worker=1).format(
        _record(
            "refused %s",
            "key\nforged line \x1b[31m",
            identity="uri:spiffe://x/backend",
            key="online",
            role="bins-00",
            status="INVALID_ARGUMENT",
            audit_seq=42,
            pin=PIN,  # not a request field: never copied
        )
    )
    assert "\n" not in line and "\x1b" not in line
    out = json.loads(line)
    assert out.pop("time").endswith("Z")
    assert out == {
        "level": "WARNING",
        "logger": "tuf_signer.server._x",
        "message": "refused key\nforged line \x1b[31m",
        "worker": 1,
        "identity": "uri:spiffe://x/backend",
        "key": "online",
        "role": "bins-00",
        "status": "INVALID_ARGUMENT",
        "audit_seq": 42,
    }


def test_an_exception_is_logged_by_its_frames_not_its_text() -> None:
    out = json.loads(JsonFormatter().format(_record("probe failed", exc=True)))
    assert out["exception"].startswith("ValueError\n")
    assert "test_logs.py" in out["exception"]
    assert PIN not in json.dumps(out)
    assert "worker" not in out


def test_the_text_format_stays_escaped() -> None:
    handler = log_handler("text")
    line = handler.format(_record("refused %s", "a\nb"))
    assert "\n" not in line and "WARNING tuf_signer.server._x: refused a\\nb" in line
    with pytest.raises(ValueError, match="log format"):
        log_handler("xml")


def test_ops_log_format_json_in_the_config_makes_serve_write_json(
    tmp_path: Path, softhsm: Any
) -> None:
    """``[ops] log_format = "json"``: every line ``serve`` logs is one JSON object."""
    from tests.server.conftest import write_config

    config = write_config(tmp_path / "signer", softhsm)
    config.write_text(config.read_text() + '\n[ops]\nlog_format = "json"\n')
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuf_signer.cli", "serve", "--config", str(config)],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "tuf-signer listening on" in line:
                break
        proc.send_signal(signal.SIGTERM)  # (maybe before serve handles it: no matter)
        lines += proc.stderr.readlines()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    records = [json.loads(line) for line in lines]
    assert any(r["logger"] == "tuf_signer.server._app" for r in records)
    assert all(r["level"] in ("INFO", "WARNING") for r in records)
    assert softhsm.pin not in "".join(lines)
