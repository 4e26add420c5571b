"""``tuf-signer keys reset-role`` (issue 10, finding 8), against a real dev signer."""

from __future__ import annotations

import functools
import json

from .conftest import DevSigner, run


def payload(kind: str, version: int) -> bytes:
    return run("dev-payload", kind, "--version", str(version)).stdout.encode()


def test_f8_reset_role_from_the_command_line(dev_signer: DevSigner) -> None:
    backend = functools.partial(dev_signer.as_, "backend")
    admin = functools.partial(dev_signer.as_, "admin")
    backend("sign", "--key", "online", "-", stdin=payload("timestamp", 5))

    # A fast-forward beyond max_version_step is refused, saying how to reset.
    far = backend("sign", "--key", "online", "-", stdin=payload("timestamp", 2**62), check=False)
    assert far.returncode == 1
    assert "FAILED_PRECONDITION" in far.stderr and "keys reset-role" in far.stderr

    reset = ["keys", "reset-role", "online", "timestamp", "--version", "4"]
    denied = backend(*reset, "--reason", "backend tries", check=False)
    assert denied.returncode == 1 and "PERMISSION_DENIED" in denied.stderr
    no_reason = admin(*reset, check=False)
    assert no_reason.returncode == 2 and "--reason" in no_reason.stderr
    negative = admin("keys", "reset-role", "online", "timestamp", "--version", "-1",
                     "--reason", "x", check=False)  # fmt: skip
    assert negative.returncode == 2

    # Version 5 again, with other bytes (a later expiry): equivocation until the reset.
    again = payload("timestamp", 5)
    refused = backend("sign", "--key", "online", "-", stdin=again, check=False)
    assert refused.returncode == 1 and "equivocation" in refused.stderr
    state = json.loads(admin(*reset, "--reason", "restore after INC-7").stdout)
    assert (state["key"], state["role"], state["version"]) == ("online", "timestamp", 4)
    sig = json.loads(backend("sign", "--key", "online", "-", stdin=again).stdout)
    assert sig["sig"]

    tail = run("audit", "tail", "--config", str(dev_signer.config), "-n", "20").stdout
    assert "reset-role-state" in tail and "restore after INC-7" in tail
    assert run("audit", "verify", "--config", str(dev_signer.config)).stdout.startswith("OK:")
    assert dev_signer.stop() == 0
