"""The signature transparency monitor (issue 13, item 6): is every signature of a held key logged?

A TUF repository publishes its metadata; each file carries the signatures over
its ``signed`` object. For every signature made by a key that tuf-signer holds,
there must be a granted ``sign`` record with the same payload digest, keyid and
signature, and that record must be proven included (c2sp.org/tlog-proof) in a
checkpoint the log's key signed and the witnesses cosigned. A signature by a
held key without such a record was made outside the service: a copy of the key,
or a signer that does not record. Signatures by other keys (the offline root
and targets keys) are counted and ignored.

The walk follows python-tuf's ngclient (TUF specification §5): the root
versions ``1.root.json``, ``2.root.json``, ... until one is missing (at most
``max_root_rotations``), then ``timestamp.json``, the snapshot it names
(``VERSION.snapshot.json`` when the root says ``consistent_snapshot``, else
``snapshot.json``), then ``targets.json`` and the delegated roles the snapshot
lists (all, or a sample), each capped at python-tuf's ``UpdaterConfig`` maximum
length or the length the referring file gives. Metadata is not verified as a
TUF client would: the monitor checks the log, not the repository's keys.

Pure: the repository reader, the record finder and the proof getter are
injected (``Reader``, ``RecordFinder``, ``ProofGetter``); the CLI wires HTTP,
the store or a server to them.
"""

from __future__ import annotations

import enum
import hashlib
import json
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from urllib import parse

from securesystemslib.formats import encode_canonical
from tuf.ngclient.config import UpdaterConfig

from tuf_signer.audit._checkpoint import open_checkpoint, parse_tlog_proof, verify_tlog_proof
from tuf_signer.audit._merkle import leaf_hash
from tuf_signer.audit._proofs import merkle_inclusion
from tuf_signer.audit._witnessed import LogKeys
from tuf_signer.errors import TufSignerError, shown

# python-tuf's client limits (tuf.ngclient.UpdaterConfig), the ones a TUF client applies.
LIMITS = UpdaterConfig()
# A record not in a witnessed checkpoint this long after it was written is a finding.
DEFAULT_MAX_PENDING = timedelta(hours=1)
# A record written later than now plus this is a finding, not pending (it would stay so).
MAX_CLOCK_SKEW = timedelta(minutes=5)
# The roles whose keys are online, so held by tuf-signer (PEP 458: timestamp, snapshot, bins).
ONLINE_ROLES = ("timestamp", "snapshot")


class MonitorError(TufSignerError):
    """The monitor could not check: a repository file or the log could not be read."""

    code = "UNAVAILABLE"


class NotFoundInRepository(MonitorError):
    """The repository answered 403 or 404 for a file (the end of the root versions)."""


class Reader(Protocol):
    """Reads one metadata file of the repository by name, at most ``max_length`` bytes.

    Raises:
        NotFoundInRepository: the repository has no such file (HTTP 403/404).
        MonitorError: it could not be read, or is larger than ``max_length``;
            the reason names the URL.
    """

    def __call__(self, name: str, max_length: int, /) -> bytes: ...


class RecordFinder(Protocol):
    """The log's records of a payload digest, as ``(seq, leaf)``: the leaf is the record's
    ``audit export`` line (``FindRecords``; ``AuditStore.find_records`` and ``record_leaf``).
    """

    def __call__(self, payload_sha256: str, /) -> Sequence[tuple[int, bytes]]: ...


class ProofGetter(Protocol):
    """The tlog-proof of record ``seq`` against a witnessed checkpoint, or None when no
    witnessed checkpoint covers it yet (see ``witnessed_size``).
    """

    def __call__(self, seq: int, /) -> bytes | None: ...


class Kind(enum.StrEnum):
    """What is wrong with one signature (or one file)."""

    UNLOGGED = "unlogged"  # no granted sign record with this digest, keyid and signature
    PROOF_FAILED = "proof-failed"  # the record's inclusion proof does not verify
    UNWITNESSED = "unwitnessed"  # logged, but not witnessed within max_pending
    UNREADABLE = "unreadable"  # a delegated role's file could not be read: not checked
    UNREGISTERED = "unregistered"  # the root or targets gives an online role a key not held
    FUTURE = "future"  # the record's time is ahead of now: no pending that never ends
    PENDING = "pending"  # logged, not yet witnessed, within max_pending: not a failure


