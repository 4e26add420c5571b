"""The gRPC echo ceiling: tuf-signer's Signer service with no work behind it.

A bare grpc.aio server (the framework tuf-signer uses) that answers ``Sign``
and ``SignBatch`` with responses shaped like the real ones (a 64-byte
signature in hex, the role, the version) after parsing the request, and
nothing else: no policy, no HSM, no audit. What tuf-signer reaches against
it is the cost of everything that is not gRPC.

Run several on one port to match a multi-process signer; gRPC sets
SO_REUSEPORT, and the kernel spreads connections between them. With
``--tls-dir`` it requires mutual TLS with the signer's own certificates
(``server.crt``, ``server.key``, ``ca.crt`` in that directory), as W4 does::

    python -m bench.echo_server --listen 127.0.0.1:PORT [--tls-dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path
from typing import Any

import grpc

from tuf_signer.v1 import signer_pb2 as pb
from tuf_signer.v1 import signer_pb2_grpc as pb_grpc

_SIG = pb.TufSignature(keyid="ab" * 32, sig="cd" * 64)


def _response(request: pb.SignRequest, seq: int) -> pb.SignResponse:
    return pb.SignResponse(
        signature=_SIG, key_version=1, audit_seq=seq, role=request.role or "timestamp"
    )


class EchoSigner(pb_grpc.SignerServicer):
    """Sign and SignBatch, answered at once."""

    def __init__(self) -> None:
        self._seq = 0

    async def Sign(self, request: pb.SignRequest, context: Any) -> pb.SignResponse:
        self._seq += 1
        return _response(request, self._seq)

    async def SignBatch(self, request: pb.SignBatchRequest, context: Any) -> pb.SignBatchResponse:
        results = []
        for item in request.requests:
            self._seq += 1
            results.append(pb.SignBatchResult(response=_response(item, self._seq)))
        return pb.SignBatchResponse(results=results)


async def serve(listen: str, tls_dir: Path | None = None) -> None:
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
        ]
    )
    pb_grpc.add_SignerServicer_to_server(EchoSigner(), server)
    if tls_dir is None:
        server.add_insecure_port(listen)
    else:
        credentials = grpc.ssl_server_credentials(
            [((tls_dir / "server.key").read_bytes(), (tls_dir / "server.crt").read_bytes())],
            root_certificates=(tls_dir / "ca.crt").read_bytes(),
            require_client_auth=True,
        )
        server.add_secure_port(listen, credentials)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT (loopback)")
    parser.add_argument(
        "--tls-dir", type=Path, help="mutual TLS with server.crt, server.key, ca.crt from here"
    )
    args = parser.parse_args()
    host = args.listen.rpartition(":")[0]
    if host not in ("127.0.0.1", "localhost", "[::1]"):
        parser.error("the echo server listens on loopback only")
    asyncio.run(serve(args.listen, args.tls_dir))


if __name__ == "__main__":
    main()
