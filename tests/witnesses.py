"""A real witness process and an audit key, for tests of the transparency log (issue 13)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuf_signer.server._auditkey import create_audit_key

ORIGIN = "tuf-signer.test/audit"
WITNESS = "tuf-signer.test/witness"
SOON = 20.0  # seconds: a bound far above what each wait takes on a busy machine


@dataclass
class WitnessProcess:
    """A real `tuf-signer witness serve`, stopped and started at will."""

    config: Path
    port: int
    vkey: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("tuf-signer")),
                "witness",
                "serve",
                "--config",
                str(self.config),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        end = time.monotonic() + SOON
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert self.process.poll() is None, "the witness exited"
                assert time.monotonic() < end, "the witness did not listen"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


async def audit_key(softhsm: Any) -> tuple[str, str]:
    backend = softhsm.backend("softhsm")
    await backend.start()
    try:
        handle, key = await create_audit_key(backend, ORIGIN)
    finally:
        await backend.close()
    return handle, key.text()


def set_log(config: Path, handle: str, witness: WitnessProcess, extra: str = "") -> None:
    text = config.read_text()
    start = text.index('path = "audit.db"\n') + len('path = "audit.db"\n')
    end = text.index("[backends.softhsm]")
    log = (
        f'origin = "{ORIGIN}"\nkey = {{ backend = "softhsm", handle = "{handle}" }}\n{extra}\n'
        f'[[audit.witnesses]]\nurl = "{witness.url}"\nvkey = "{witness.vkey}"\n\n'
    )
    config.write_text(text[:start] + log + text[end:])