@dataclass(frozen=True)
class Signature:
    """One signature of a metadata file.

    Attributes:
        file: the file name as fetched, e.g. ``3.bins-2a.json``.
        role: the role it is (``bins-2a``).
        payload_sha256: hex SHA-256 of the canonical JSON of its ``signed``.
        keyid: the signature's keyid.
        sig: the signature, as the file has it (hex).
    """

    file: str
    role: str
    payload_sha256: str
    keyid: str
    sig: str


@dataclass(frozen=True)
class Finding:
    """A signature (or a file) the monitor reports.

    Attributes:
        kind: what is wrong (``Kind.PENDING`` is listed but is no failure).
        file: the metadata file name.
        reason: in words, escaped by whoever prints it.
        keyid: the signing key's id ("" for a file that was not read).
        payload_sha256: the digest of the signed object ("" likewise).
        seq: the record found for it, if any.
    """

    kind: Kind
    file: str
    reason: str
    keyid: str = ""
    payload_sha256: str = ""
    seq: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "file": self.file,
            "keyid": self.keyid,
            "payload_sha256": self.payload_sha256,
            "seq": self.seq,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class MonitorReport:
    """What one run saw.

    Attributes:
        files: metadata files read.
        roles_listed: delegated roles the snapshot lists (``targets`` excluded).
        roles_checked: those read (all, or the sample).
        signatures: every signature in the files read.
        held: those by a key tuf-signer holds (each checked against the log).
        other: those by other keys (ignored).
        proven: held signatures whose record's inclusion proof verified.
        witnessed_size: the tree size of the witnessed checkpoint proofs were against.
        findings: failures, in file order.
        pending: logged signatures not yet witnessed (within ``max_pending``).
    """

    files: int
    roles_listed: int
    roles_checked: int
    signatures: int
    held: int
    other: int
    proven: int
    witnessed_size: int
    findings: tuple[Finding, ...] = ()
    pending: tuple[Finding, ...] = ()

    @property
    def ok(self) -> bool:
        """True when nothing failed (pending records within the bound are no failure)."""
        return not self.findings

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "files": self.files,
            "roles_listed": self.roles_listed,
            "roles_checked": self.roles_checked,
            "signatures": self.signatures,
            "held": self.held,
            "other": self.other,
            "proven": self.proven,
            "pending": len(self.pending),
            "witnessed_size": self.witnessed_size,
            "findings": [f.to_json() for f in (*self.findings, *self.pending)],
        }

    def summary(self) -> str:
        """One line for a person."""
        verdict = "OK" if self.ok else f"FAILED: {len(self.findings)} findings"
        sampled = (
            f" ({self.roles_checked} of {self.roles_listed} delegated roles)"
            if self.roles_checked < self.roles_listed
            else ""
        )
        return (
            f"{verdict}: {self.files} files{sampled}, {self.signatures} signatures, "
            f"{self.held} by held keys: {self.proven} logged and proven in the witnessed "
            f"tree of size {self.witnessed_size}, {len(self.pending)} pending; "
            f"{self.other} by other keys ignored"
        )


# --- reading the repository (python-tuf's rules) ----------------------------------------


@dataclass(frozen=True)
class _File:
    name: str
    role: str
    signed: dict[str, Any]
    signatures: tuple[Signature, ...]


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("an object has a key twice")
    return obj


def _refuse_float(literal: str) -> Any:
    raise ValueError(f"a float {literal[:24]!r} (TUF metadata has none)")


def read_metadata(name: str, role: str, data: bytes, base: str = "") -> _File:
    """Parse one metadata file: its ``signed`` object, digest and signatures.

    The digest is SHA-256 of the canonical JSON (securesystemslib's
    ``encode_canonical``) of ``signed`` as the file has it: the bytes a TUF
    signer signed (python-tuf's ``Metadata.signed_bytes``). ``base`` (the
    repository's URL) goes before ``name`` in messages.

    Raises:
        MonitorError: not JSON, a key twice in an object, a float, or not
            ``{"signed": {...}, "signatures": [{"keyid", "sig"}, ...]}``.
    """
    try:
        obj = json.loads(data, object_pairs_hook=_no_duplicates, parse_float=_refuse_float)
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
        signed, raw_sigs = obj.get("signed"), obj.get("signatures")
        if not isinstance(signed, dict):
            raise ValueError('"signed" is not an object')
        if not isinstance(raw_sigs, list):
            raise ValueError('"signatures" is not a list')
        canonical = encode_canonical(signed)  # a str without an output function
        assert canonical is not None
        digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
        signatures = []
        for s in raw_sigs:
            if not (
                isinstance(s, dict)
                and isinstance(s.get("keyid"), str)
                and isinstance(s.get("sig"), str)
            ):
                raise ValueError('a signature is not {"keyid": STRING, "sig": STRING}')
            signatures.append(Signature(name, role, digest, s["keyid"], s["sig"]))
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError too
        raise MonitorError(f"{base}{name}: not TUF metadata: {e}") from None
    return _File(name, role, signed, tuple(signatures))


