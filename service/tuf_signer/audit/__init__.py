"""The audit record: store interface, hash chain, SQLite and PostgreSQL stores, verifier.

One store holds the record, the role state and the key registry, so that a
signature's record and the role state it advances commit together (P3, P4, P8).
The record is a hash chain and the leaves of an RFC 6962 Merkle tree (P5, issue 13;
``record_leaf``); ``verify_records`` checks the chain offline, ``verify_store`` the
chain and the tree. ``tlog_proof`` and ``consistency`` prove records and tree sizes
against the signed checkpoints the store keeps (``_proofs``); ``verify_log`` holds
the store against checkpoints kept elsewhere (``_witnessed``).
"""

from __future__ import annotations

from tuf_signer.audit._chain import RESET, event_from_dict, event_to_dict, record_hash
from tuf_signer.audit._checkpoints import StoredCheckpoint
from tuf_signer.audit._open import STORE_OPENERS, open_audit_store
from tuf_signer.audit._postgres import PostgresAuditStore, dsn_secrets
from tuf_signer.audit._proofs import (
    Consistency,
    NoCheckpointError,
    consistency,
    find_checkpoint,
    format_consistency,
    merkle_inclusion,
    parse_consistency,
    tlog_proof,
)
from tuf_signer.audit._rules import RESET_HINT, advance_decision, is_reset_mark, refused_event
from tuf_signer.audit._sqlite import SqliteAuditStore
from tuf_signer.audit._store import (
    GENESIS_HASH,
    AddVersion,
    AdvanceRole,
    ApproveDelegations,
    AuditRecord,
    AuditStore,
    Committed,
    CreateKey,
    Entry,
    ResetRole,
    SetKeyRules,
    SetVersionState,
)
from tuf_signer.audit._tree import record_leaf
from tuf_signer.audit._verify import VerifyReport, verify_records, verify_store
from tuf_signer.audit._witnessed import (
    Anchor,
    CheckpointError,
    LogKeys,
    LogReport,
    StoreBehindError,
    StoreForkError,
    UntrustedCheckpointError,
    verify_log,
)

__all__ = [
    "GENESIS_HASH",
    "RESET",
    "RESET_HINT",
    "STORE_OPENERS",
    "AddVersion",
    "AdvanceRole",
    "Anchor",
    "ApproveDelegations",
    "AuditRecord",
    "AuditStore",
    "CheckpointError",
    "Committed",
    "Consistency",
    "CreateKey",
    "Entry",
    "LogKeys",
    "LogReport",
    "NoCheckpointError",
    "PostgresAuditStore",
    "ResetRole",
    "SetKeyRules",
    "SetVersionState",
    "SqliteAuditStore",
    "StoreBehindError",
    "StoreForkError",
    "StoredCheckpoint",
    "UntrustedCheckpointError",
    "VerifyReport",
    "advance_decision",
    "consistency",
    "dsn_secrets",
    "event_from_dict",
    "event_to_dict",
    "find_checkpoint",
    "format_consistency",
    "is_reset_mark",
    "merkle_inclusion",
    "open_audit_store",
    "parse_consistency",
    "record_hash",
    "record_leaf",
    "refused_event",
    "tlog_proof",
    "verify_log",
    "verify_records",
    "verify_store",
]
