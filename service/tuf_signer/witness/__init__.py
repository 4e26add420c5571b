"""A c2sp.org/tlog-witness for the audit log's checkpoints (issue 13, P5).

The witness is a small separate HTTP service: it keeps the latest checkpoint
it cosigned for each configured log, cosigns (cosignature/v1, Ed25519) a new
checkpoint only when a consistency proof shows it extends that one, and serves
the latest cosigned checkpoint to monitors. The signer and ``audit verify``
talk to witnesses through ``add_checkpoint`` and ``fetch_checkpoint``.

Layer: it builds on ``audit``'s pure note, checkpoint and Merkle modules and
on ``config``'s table reader, and nothing imports it but the CLI (and, later,
the signer's checkpoint publisher).
"""

from __future__ import annotations

from tuf_signer.witness._client import (
    WitnessConflict,
    WitnessRejected,
    WitnessUnavailable,
    add_checkpoint,
    fetch_checkpoint,
)
from tuf_signer.witness._config import (
    DEFAULT_WITNESS_LISTEN,
    TrustedLog,
    WitnessServerConfig,
    load_witness_config,
    parse_witness_config,
)
from tuf_signer.witness._create import create_witness
from tuf_signer.witness._key import WitnessKey
from tuf_signer.witness._protocol import format_submission, origin_hash, parse_submission
from tuf_signer.witness._server import WitnessHTTPServer, open_witness_server, run_witness
from tuf_signer.witness._state import Cosigned, Evidence, WitnessState
from tuf_signer.witness._witness import Witness

__all__ = [
    "DEFAULT_WITNESS_LISTEN",
    "Cosigned",
    "Evidence",
    "TrustedLog",
    "Witness",
    "WitnessConflict",
    "WitnessHTTPServer",
    "WitnessKey",
    "WitnessRejected",
    "WitnessServerConfig",
    "WitnessState",
    "WitnessUnavailable",
    "add_checkpoint",
    "create_witness",
    "fetch_checkpoint",
    "format_submission",
    "load_witness_config",
    "open_witness_server",
    "origin_hash",
    "parse_submission",
    "parse_witness_config",
    "run_witness",
]
