"""The transparency log at run time: checkpoints, witnesses, and the gate on Sign.

Every ``audit.checkpoint_interval_seconds`` while records arrive, the log
signs a checkpoint of the tree with the audit key (``_auditkey``), keeps it in
the store, and asks each witness to cosign it (c2sp.org/tlog-witness), sending
the consistency proof from the size that witness last cosigned. Cosignatures
are verified with the witness's key, then kept with the checkpoint.

What the witnesses say is also a check of this host (issue 13, "the signer
checks itself"). Each witness's size counts only once its cosignature
verified: on our checkpoint, or on the checkpoint it serves (its monitoring
endpoint, fetched at start and whenever it claims to hold a tree we do not
expect). Status codes and stored rows are not signed, so they are never a
verdict by themselves. The store must always hold the largest tree a witness
verifiably cosigned: one that holds fewer records (an older copy: its role
high-water marks went back with it), or other records (a fork), halts
signing: every Sign is refused UNAVAILABLE, on the record, health turns
NOT_SERVING, and no checkpoint of that store is signed, until an operator
restores the store or starts a new log (docs/runbooks.md). A halt is never
lifted by the process itself. This is checked on every refresh, so a store
restored under a running signer is caught too.

With ``audit.max_unwitnessed_records`` or ``_seconds`` set, Sign is also
refused while the newest size that ``witness_quorum`` witnesses verifiably
cosigned is that far behind: an attacker on this host cannot silence the log
(stop the witnesses hearing of new records) and keep signing. After a restart
nothing counts as witnessed until the witnesses answer again. The gate reads
state refreshed once per interval, on its own timer (a tick waiting on a slow
witness does not stall it), so it closes within about one interval of the
limit and costs a Sign two comparisons.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from tuf_signer._text import printable
from tuf_signer.audit import AuditStore
from tuf_signer.audit._checkpoint import Checkpoint, note_checkpoint, open_checkpoint
from tuf_signer.audit._checkpoints import StoredCheckpoint
from tuf_signer.audit._note import (
    NoteError,
    VerifierKey,
    parse_note,
    parse_verifier_key,
    verify_note,
)
from tuf_signer.config import LogConfig, WitnessConfig
from tuf_signer.errors import LogUnavailableError, TufSignerError
from tuf_signer.server._auditkey import CheckpointSigner
from tuf_signer.server._recording import loggable_cause
from tuf_signer.server._values import rfc3339, utc_now
from tuf_signer.witness import (
    WitnessConflict,
    WitnessRejected,
    fetch_checkpoint,
)
from tuf_signer.witness import add_checkpoint as post_checkpoint

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# The health service name whose status is the witnesses' state: SERVING while
# the newest checkpoint is cosigned by the quorum, NOT_SERVING otherwise.
WITNESS_HEALTH = "tuf-signer.audit.witnesses"


@dataclass
class _Witness:
    """What the log knows of one witness."""

    config: WitnessConfig
    key: VerifierKey
    size: int | None = None  # the size it says it holds (a hint: a 409 is not signed)
    cosigned: int = 0  # the largest size whose cosignature by it this process verified
    up: bool | None = None  # its last answer: None before the first
    reason: str = ""


class TransparencyLog:
    """Checkpoints, cosignatures and the Sign gate of one server process.

    What the gate trusts is what this process verified: a witness's size
    counts once its cosignature (on our checkpoint, or on the checkpoint it
    serves) verified with its key, never from a row in the store or an
    unsigned status code. After a restart every witness is asked again, so
    until a quorum has answered, everything in the store counts as unwitnessed.

    Args:
        store: the audit store (its tree and checkpoint tables).
        signer: signs checkpoints with the audit key.
        config: the ``[audit]`` log settings.
        on_witness_state: told True/False when the witnesses' state changes
            (health's ``WITNESS_HEALTH``).
        wall: seconds since the epoch (tests move it).
    """

    def __init__(
        self,
        store: AuditStore,
        signer: CheckpointSigner,
        config: LogConfig,
        on_witness_state: Callable[[bool], None] = lambda _ok: None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._signer = signer
        self._config = config
        self._on_witness_state = on_witness_state
        self._wall = wall
        self.origin = config.origin
        self._witnesses = [_Witness(w, parse_verifier_key(w.vkey)) for w in config.witnesses]
        # Witness calls wait on the network: their own threads, so that a slow
        # witness never holds the threads store reads and health probes use.
        self._threads = ThreadPoolExecutor(
            max_workers=max(1, len(self._witnesses)), thread_name_prefix="tuf-witness"
        )
        self._halted: LogUnavailableError | None = None
        # The largest (size, root, witness name) a witness verifiably cosigned:
        # the store must always hold that tree.
        self._high: tuple[int, bytes, str] | None = None
        self._tree_size = 0
        self._witnessed_size = 0
        # Wall time of the oldest record the quorum has not cosigned, or None.
        self._oldest_unwitnessed: float | None = None
        self._witness_ok: bool | None = None
        self._lock = asyncio.Lock()  # one tick at a time
        self._background: set[asyncio.Task[None]] = set()
        # The newest checkpoint this process signed or saw: what the witnesses
        # are asked to cosign, and what health's witness state is held to.
        self._checkpointed = 0

    @property
    def key(self) -> VerifierKey:
        """The log's verifier key (the audit key's public half)."""
        return self._signer.key

    @property
    def halted(self) -> LogUnavailableError | None:
        """Why signing is halted for good (until an operator acts), or None."""
        return self._halted

    @property
    def sizes(self) -> tuple[int, int]:
        """The tree's size and the size the witness quorum cosigned, as of the last refresh."""
        return self._tree_size, self._witnessed_size

    # --- the gate --------------------------------------------------------------

    def check(self) -> None:
        """Refuse a Sign the log cannot vouch for (called before every Sign).

        Raises:
            LogUnavailableError: signing is halted, or the witnesses are
                further behind than ``audit.max_unwitnessed_*`` allows.
        """
        if self._halted is not None:
            # A new exception each time: raising one stored object would grow its
            # traceback with every refused Sign's frames (and payloads), for good.
            raise LogUnavailableError(self._halted.reason)
        cfg = self._config
        behind = self._tree_size - self._witnessed_size
        if cfg.max_unwitnessed_records and behind >= cfg.max_unwitnessed_records:
            raise LogUnavailableError(
                f"the log's witnesses are {behind} records behind "
                f"(audit.max_unwitnessed_records = {cfg.max_unwitnessed_records}): "
                "signing resumes once they cosign a newer checkpoint"
            )
        oldest = self._oldest_unwitnessed
        if cfg.max_unwitnessed_seconds and oldest is not None:
            age = self._wall() - oldest
            if age >= cfg.max_unwitnessed_seconds:
                raise LogUnavailableError(
                    f"the log's witnesses have not cosigned a record that is {age:.0f} s old "
                    f"(audit.max_unwitnessed_seconds = {cfg.max_unwitnessed_seconds:g}): "
                    "signing resumes once they cosign a newer checkpoint"
                )

    # --- running -----------------------------------------------------------------

    async def start(self) -> None:
        """Check the store against the witnesses, then sign the first checkpoint.

        A store behind or forked from what a witness cosigned halts signing
        (``halted``); the server still starts, so that health and the log say why.

        Raises:
            TufSignerError: the audit key cannot sign, or the store failed.
        """
        await asyncio.gather(*(self._compare(w) for w in self._witnesses))
        await self.tick()

    async def run(self) -> None:
        """Tick every ``checkpoint_interval`` until cancelled; failures are logged.

        The gate is refreshed as often on its own, so that a tick waiting on a
        slow witness does not leave it stale.
        """
        ticking = asyncio.ensure_future(self._every(self.tick))
        try:
            await self._every(self._refresh_gate)
        finally:
            ticking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticking

    async def _every(self, step: Callable[[], Awaitable[object]]) -> None:
        while True:
            await asyncio.sleep(self._config.checkpoint_interval)
            await self._every_once(step)

    async def checkpoint_now(self) -> None:
        """Sign and store a checkpoint of the tree as it is now (``GetCheckpoint(fresh)``).

        The witnesses get it from a tick started in the background: a caller
        never waits on a slow witness (its call deadline would read as a fault).

        Raises:
            LogUnavailableError: signing is halted.
            TufSignerError: the store or the audit key failed.
        """
        if self._halted is not None:
            raise LogUnavailableError(self._halted.reason)
        size = await _blocking(self._store.tree_size)
        latest = await _blocking(self._store.latest_checkpoint, self.origin)
        if latest is None or size > latest.size:
            await self._sign(size)
        task = asyncio.ensure_future(self._every_once(self.tick))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _every_once(self, step: Callable[[], Awaitable[object]]) -> None:
        try:
            await step()
        except TufSignerError as e:
            log.warning("transparency log: %s", e.reason)
        except Exception as e:  # a bug must not go unseen
            log.error("transparency log: failed: %s", loggable_cause(e))

    def close(self) -> None:
        """Stop the witness threads (a call in flight ends at its own timeout)."""
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def tick(self) -> StoredCheckpoint | None:
        """Sign a checkpoint if the tree grew, send it to the witnesses, refresh the gate.

        Nothing is signed or sent once signing is halted: a checkpoint of a
        store found behind or forked would be the log's own signature on a
        split view.

        Returns:
            The newest checkpoint, with the cosignatures gathered so far
            (None when halted before the first).

        Raises:
            TufSignerError: the store or the audit key failed.
        """
        async with self._lock:
            try:
                size = await self._refresh_gate()
                latest = await _blocking(self._store.latest_checkpoint, self.origin)
                if self._halted is not None:
                    return latest
                if latest is None or size > latest.size:
                    latest = await self._sign(size)
                self._checkpointed = max(self._checkpointed, latest.size)
                root = note_checkpoint(latest.note).root_hash
                pending = [w for w in self._witnesses if w.cosigned != latest.size]
                await asyncio.gather(*(self._submit(w, latest, root) for w in pending))
                stored = await _blocking(self._store.checkpoint_at, self.origin, latest.size)
                return stored or latest
            finally:
                await self._refresh_gate()

    async def _sign(self, size: int) -> StoredCheckpoint:
        root = await _blocking(self._store.tree_hash, size)
        note = (await self._signer.sign(Checkpoint(self.origin, size, root))).format()
        await _blocking(self._store.add_checkpoint, self.origin, size, note, rfc3339(utc_now()))
        stored = await _blocking(self._store.checkpoint_at, self.origin, size)
        if stored is None:  # pragma: no cover - the insert above committed it
            raise LogUnavailableError(f"checkpoint {size} was not stored")
        return stored

    # --- witnesses -----------------------------------------------------------------

    async def _compare(self, w: _Witness) -> None:
        """Learn ``w``'s newest cosigned checkpoint (verified) and hold the store against it."""
        try:
            note = await self._call(
                fetch_checkpoint, w.config.url, self.origin, self._config.witness_timeout
            )
        except TufSignerError as e:  # unreachable, or a 4xx on its monitoring endpoint
            self._mark(w, False, f"its checkpoint could not be fetched: {e.reason}")
            return
        if note is None:  # it has cosigned nothing of ours yet
            w.size = 0
            return
        try:
            signed = open_checkpoint(
                note, origin=self.origin, log_key=self.key, cosigners=[w.key], quorum=1
            )
        except NoteError as e:
            self._mark(w, False, f"its checkpoint does not verify: {e.reason}")
            return
        theirs = signed.checkpoint
        self._cosigned(w, theirs.size, theirs.root_hash)
        await self._hold(await _blocking(self._store.tree_size))

    async def _submit(self, w: _Witness, cp: StoredCheckpoint, root: bytes) -> None:
        """Ask ``w`` to cosign ``cp``; keep the cosignature, or note why not."""
        old = w.size or 0
        for _attempt in range(2):
            if old > cp.size:  # it holds a larger tree: is it ours?
                await self._compare(w)
                return
            proof: Sequence[bytes] = ()
            if 0 < old < cp.size:
                proof = await _blocking(self._store.consistency_proof, old, cp.size)
            try:
                body = await self._call(
                    post_checkpoint,
                    w.config.url,
                    old,
                    proof,
                    cp.note,
                    self._config.witness_timeout,
                )
            except WitnessConflict as e:  # it holds another size (a hint: not signed)
                w.size = old = e.size
                continue
            except WitnessRejected as e:
                if e.status == 422 and old > 0:
                    # Unsigned, so no verdict by itself: the witness's own signed
                    # checkpoint says whether the store forked from it.
                    await self._compare(w)
                    if self._halted is None:
                        self._mark(w, False, "answered 422 to a consistent extension")
                else:
                    self._mark(w, False, f"refused the checkpoint ({e.status}): {e.reason}")
                return
            except TufSignerError as e:  # unreachable, slow, garbage
                self._mark(w, False, e.reason)
                return
            line = self._cosignature(w, cp, body)
            if line is None:
                return
            await _blocking(
                self._store.add_cosignatures,
                self.origin,
                cp.size,
                [(w.key.name, line)],
                rfc3339(utc_now()),
            )
            self._cosigned(w, cp.size, root)
            self._mark(w, True, "")
            return
        self._mark(w, False, "kept answering 409 Conflict")

    def _cosignature(self, w: _Witness, cp: StoredCheckpoint, body: bytes) -> str | None:
        """``w``'s valid, timestamped cosignature of ``cp`` in an ``add-checkpoint`` answer.

        A witness may answer with several lines under its name (another key
        type, tlog-cosignature); only one that verifies with its key is kept.
        """
        text = parse_note(cp.note).text.encode()
        mine = f"\u2014 {w.key.name} "
        try:
            lines = [line for line in body.decode().splitlines() if line.startswith(mine)]
        except UnicodeDecodeError:
            lines = []
        for line in lines:
            try:
                verified = verify_note(parse_note(text + b"\n" + line.encode() + b"\n"), [w.key])
            except NoteError:
                continue  # another key of that name, or not a signature line at all
            if any(v.timestamp for v in verified):
                return line
        self._mark(w, False, "answered without a valid timestamped cosignature by its key")
        return None

    def _cosigned(self, w: _Witness, size: int, root: bytes) -> None:
        """Note a cosignature of (size, root) by ``w`` that verified."""
        w.cosigned = max(w.cosigned, size)
        w.size = max(w.size or 0, size)
        if self._high is None or size > self._high[0]:
            self._high = (size, root, w.key.name)

    async def _hold(self, size: int) -> None:
        """Halt when the store is not the tree some witness verifiably cosigned."""
        if self._high is None or self._halted is not None:
            return
        high, root, name = self._high
        if size < high:
            self._halt(
                LogUnavailableError(
                    f"the audit store is behind witness {name!r}: it cosigned {high} records "
                    f"of log {self.origin!r} and the store holds {size} (an older copy of the "
                    "store?); signing is halted until an operator resolves it "
                    "(docs/runbooks.md)"
                )
            )
        elif await _blocking(self._store.tree_hash, high) != root:
            self._halt(
                LogUnavailableError(
                    f"the audit store forked from witness {name!r}: its first {high} records "
                    f"differ from the tree the witness cosigned for log {self.origin!r}; "
                    "signing is halted until an operator resolves it (docs/runbooks.md)"
                )
            )

    async def _call(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._threads, fn, *args)

    def _halt(self, error: LogUnavailableError) -> None:
        if self._halted is None:
            self._halted = error
            log.error("transparency log: %s", error.reason)

    def _mark(self, w: _Witness, up: bool, reason: str) -> None:
        if w.up != up or (not up and w.reason != reason):
            if up:
                again = "" if w.up is None else " again"
                log.info("transparency log: witness %r cosigns%s", w.key.name, again)
            else:
                # A witness's refusal carries its own text: escaped, like any remote input.
                log.warning("transparency log: witness %r: %s", w.key.name, printable(reason))
        w.up, w.reason = up, reason

    # --- the gate's state ------------------------------------------------------------

    async def _refresh_gate(self) -> int:
        """Re-read the tree's size, hold it against the witnesses, recount the unwitnessed.

        Returns:
            The tree's size.
        """
        size = await _blocking(self._store.tree_size)
        await self._hold(size)
        quorum = min(self._config.witness_quorum, len(self._witnesses))
        witnessed = 0
        if quorum:
            sizes = sorted((w.cosigned for w in self._witnesses), reverse=True)
            witnessed = min(sizes[quorum - 1], size)
        self._tree_size, self._witnessed_size = size, witnessed
        if not quorum or witnessed >= size or not self._config.max_unwitnessed_seconds:
            self._oldest_unwitnessed = None
        else:
            self._oldest_unwitnessed = await _blocking(self._record_time, witnessed + 1)
        # Healthy: the quorum cosigned the newest checkpoint (records keep
        # arriving, so the live tree is almost always a little ahead).
        ok = self._halted is None and (not quorum or witnessed >= self._checkpointed)
        if ok != self._witness_ok:
            self._witness_ok = ok
            self._on_witness_state(ok)
        return size

    def _record_time(self, seq: int) -> float | None:
        for record in self._store.records(seq):
            return _epoch(record.event.time)
        return None


def _epoch(text: str) -> float:
    """Seconds since the epoch of a record's time (``rfc3339``: UTC, microseconds)."""
    return datetime.fromisoformat(text).timestamp()  # "Z" is UTC since Python 3.11


async def _blocking(fn: Callable[..., _T], *args: Any) -> _T:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)
