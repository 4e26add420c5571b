"""Rough unary Sign throughput against a running signer (issue 6 builds the real harness).

Usage: python bench/rough_sign_rate.py [HOST:PORT] [N] [IN_FLIGHT]
Signs N distinct small bin payloads (Ed25519 key `online`, roles bins-0..N-1).
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import UTC, datetime, timedelta

import grpc
from tuf.api.metadata import Metadata, Targets

from tuf_signer.v1 import signer_pb2 as pb
from tuf_signer.v1 import signer_pb2_grpc as pb_grpc


async def main(address: str, n: int, in_flight: int) -> None:
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    version = int(time.time())  # above anything a previous run signed
    payload = Metadata(Targets(version=version, expires=expires)).signed_bytes
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.SignerStub(channel)
        queue = list(range(n))

        async def worker() -> None:
            while queue:
                i = queue.pop()
                await stub.Sign(pb.SignRequest(key="online", role=f"bins-{i}", payload=payload))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        elapsed = time.perf_counter() - start
    print(f"{n} Sign in {elapsed:.2f} s: {n / elapsed:.0f}/s at {in_flight} in flight")


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(
        main(
            args[0] if args else "127.0.0.1:50051",
            int(args[1]) if len(args) > 1 else 3000,
            int(args[2]) if len(args) > 2 else 64,
        )
    )
