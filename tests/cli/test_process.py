"""The signer process: hardening, SIGHUP reload, and secrets kept out of logs and argv."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from .conftest import DevSigner, run


def payload(kind: str, version: int) -> bytes:
    return run("dev-payload", kind, "--version", str(version)).stdout.encode()


def test_core_dumps_are_off(dev_signer: DevSigner) -> None:
    limits = Path(f"/proc/{dev_signer.proc.pid}/limits").read_text()
    (core,) = [line for line in limits.splitlines() if line.startswith("Max core file size")]
    assert core.split()[4:6] == ["0", "0"], core


def test_process_is_not_dumpable() -> None:
    code = (
        "import ctypes; from tuf_signer.server._harden import harden_process; "
        "libc = ctypes.CDLL(None); before = libc.prctl(3, 0, 0, 0, 0); harden_process(); "
        "print(before, libc.prctl(3, 0, 0, 0, 0))"  # 3 = PR_GET_DUMPABLE
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "0"]


def test_secrets_stay_out_of_argv_environment_and_logs(dev_signer: DevSigner) -> None:
    d = dev_signer.directory
    pin = (d / "hsm.pin").read_text().strip()
    so_pin = (d / "hsm.so-pin").read_text().strip()
    tls_key = (d / "tls" / "server.key").read_text()
    key_body = tls_key.splitlines()[1]
    # Exercise the server: a grant, a refusal, a key change.
    dev_signer.as_("backend", "sign", "--key", "online", "-", stdin=payload("timestamp", 2))
    dev_signer.as_(
        "backend", "sign", "--key", "online", "-", stdin=payload("timestamp", 1), check=False
    )
    dev_signer.as_("admin", "keys", "rotate", "online")
    cmdline = Path(f"/proc/{dev_signer.proc.pid}/cmdline").read_bytes().decode()
    environ = Path(f"/proc/{dev_signer.proc.pid}/environ").read_bytes().decode(errors="replace")
    assert dev_signer.stop() == 0
    log = dev_signer.proc.stderr.read().decode()
    assert "listening" in log  # the log is really what we think it is
    exported = run("audit", "export", "--config", str(dev_signer.config)).stdout
    for secret in (pin, so_pin, key_body):
        for where, text in (("argv", cmdline), ("environment", environ), ("log", log),
                            ("audit", exported)):  # fmt: skip
            assert secret not in text, f"a secret appears in the {where}"


def test_sighup_reloads_the_access_policy(dev_signer: DevSigner) -> None:
    sign_ts = ("sign", "--key", "online", "-")
    dev_signer.as_("backend", *sign_ts, stdin=payload("timestamp", 1))
    text = dev_signer.config.read_text()
    narrowed = text.replace('roles = ["timestamp", "snapshot", "bins-*"]', 'roles = ["snapshot"]')
    assert narrowed != text
    dev_signer.config.write_text(narrowed)
    dev_signer.proc.send_signal(signal.SIGHUP)
    for _ in range(50):
        out = dev_signer.as_("backend", *sign_ts, stdin=payload("timestamp", 2), check=False)
        if out.returncode == 1:
            break
        time.sleep(0.1)
    assert "PERMISSION_DENIED" in out.stderr
    # A broken policy is refused and the narrowed one stays in force.
    dev_signer.config.write_text(narrowed.replace('"read-keys"]', '"read-keys", "sudo"]', 1))
    dev_signer.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert dev_signer.proc.poll() is None, "a broken policy must not stop the server"
    still = dev_signer.as_("backend", *sign_ts, stdin=payload("timestamp", 2), check=False)
    assert "PERMISSION_DENIED" in still.stderr
    dev_signer.as_("backend", "sign", "--key", "online", "-", stdin=payload("snapshot", 1))
    assert dev_signer.stop() == 0
    log = dev_signer.proc.stderr.read().decode()
    assert "keeping the previous access policy" in log
    assert "'sudo'" in log


def test_f6_sighup_revokes_a_stolen_certificate(dev_signer: DevSigner) -> None:
    """A deny list added to the config and a SIGHUP lock out the backend's certificate."""
    from cryptography import x509

    d = dev_signer.directory
    sign_ts = ("sign", "--key", "online", "-")
    dev_signer.as_("backend", *sign_ts, stdin=payload("timestamp", 1))
    serial = x509.load_pem_x509_certificate((d / "tls" / "backend.crt").read_bytes()).serial_number
    (d / "tls" / "revoked.txt").write_text(f"# stolen laptop\n{serial:x}\n")
    text = dev_signer.config.read_text()
    revoking = text.replace(
        'client_ca = "tls/ca.crt"\n', 'client_ca = "tls/ca.crt"\ndeny_list = "tls/revoked.txt"\n'
    )
    assert revoking != text
    dev_signer.config.write_text(revoking)
    dev_signer.proc.send_signal(signal.SIGHUP)
    for _ in range(50):
        out = dev_signer.as_("backend", *sign_ts, stdin=payload("timestamp", 2), check=False)
        if out.returncode != 0:
            break
        time.sleep(0.1)
    assert "UNAUTHENTICATED" in out.stderr
    assert f"certificate revoked (serial 0x{serial:x}" in out.stderr
    dev_signer.as_("admin", "keys", "list")  # the admin's certificate still works
    assert dev_signer.stop() == 0
    assert "reload: access policy" in dev_signer.proc.stderr.read().decode()