def _meta(signed: dict[str, Any], where: str) -> dict[str, tuple[int, int | None]]:
    """``meta`` of a timestamp or snapshot: file name -> (version, length or None)."""
    meta = signed.get("meta")
    if not isinstance(meta, dict):
        raise MonitorError(f'{where}: "meta" is not an object')
    out = {}
    for name, info in meta.items():
        version = info.get("version") if isinstance(info, dict) else None
        length = info.get("length") if isinstance(info, dict) else None
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise MonitorError(f"{where}: meta {shown(name)} has no positive version")
        if length is not None and (isinstance(length, bool) or not isinstance(length, int)):
            raise MonitorError(f"{where}: meta {shown(name)} has a length that is not an integer")
        out[name] = (version, length)
    return out


def _versioned(role: str, version: int, consistent: bool) -> str:
    # python-tuf's Updater._download_metadata: the role name is URL-quoted.
    quoted = parse.quote(role, "")
    return f"{version}.{quoted}.json" if consistent else f"{quoted}.json"


def read_repository(
    read: Reader,
    *,
    sample: int | None = None,
    rng: random.Random | None = None,
    base: str = "",
) -> tuple[list[_File], list[Finding], int]:
    """Walk the repository as python-tuf's ngclient does; see the module docstring.

    Args:
        read: reads a file by name under the metadata URL.
        sample: read only this many delegated roles, chosen at random; None: all.
        rng: the random choice (tests seed it).
        base: the repository's URL, to name files in messages.

    Returns:
        The files read, a finding for each delegated role that could not be
        read, and the number of delegated roles the snapshot lists.

    Raises:
        MonitorError: a root, the timestamp, the snapshot or ``targets.json``
            cannot be read or is malformed (nothing can be checked without them).
    """
    files = []
    consistent = False
    for version in range(1, LIMITS.max_root_rotations + 2):
        name = f"{version}.root.json"
        try:
            data = read(name, LIMITS.root_max_length)
        except NotFoundInRepository:
            if version == 1:
                raise
            break
        root = read_metadata(name, "root", data, base)
        files.append(root)
        consistent = root.signed.get("consistent_snapshot") is True
    data = read("timestamp.json", LIMITS.timestamp_max_length)
    timestamp = read_metadata("timestamp.json", "timestamp", data, base)
    files.append(timestamp)
    snapshot_meta = _meta(timestamp.signed, f"{base}timestamp.json").get("snapshot.json")
    if snapshot_meta is None:
        raise MonitorError(f'{base}timestamp.json: "meta" does not name snapshot.json')
    version, length = snapshot_meta
    name = _versioned("snapshot", version, consistent)
    data = read(name, length or LIMITS.snapshot_max_length)
    snapshot = read_metadata(name, "snapshot", data, base)
    files.append(snapshot)
    listed = _meta(snapshot.signed, base + name)
    if "targets.json" not in listed:
        raise MonitorError(f'{base}{name}: "meta" does not list targets.json')
    roles = sorted(
        n[: -len(".json")] for n in listed if n.endswith(".json") and n != "targets.json"
    )
    chosen = roles
    if sample is not None and sample < len(roles):
        chosen = sorted((rng or random.SystemRandom()).sample(roles, sample))
    unread = []
    for role in ("targets", *chosen):
        version, length = listed[f"{role}.json"]
        name = _versioned(role, version, consistent)
        try:
            data = read(name, length or LIMITS.targets_max_length)
            files.append(read_metadata(name, role, data, base))
        except MonitorError as e:
            if role == "targets":
                raise
            unread.append(Finding(Kind.UNREADABLE, name, e.reason))
    return files, unread, len(roles)


