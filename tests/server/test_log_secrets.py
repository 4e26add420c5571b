"""A library's exception text never reaches the log (issue 12, review section 2).

A cause's message may quote a secret: ``UnicodeDecodeError`` from reading a
pin file shows the PIN's byte. The INTERNAL refusal log and the interceptor's
"unexpected error" log name each cause by type (ours with their reason) and
show where it was raised, never its text, nor a traceback that would print it.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
import pytest

from tuf_signer.errors import BackendError
from tuf_signer.model import AuditEvent, Outcome
from tuf_signer.server._interceptor import ErrorInterceptor
from tuf_signer.server._recording import Refusal

PIN = b"40\xe9-S3CRETPIN"
SECRETS = ("S3CRETPIN", "0xe9", "\\xe9", "\xe9")


def _read_pin() -> str:
    """What a pin file reader does with a PIN that is not UTF-8."""
    try:
        return PIN.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"the PIN {PIN!r} is not UTF-8") from e


def _logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(
        logging.Formatter("%(message)s").format(r) + (r.exc_text or "") for r in caplog.records
    )


def _event() -> AuditEvent:
    return AuditEvent("2026-01-01T00:00:00.000000Z", "who", "sign", Outcome.REFUSED, "INTERNAL")


@pytest.mark.parametrize(
    "raised_as",
    [pytest.param("cause", id="unexpected-cause"), pytest.param("ours", id="our-error-from-it")],
)
def test_an_internal_refusal_logs_causes_by_type_only(
    raised_as: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="tuf_signer.server")
    try:
        try:
            _read_pin()
        except ValueError as e:
            if raised_as == "ours":
                raise BackendError("the PIN source cannot be read") from e
            raise
    except Exception as e:
        refusal = (
            Refusal(e, _event()) if isinstance(e, BackendError) else Refusal.internal(_event(), e)
        )
    refusal.entry()
    text = _logged(caplog)
    assert "ValueError <- UnicodeDecodeError" in text
    assert "in _read_pin" in text  # where it was raised, for the operator
    if raised_as == "ours":
        assert "BackendError: the PIN source cannot be read" in text
    for secret in SECRETS:
        assert secret not in text


async def test_an_unexpected_error_in_a_call_logs_no_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def refuse(*args: Any) -> None:
        raise AssertionError("nothing is refused here")

    async def method(request: bytes, context: Any) -> bytes:
        _read_pin()
        return b""

    handler = grpc.method_handlers_generic_handler(
        "t.T", {"M": grpc.unary_unary_rpc_method_handler(method)}
    )
    server = grpc.aio.server(interceptors=[ErrorInterceptor(10.0, refuse, check_caller=None)])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    caplog.set_level(logging.ERROR, logger="tuf_signer.server")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await channel.unary_unary("/t.T/M")(b"", timeout=10)
        assert failed.value.code() is grpc.StatusCode.INTERNAL
        assert failed.value.details() == "internal error"
    finally:
        await server.stop(0)
    text = _logged(caplog)
    assert "unexpected error in /t.T/M: ValueError <- UnicodeDecodeError" in text
    for secret in SECRETS:
        assert secret not in text
