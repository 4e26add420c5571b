"""The bench builds a coherent repository (issue 14), so its workloads end with zero errors.

The signer refuses a snapshot that lists a bin at a version its key never
signed (or below what it listed before), and a timestamp that names a
snapshot version it never signed. W6's mixed stream and W4's bulk snapshot
must respect that; the last test drives a short W6 stream, one request at a
time, through a real ``tuf-signer serve`` (SoftHSM, SQLite audit store).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from bench._gen import GET_PUBLIC_KEYS, SIGN, SIGN_BATCH, steady_rate
from bench._procs import TufSigner
from bench._setup import Tools
from bench.run import QUICK, SOAK_KEY, SOAK_LAG_S, Bench
from securesystemslib.formats import encode_canonical

from bench import _payloads
from tuf_signer.v1 import signer_pb2 as pb

METHODS = (SIGN, GET_PUBLIC_KEYS, SIGN_BATCH)


def _meta(payload: bytes) -> dict[str, int]:
    return {k: v["version"] for k, v in json.loads(payload)["meta"].items()}


def test_bulk_snapshot_lists_every_bin_at_the_version_signed() -> None:
    exp = _payloads.expires()
    payload = _payloads.bulk_snapshot(9, 300, 7, exp)
    assert encode_canonical(json.loads(payload)).encode() == payload
    expected = {f"{_payloads.bin_name(i)}.json": 7 for i in range(300)}
    expected["targets.json"] = _payloads.TARGETS_VERSION
    assert _meta(payload) == expected
    assert json.loads(payload)["version"] == 9


def test_snapshot_lists_exactly_the_given_bins() -> None:
    payload = _payloads.snapshot(4, {0x3FFF: 2, 5: 3, 0xA: 1}, _payloads.expires())
    assert encode_canonical(json.loads(payload)).encode() == payload
    assert _meta(payload) == {
        "bins-0005.json": 3,
        "bins-000a.json": 1,
        "bins-3fff.json": 2,
        "targets.json": _payloads.TARGETS_VERSION,
    }


class _Versions:
    """What ``soak_records`` asks of a server: its version counter and keyids."""

    def __init__(self) -> None:
        self.keyids = {SOAK_KEY: "ab" * 32}
        self.next = 1

    def take_versions(self, count: int) -> int:
        base, self.next = self.next, self.next + count
        return base


def _bench(tmp_path: Path) -> Bench:
    bench = Bench(QUICK, Tools(), tmp_path, {"w6"})
    bench.batch_api = True
    return bench


def _soak(
    tmp_path: Path, server: object, rate: float, seconds: float, bins: int
) -> Iterator[tuple[int, int, bytes]]:
    records = _bench(tmp_path).soak_records(server, rate, seconds, bins)  # type: ignore[arg-type]
    for i, (method, body) in enumerate(records):
        yield i, method, body


def _signs(method: int, body: bytes) -> list[pb.SignRequest]:
    if method == 0:
        return [pb.SignRequest.FromString(body)]
    if method == 2:
        return list(pb.SignBatchRequest.FromString(body).requests)
    return []


def test_soak_lists_and_names_only_what_was_sent_a_lag_before(tmp_path: Path) -> None:
    """Every listing is of requests sent at least SOAK_LAG_S earlier; nothing goes down."""
    rate, bins = 50.0, 64
    lag = int(rate * SOAK_LAG_S)
    sent: dict[str, list[tuple[int, int]]] = {}  # role -> (record, version) in order
    listed: dict[str, int] = {}
    named = 0
    snapshots = timestamps = 0
    for i, method, body in _soak(tmp_path, _Versions(), rate, 40.0, bins):
        for request in _signs(method, body):
            obj = json.loads(request.payload)
            if request.role == "snapshot":
                snapshots += 1
                meta = _meta(request.payload)
                assert meta.pop("targets.json") == _payloads.TARGETS_VERSION
                for name, version in meta.items():
                    role = name.removesuffix(".json")
                    old_enough = [v for at, v in sent[role] if at <= i - lag]
                    assert old_enough, f"record {i} lists {role}, not sent {lag} records before"
                    assert version == old_enough[-1]
                    assert version >= listed.get(role, 0)
                    listed[role] = version
                old = {r for r, s in sent.items() if r.startswith("bins-") and s[0][0] <= i - lag}
                assert len(meta) == len(old)
            elif request.role == "timestamp":
                timestamps += 1
                version = obj["meta"]["snapshot.json"]["version"]
                assert any(at <= i - lag and v == version for at, v in sent["snapshot"])
                assert version >= named
                named = version
            sent.setdefault(request.role, []).append((i, obj["version"]))
    assert snapshots >= 10 and timestamps >= 20
    assert len(listed) == bins  # every bin listed once the first round is old enough


def test_steady_rate_leaves_out_start_and_tail() -> None:
    # 10 items at t=1 (start-up), then 1 item every 0.01 s for 80 items, then a slow tail.
    timeline = [[1.0, 10.0]] + [[1.0 + 0.01 * k, 1.0] for k in range(1, 81)] + [[5.0, 10.0]]
    phase = {"timeline": timeline, "items_rate": 0.0, "rate": 20.0}
    assert steady_rate(phase) == pytest.approx(100.0, rel=0.02)
    assert steady_rate({"timeline": [], "items_rate": 0.0, "rate": 20.0}) == 20.0


def test_a_soak_stream_is_signed_without_one_refusal(tmp_path: Path) -> None:
    """The real server: every Sign, GetPublicKeys and SignBatch item of a W6 stream is OK."""
    server = TufSigner(tmp_path / "signer", workers=1)
    server.start({SOAK_KEY: pb.ECDSA_P256})
    try:
        with server.channel() as channel:
            calls = [channel.unary_unary(m) for m in METHODS]
            count = 0
            for _, method, body in _soak(tmp_path, server, 20.0, 12.0, 16):
                try:
                    answer = calls[method](body, timeout=30)
                except grpc.RpcError as e:
                    pytest.fail(f"{METHODS[method]} refused: {e.code().name}: {e.details()}")
                if method == 2:
                    for result in pb.SignBatchResponse.FromString(answer).results:
                        assert result.code == 0, result.reason
                count += 1
    finally:
        server.stop()
    assert count == 240