# --- checking signatures against the log ------------------------------------------------


def witnessed_size(note: bytes | None, keys: LogKeys) -> int:
    """The tree size of a checkpoint that counts as witnessed, or 0.

    Args:
        note: the checkpoint that proofs will be against (the store's newest
            witnessed one, or a server's newest), with its cosignatures; None
            when there is none yet.
        keys: the log's key, the witness keys and their quorum.

    Returns:
        Its size if the log key signed it and ``keys.quorum`` witnesses
        cosigned it; 0 if it lacks cosignatures (nothing is witnessed yet).

    Raises:
        MonitorError: it is malformed, from another origin, or not signed by the
            log key (a wrong ``--vkey``, or a forged checkpoint).
    """
    if note is None:
        return 0
    from tuf_signer.audit._note import NoteError

    try:
        signed = open_checkpoint(note, origin=keys.origin, log_key=keys.log_key)
    except NoteError as e:
        raise MonitorError(f"the log's checkpoint does not verify: {e.reason}") from None
    try:
        open_checkpoint(
            note,
            origin=keys.origin,
            log_key=keys.log_key,
            cosigners=keys.witnesses,
            quorum=keys.quorum,
        )
    except NoteError:
        return 0
    return signed.checkpoint.size


def _keyids(role: object) -> list[str]:
    keyids = role.get("keyids") if isinstance(role, dict) else None
    return [k for k in keyids if isinstance(k, str)] if isinstance(keyids, list) else []


def online_keys(files: Iterable[_File]) -> dict[str, str]:
    """The keyids the repository itself gives to online roles, each with the file naming it.

    The registry of the host being monitored is not trusted to say which keys
    are online: every root's ``timestamp`` and ``snapshot`` keyids (TUF
    specification §4.3) and the keyids of ``targets``' succinct delegation
    (TAP 15, the PEP 458 bins) are held too.
    """
    found: dict[str, str] = {}
    for f in files:
        if f.role == "root":
            roles = f.signed.get("roles")
            for role in ONLINE_ROLES:
                for keyid in _keyids(roles.get(role) if isinstance(roles, dict) else None):
                    found.setdefault(keyid, f.name)
        elif f.role == "targets":
            delegations = f.signed.get("delegations")
            succinct = delegations.get("succinct_roles") if isinstance(delegations, dict) else None
            for keyid in _keyids(succinct):
                found.setdefault(keyid, f.name)
    return found


def _record_time(event: dict[str, Any]) -> datetime | None:
    try:
        return datetime.fromisoformat(str(event.get("time", ""))).astimezone(UTC)
    except ValueError:
        return None


def _matches(sig: Signature, seq: int, leaf: bytes) -> dict[str, Any] | None:
    """The record's event if ``leaf`` is record ``seq``, a granted sign of exactly ``sig``."""
    try:
        line = json.loads(leaf)
    except ValueError:
        return None
    event = line.get("event") if isinstance(line, dict) else None
    if not isinstance(event, dict) or line.get("seq") != seq:
        return None
    if (
        event.get("operation") == "sign"
        and event.get("outcome") == "granted"
        and event.get("payload_sha256") == sig.payload_sha256
        and event.get("keyid") == sig.keyid
        and event.get("signature") == sig.sig
    ):
        return event
    return None


@dataclass
class _Tally:
    proven: int = 0
    findings: list[Finding] = field(default_factory=list)
    pending: list[Finding] = field(default_factory=list)


