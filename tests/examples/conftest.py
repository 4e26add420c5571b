"""The example runs against the same threaded server as the client tests."""

from __future__ import annotations

from ..client.conftest import _no_client_env, signer_server

__all__ = ["_no_client_env", "signer_server"]
