"""Fixtures shared by the whole test tree, one section per layer."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tuf_signer.keys import Pkcs11Backend, init_token, softhsm_module_path, write_softhsm_config

# =====================================================================================
# SoftHSM (keys)
#
# SoftHSM reads SOFTHSM2_CONF once per process, at C_Initialize, and builds its
# slot list then. So the whole pytest process shares one configuration, set by
# the `softhsm` fixture before anything loads libsofthsm2: every test that
# touches PKCS#11 must depend on `softhsm` (directly or through
# `pkcs11_backend`). Tokens are created here, all at session start; a token
# created later is only seen after the library is re-initialised, which
# Pkcs11Backend.start does only while no session of the process is open. Need
# another token? Add its label to SOFTHSM_TOKENS.
# =====================================================================================

SOFTHSM_TOKENS = ("test", "test-2")
SOFTHSM_PIN = "1234"
SOFTHSM_SO_PIN = "5678"


@dataclass(frozen=True)
class SoftHsm:
    """The test process's SoftHSM: configuration, module and the main token.

    Attributes:
        conf: the SOFTHSM2_CONF in force for this process.
        module: path of libsofthsm2.so.
        token_label: the main token, "test".
        pin: user PIN of every token in SOFTHSM_TOKENS.
        so_pin: security officer PIN of every token in SOFTHSM_TOKENS.
        token_labels: every token created at session start.
    """

    conf: Path
    module: Path
    token_label: str
    pin: str
    so_pin: str
    token_labels: tuple[str, ...]

    def backend(
        self,
        name: str = "test",
        *,
        token_label: str | None = None,
        pin: str | Callable[[], str] | None = None,
        **kwargs: Any,
    ) -> Pkcs11Backend:
        """A new, not yet started Pkcs11Backend on one of these tokens."""
        if pin is None:
            pin = self.pin
        provider = pin if callable(pin) else (lambda value=pin: value)
        return Pkcs11Backend(name, self.module, token_label or self.token_label, provider, **kwargs)


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    """A private SoftHSM configuration with initialised tokens, for the whole session."""
    from tuf_signer.keys import _pkcs11

    if _pkcs11._LIBS:
        pytest.fail("a PKCS#11 module was loaded before the softhsm fixture set SOFTHSM2_CONF")
    conf = write_softhsm_config(tmp_path_factory.mktemp("softhsm"))
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    try:
        for label in SOFTHSM_TOKENS:
            init_token(conf, label, SOFTHSM_PIN, SOFTHSM_SO_PIN)
        yield SoftHsm(
            conf=conf,
            module=softhsm_module_path(),
            token_label=SOFTHSM_TOKENS[0],
            pin=SOFTHSM_PIN,
            so_pin=SOFTHSM_SO_PIN,
            token_labels=SOFTHSM_TOKENS,
        )
    finally:
        # The loaded library keeps the configuration it read; this only
        # tidies the environment.
        if previous is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = previous


@pytest.fixture
async def pkcs11_backend(softhsm: SoftHsm) -> AsyncIterator[Pkcs11Backend]:
    """A started Pkcs11Backend on the "test" token, closed afterwards."""
    backend = softhsm.backend("test")
    await backend.start()
    try:
        yield backend
    finally:
        await backend.close()


# =====================================================================================
# (other layers: add your fixtures below, in your own section)
# =====================================================================================
