"""The transparency log at run time: checkpoints, witnesses, and the gate on Sign.

Every ``audit.checkpoint_interval_seconds`` while records arrive, the log
signs a checkpoint of the tree with the audit key (``_auditkey``), keeps it in
the store, and asks each witness to cosign it (c2sp.org/tlog-witness), sending
the consistency proof from the size that witness last cosigned. Cosignatures
are verified with the witness's key, then kept with the checkpoint.

What the witnesses say is also a check of this host (issue 13, "the signer
checks itself"). At start, each witness's newest checkpoint (its monitoring
endpoint) is compared with the store; later, its answers to ``add-checkpoint``
are. A witness that cosigned a larger tree than the store holds (the store is
an older copy: its role high-water marks went back with it), or a tree the
store does not extend (a fork), halts signing: every Sign is refused
UNAVAILABLE, on the record, and health turns NOT_SERVING, until an operator
restores the store or starts a new log (docs/runbooks). A halt is never lifted
by the process itself.

With ``audit.max_unwitnessed_records`` or ``_seconds`` set, Sign is also
refused while the newest checkpoint that ``witness_quorum`` witnesses
cosigned is that far behind: an attacker on this host cannot silence the log
(stop the witnesses hearing of new records) and keep signing. The gate reads
state the log refreshes once per interval, so it closes within one interval of
the limit and costs a Sign two comparisons.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from tuf_signer._text import printable
from tuf_signer.audit import AuditStore
from tuf_signer.audit._checkpoint import Checkpoint, open_checkpoint
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
    WitnessUnavailable,
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
    size: int | None = None  # the size it last cosigned, once known
    up: bool | None = None  # its last answer: None before the first
    reason: str = ""


class TransparencyLog:
    """Checkpoints, cosignatures and the Sign gate of one server process.

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
        self._halted: LogUnavailableError | None = None
        self._tree_size = 0
        self._witnessed_size = 0
        # Wall time of the oldest record the quorum has not cosigned, or None.
        self._oldest_unwitnessed: float | None = None
        self._witness_ok: bool | None = None
        self._lock = asyncio.Lock()  # one tick at a time

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
        """The tree's size and the size the witness quorum cosigned, as of the last tick."""
        return self._tree_size, self._witnessed_size

    # --- the gate --------------------------------------------------------------

    def check(self) -> None:
        """Refuse a Sign the log cannot vouch for (called before every Sign).

        Raises:
            LogUnavailableError: signing is halted, or the witnesses are
                further behind than ``audit.max_unwitnessed_*`` allows.
        """
        if self._halted is not None:
            raise self._halted
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
        """Tick every ``checkpoint_interval``, until cancelled; a failing tick is logged."""
        while True:
            await asyncio.sleep(self._config.checkpoint_interval)
            try:
                await self.tick()
            except TufSignerError as e:
                log.warning("transparency log: checkpoint failed: %s", e.reason)
            except Exception as e:  # a bug must not stop checkpoints for good
                log.error("transparency log: checkpoint failed: %s", loggable_cause(e))

    async def tick(self) -> StoredCheckpoint:
        """Sign a checkpoint if the tree grew, send it to the witnesses, refresh the gate.

        Returns:
            The newest checkpoint, with the cosignatures gathered so far.

        Raises:
            TufSignerError: the store or the audit key failed.
        """
        async with self._lock:
            size = await _blocking(self._store.tree_size)
            latest = await _blocking(self._store.latest_checkpoint, self.origin)
            if latest is None or size > latest.size:
                latest = await self._sign(size)
            if self._halted is None:
                await asyncio.gather(
                    *(self._submit(w, latest) for w in self._witnesses if w.size != latest.size)
                )
                latest = (
                    await _blocking(self._store.checkpoint_at, self.origin, latest.size) or latest
                )
            await self._refresh(size)
            return latest

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
        """Hold the store against ``w``'s newest checkpoint; halt if it is behind or forked.

        The store's size is read after the witness answers: a replica or
        worker sharing the store may have had a larger tree cosigned meanwhile,
        and the store holds it by then.
        """
        try:
            note = await asyncio.to_thread(
                fetch_checkpoint, w.config.url, self.origin, self._config.witness_timeout
            )
        except WitnessUnavailable as e:
            self._mark(w, False, e.reason)
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
        size = await _blocking(self._store.tree_size)
        if theirs.size > size:
            self._halt(self._behind(w, theirs.size, size))
        elif await _blocking(self._store.tree_hash, theirs.size) != theirs.root_hash:
            self._halt(self._forked(w, theirs.size))
        else:
            w.size = max(w.size or 0, theirs.size)

    async def _submit(self, w: _Witness, cp: StoredCheckpoint) -> None:
        """Ask ``w`` to cosign ``cp``; keep the cosignature, or note why not."""
        old = w.size or 0
        for _attempt in range(2):
            if old > cp.size:  # it cosigned a newer tree (checked by _compare): sign anew
                return
            proof: Sequence[bytes] = ()
            if 0 < old < cp.size:
                proof = await _blocking(self._store.consistency_proof, old, cp.size)
            try:
                body = await asyncio.to_thread(
                    post_checkpoint,
                    w.config.url,
                    old,
                    proof,
                    cp.note,
                    self._config.witness_timeout,
                )
            except WitnessConflict as e:  # it cosigned another size: retry from that one
                if e.size > cp.size:
                    # Another worker or replica may have had a newer checkpoint
                    # cosigned: the witness's own checkpoint says which.
                    await self._compare(w)
                    return
                w.size = old = e.size
                continue
            except WitnessRejected as e:
                if e.status == 422 and old > 0:
                    # The witness holds a tree of size ``old`` that ours does not extend.
                    self._halt(self._forked(w, old))
                else:
                    self._mark(w, False, f"refused the checkpoint ({e.status}): {e.reason}")
                return
            except WitnessUnavailable as e:
                self._mark(w, False, e.reason)
                return
            lines = self._cosignatures(w, cp, body)
            if not lines:
                return
            await _blocking(
                self._store.add_cosignatures, self.origin, cp.size, lines, rfc3339(utc_now())
            )
            w.size = cp.size
            self._mark(w, True, "")
            return
        self._mark(w, False, "kept answering 409 Conflict")

    def _cosignatures(
        self, w: _Witness, cp: StoredCheckpoint, body: bytes
    ) -> list[tuple[str, str]]:
        """``w``'s verified cosignature lines in an ``add-checkpoint`` answer."""
        text = parse_note(cp.note).text
        try:
            lines = body.decode().splitlines()
            note = parse_note(text.encode() + b"\n" + body)
            verified = verify_note(note, [w.key])
        except (UnicodeDecodeError, NoteError) as e:
            reason = e.reason if isinstance(e, NoteError) else "not UTF-8"
            self._mark(w, False, f"answered with a cosignature that does not verify: {reason}")
            return []
        if not any(v.timestamp for v in verified):
            self._mark(w, False, "answered with no timestamped cosignature")
            return []
        mine = f"\u2014 {w.key.name} "
        return [(w.key.name, line) for line in lines if line.startswith(mine)]

    def _behind(self, w: _Witness, theirs: int, ours: int) -> LogUnavailableError:
        return LogUnavailableError(
            f"the audit store is behind witness {w.key.name!r}: it cosigned {theirs} records "
            f"of log {self.origin!r} and the store holds {ours} (an older copy of the store?); "
            "signing is halted until an operator resolves it (docs/runbooks.md)"
        )

    def _forked(self, w: _Witness, size: int) -> LogUnavailableError:
        return LogUnavailableError(
            f"the audit store forked from witness {w.key.name!r}: its first {size} records "
            f"differ from the tree the witness cosigned for log {self.origin!r}; signing "
            "is halted until an operator resolves it (docs/runbooks.md)"
        )

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

    async def _refresh(self, size: int) -> None:
        """Re-read how far the quorum's cosignatures cover the tree."""
        quorum = self._config.witness_quorum
        witnessed = 0
        if quorum:
            newest = await _blocking(self._store.latest_witnessed, self.origin, quorum)
            witnessed = 0 if newest is None else newest.size
        self._tree_size, self._witnessed_size = size, witnessed
        if not quorum or witnessed >= size:
            self._oldest_unwitnessed = None
        else:
            self._oldest_unwitnessed = await _blocking(self._record_time, witnessed + 1)
        ok = self._halted is None and (not quorum or witnessed >= size)
        if ok != self._witness_ok:
            self._witness_ok = ok
            self._on_witness_state(ok)

    def _record_time(self, seq: int) -> float | None:
        for record in self._store.records(seq):
            return _epoch(record.event.time)
        return None


def _epoch(text: str) -> float:
    """Seconds since the epoch of a record's time (``rfc3339``: UTC, microseconds)."""
    return datetime.fromisoformat(text).timestamp()  # "Z" is UTC since Python 3.11


async def _blocking(fn: Callable[..., _T], *args: Any) -> _T:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)
