"""The ``[audit]`` table alone: what an auditor's copy of the config needs.

``tuf-signer audit verify`` reads the store and checks it with verifier keys;
it needs no ``[backends]``, no HSM and no TLS. So it reads the ``[audit]``
table with the very parser the server uses (``parse_audit``) and ignores
every other table, which an auditor's copy may leave out.
"""

from __future__ import annotations

from pathlib import Path

from tuf_signer.config._parse import parse_audit, read_toml
from tuf_signer.config._reader import Table
from tuf_signer.config._settings import AuditConfig


def load_audit_config(path: Path | str) -> AuditConfig:
    """Read and validate only the ``[audit]`` table of a TOML config file.

    The table is read exactly as ``load_config`` reads it (relative paths are
    relative to the file's directory, every error names its setting); the
    other tables are not read, so they may be missing or hold settings this
    host cannot use. The audit key's ``backend`` is not checked against
    ``[backends]``, and ``audit.key`` may be left out: nothing here signs.

    Raises:
        ConfigError: the file cannot be read, is not TOML, or an ``[audit]``
            setting is wrong.
    """
    path = Path(path).resolve()
    return parse_audit(Table(read_toml(path), "").table("audit"), path.parent, signing=False)
