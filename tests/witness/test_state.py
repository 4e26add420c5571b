"""The witness's state: durable across restarts, never rolled back by concurrent submissions."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.witness.conftest import Log, WitnessProcess
from tuf_signer.audit._checkpoint import open_checkpoint
from tuf_signer.errors import StoreError
from tuf_signer.witness import Cosigned, WitnessState, _state
from tuf_signer.witness._protocol import InconsistentCheckpoint, Misbehaviour

ORIGIN = "log.test/a"


def _size(w: WitnessProcess, log: Log) -> int:
    reply = w.latest(log.origin)
    assert reply.status == 200
    signed = open_checkpoint(
        reply.body, origin=log.origin, log_key=log.vkey, cosigners=[w.vkey], quorum=1
    )
    return signed.checkpoint.size


def test_a_restart_keeps_the_latest_cosigned_checkpoint(
    start_witness: Callable[..., WitnessProcess],
) -> None:
    log = Log(ORIGIN)
    w = start_witness([log])
    assert w.post(log.submission(0, 3)).status == 200
    served = w.latest(ORIGIN).body
    assert w.stop() == 0  # SIGTERM: a clean exit
    assert "stopped" in w.log()
    w.start()
    assert w.latest(ORIGIN).body == served
    conflict = w.post(log.submission(0, 4))
    assert (conflict.status, conflict.body) == (409, b"3\n")
    assert w.post(log.submission(3, 4)).status == 200
    assert _size(w, log) == 4


def test_concurrent_submissions_never_roll_back(
    start_witness: Callable[..., WitnessProcess],
) -> None:
    """The race of tlog-witness "add-checkpoint": every submitter starts from the same size.

    Exactly one of each round wins; the others get 409 with the winner's size,
    and the stored size never goes down.
    """
    log = Log(ORIGIN)
    w = start_witness([log], settings="max_connections = 32")
    threads, rounds = 8, 12
    log.grow(1 + threads * rounds)
    assert w.post(log.submission(0, 1)).status == 200
    size = 1
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(rounds):
            bodies = [log.submission(size, size + i + 1) for i in range(threads)]
            gate = threading.Barrier(threads)

            def submit(body: bytes, gate: threading.Barrier = gate) -> tuple[int, bytes]:
                gate.wait()
                reply = w.post(body)
                return reply.status, reply.body

            results = list(pool.map(submit, bodies))
            winners = [i for i, (status, _) in enumerate(results) if status == 200]
            assert len(winners) == 1, results
            winner = size + winners[0] + 1
            # Each loser was refused with the winner's size.
            assert all(
                (status, body) == (409, f"{winner}\n".encode())
                for i, (status, body) in enumerate(results)
                if i != winners[0]
            ), results
            assert _size(w, log) == winner
            size = winner


def test_the_state_refuses_to_store_a_smaller_size(tmp_path: Path) -> None:
    """Defence in depth: even a faulty check cannot make ``advance`` roll back."""
    state = WitnessState(tmp_path / "state.db")
    state.advance(ORIGIN, lambda _: Cosigned(ORIGIN, 5, bytes(32), b"note", 1))
    with pytest.raises(StoreError, match="below the stored size"):
        state.advance(ORIGIN, lambda _: Cosigned(ORIGIN, 4, bytes(32), b"note", 2))
    stored = state.latest(ORIGIN)
    assert stored is not None and stored.size == 5


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    WitnessState(path)
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="schema version 99"):
        WitnessState(path)


def test_evidence_is_kept_once_per_tree_head_and_bounded_per_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_state, "MAX_EVIDENCE", 3)
    state = WitnessState(tmp_path / "state.db")

    def refuse(size: int) -> Callable[[Cosigned | None], Cosigned]:
        def decide(current: Cosigned | None) -> Cosigned:
            evidence = Misbehaviour("proof", ORIGIN, size, bytes(32), 0, (), b"cp", None)
            raise InconsistentCheckpoint("the proof fails", evidence)

        return decide

    for size in (1, 1, 2, 3, 4, 5):
        with pytest.raises(InconsistentCheckpoint):
            state.advance(ORIGIN, refuse(size))
    assert [e.misbehaviour.size for e in state.evidence()] == [1, 2, 3]
    assert state.latest(ORIGIN) is None  # evidence only: nothing was cosigned


def test_junk_proof_evidence_does_not_crowd_out_an_equivocation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review (Low): the cap is per kind, and an equivocation replaces a proof record."""
    monkeypatch.setattr(_state, "MAX_EVIDENCE", 2)
    state = WitnessState(tmp_path / "state.db")

    def refuse(kind: str, size: int) -> Callable[[Cosigned | None], Cosigned]:
        def decide(current: Cosigned | None) -> Cosigned:
            evidence = Misbehaviour(kind, ORIGIN, size, bytes(32), 0, (), b"cp", None)
            raise InconsistentCheckpoint(f"{kind} at {size}", evidence)

        return decide

    for size in (1, 2, 3, 4):  # anyone can replay checkpoints with a junk proof
        with pytest.raises(InconsistentCheckpoint):
            state.advance(ORIGIN, refuse("proof", size))
    for size in (2, 7):  # then the log equivocates, once at a head a junk proof took first
        with pytest.raises(InconsistentCheckpoint):
            state.advance(ORIGIN, refuse("equivocation", size))
    kept = sorted((e.misbehaviour.kind, e.misbehaviour.size, e.reason) for e in state.evidence())
    assert kept == [
        ("equivocation", 2, "equivocation at 2"),
        ("equivocation", 7, "equivocation at 7"),
        ("proof", 1, "proof at 1"),
    ]
