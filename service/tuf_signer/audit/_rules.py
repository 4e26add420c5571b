"""The high-water rule for one (key, role), shared by the service and the stores.

TUF clients refuse metadata whose version is lower than the one they trust
(TUF spec §5.3-5.6, rollback attacks), and two different payloads with one
version would let a compromised repository show different clients different
views (equivocation). The service refuses both before signing (P3).
"""

from __future__ import annotations

from typing import Literal

from tuf_signer.errors import RollbackError
from tuf_signer.model import RoleState


def advance_decision(current: RoleState | None, new: RoleState) -> Literal["apply", "replay"]:
    """Decide whether ``new`` may advance the role state ``current``.

    Returns:
        "apply" when ``new`` may be signed and stored: no state yet, a higher
        version, or the very same payload under a different keyid (re-signed
        after a rotation); "replay" when ``new`` repeats the stored state
        exactly (same version, payload and keyid): answer with the stored
        signature.

    Raises:
        RollbackError: a lower version (rollback) or the same version with a
            different payload (equivocation); the reason names the current
            high-water version.
    """
    if current is None or new.version > current.version:
        return "apply"
    where = f"role {new.role!r} with key {new.key_name!r}"
    if new.version == current.version:
        if new.payload_sha256 != current.payload_sha256:
            raise RollbackError(
                f"equivocation: a different payload was already signed as version "
                f"{current.version} for {where}; the next version must be above {current.version}"
            )
        return "replay" if new.keyid == current.keyid else "apply"
    raise RollbackError(
        f"rollback: version {new.version} is not above version {current.version} "
        f"already signed for {where}"
    )