def _check(
    sig: Signature,
    find: RecordFinder,
    prove: ProofGetter,
    keys: LogKeys,
    now: datetime,
    max_pending: timedelta,
    tally: _Tally,
) -> None:
    def finding(kind: Kind, reason: str, seq: int | None = None) -> Finding:
        return Finding(kind, sig.file, reason, sig.keyid, sig.payload_sha256, seq)

    records = find(sig.payload_sha256)
    match = next(((s, leaf, e) for s, leaf in records if (e := _matches(sig, s, leaf))), None)
    if match is None:
        others = f" ({len(records)} other records of this digest)" if records else ""
        tally.findings.append(
            finding(
                Kind.UNLOGGED,
                f"a signature by held key {sig.keyid[:16]}... over {sig.role} is not in the "
                f"log{others}: it was made outside tuf-signer",
            )
        )
        return
    seq, leaf, event = match
    proof = prove(seq)
    if proof is None:
        at = _record_time(event)
        if at is not None and at > now + MAX_CLOCK_SKEW:
            tally.findings.append(
                finding(
                    Kind.FUTURE,
                    f"record {seq} is dated {event.get('time')}, after now "
                    f"({now.isoformat(timespec='seconds')}) by more than the allowed skew",
                    seq,
                )
            )
        elif at is not None and at > now - max_pending:
            tally.pending.append(finding(Kind.PENDING, f"record {seq} is not witnessed yet", seq))
        else:
            tally.findings.append(
                finding(
                    Kind.UNWITNESSED,
                    f"record {seq} (written {event.get('time')}) is still not in a "
                    "witnessed checkpoint",
                    seq,
                )
            )
        return
    try:
        parsed = parse_tlog_proof(proof)
        if parsed.index != seq - 1:
            raise MonitorError(f"the proof is of leaf {parsed.index}, not {seq - 1}")
        verify_tlog_proof(
            parsed,
            leaf_hash=leaf_hash(leaf),
            origin=keys.origin,
            log_key=keys.log_key,
            verify_inclusion=merkle_inclusion,
            cosigners=keys.witnesses,
            quorum=keys.quorum,
        )
    except TufSignerError as e:
        tally.findings.append(
            finding(Kind.PROOF_FAILED, f"record {seq}'s inclusion proof fails: {e.reason}", seq)
        )
        return
    tally.proven += 1


def check_signatures(
    files: Iterable[_File],
    *,
    held: Iterable[str],
    find: RecordFinder,
    prove: ProofGetter,
    keys: LogKeys,
    witnessed: int,
    now: datetime,
    max_pending: timedelta = DEFAULT_MAX_PENDING,
    unread: Sequence[Finding] = (),
    roles_listed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> MonitorReport:
    """Hold every signature of a held key in ``files`` against the log.

    Args:
        files: the metadata files read (``read_repository``).
        held: every keyid tuf-signer's registry holds (every version of every
            key). The keyids the repository gives online roles (``online_keys``)
            are held too, and each one missing here is a finding.
        find: the records of a payload digest.
        prove: the proof of a record against the witnessed checkpoint.
        keys: the log's key and the witnesses' keys and quorum.
        witnessed: that checkpoint's size (``witnessed_size``).
        now: the time, to age pending records.
        max_pending: a record not witnessed this long after it was written is
            a finding (``Kind.UNWITNESSED``).
        unread: findings for roles that could not be read.
        roles_listed: the delegated roles the snapshot lists.
        progress: called with the number of files done, now and then.

    Raises:
        TufSignerError: ``find`` or ``prove`` failed (the log could not be asked).
    """
    files = list(files)
    registered = frozenset(held)
    online = online_keys(files)
    held_ids = registered | online.keys()
    tally = _Tally()
    for keyid, name in online.items():
        if keyid not in registered:
            tally.findings.append(
                Finding(
                    Kind.UNREGISTERED,
                    name,
                    f"{name} gives an online role key {keyid[:16]}..., which the log's key "
                    "registry does not hold: its signatures are checked as held anyway",
                    keyid,
                )
            )
    count = held_count = other = 0
    for i, f in enumerate(files, 1):
        for sig in f.signatures:
            count += 1
            if sig.keyid not in held_ids:
                other += 1
                continue
            held_count += 1
            _check(sig, find, prove, keys, now, max_pending, tally)
        if progress is not None and i % 256 == 0:
            progress(i)
    roles_checked = sum(f.role not in ("root", "timestamp", "snapshot", "targets") for f in files)
    return MonitorReport(
        files=len(files),
        roles_listed=roles_listed,
        roles_checked=roles_checked + len(unread),
        signatures=count,
        held=held_count,
        other=other,
        proven=tally.proven,
        witnessed_size=witnessed,
        findings=(*tally.findings, *unread),
        pending=tuple(tally.pending),
    )


__all__ = [
    "DEFAULT_MAX_PENDING",
    "LIMITS",
    "MAX_CLOCK_SKEW",
    "Finding",
    "Kind",
    "MonitorError",
    "MonitorReport",
    "NotFoundInRepository",
    "ProofGetter",
    "Reader",
    "RecordFinder",
    "Signature",
    "check_signatures",
    "online_keys",
    "read_metadata",
    "read_repository",
    "witnessed_size",
]
