"""The high-water rule for one (key, role), shared by the service and the stores.

TUF clients refuse metadata whose version is lower than the one they trust
(TUF spec §5.3-5.6, rollback attacks), and two different payloads with one
version would let a compromised repository show different clients different
views (equivocation). The service refuses both before signing (P3).

It also bounds how far one signature may move the mark (``max_step``): TUF
versions only grow, so a compromised backend that got version 2**63 - 1 signed
would leave the role unsignable with this key for good (finding 8 of issue 10).
An admin reset (``ResetRole``) moves the mark on purpose, on the record.
"""

from __future__ import annotations

from typing import Literal

from tuf_signer.errors import RollbackError, VersionStepError
from tuf_signer.model import RoleState

# What an admin runs to move a mark (named in refusals).
RESET_HINT = "tuf-signer keys reset-role KEY ROLE --version N --reason TEXT"


def is_reset_mark(state: RoleState) -> bool:
    """Whether ``state`` was set by an admin reset (a mark with no signature behind it)."""
    return not state.payload_sha256


def advance_decision(
    current: RoleState | None, new: RoleState, max_step: int | None = None
) -> Literal["apply", "replay"]:
    """Decide whether ``new`` may advance the role state ``current``.

    Args:
        current: the stored high-water mark, None when the role has none (the
            mark then counts as version 0).
        new: the state a signature would set.
        max_step: the largest ``new.version - current.version`` allowed; None
            for no bound.

    Returns:
        "apply" when ``new`` may be signed and stored: no state yet, a higher
        version (at most ``max_step`` above), or the very same payload under a
        different keyid (re-signed after a rotation); "replay" when ``new``
        repeats the stored state exactly (same version, payload and keyid):
        answer with the stored signature.

    Raises:
        RollbackError: a lower version (rollback) or the same version with a
            different payload (equivocation); the reason names the current
            high-water version.
        VersionStepError: a version more than ``max_step`` above the mark; the
            reason names the mark, the step and how an admin resets it.
    """
    where = f"role {new.role!r} with key {new.key_name!r}"
    mark = 0 if current is None else current.version
    if new.version > mark:
        if max_step is not None and new.version - mark > max_step:
            if current is None:
                since = "no version was signed yet (the mark counts from 0)"
            elif is_reset_mark(current):
                since = f"the mark is version {mark}, set by an admin reset"
            else:
                since = f"the mark is version {mark}"
            raise VersionStepError(
                f"version step: version {new.version} is {new.version - mark} above the mark "
                f"of {where}, more than max_version_step {max_step}; {since}. A repository "
                f"that moves on to a higher version on purpose (e.g. migrating) needs an "
                f"admin to move the mark first: {RESET_HINT}"
            )
        return "apply"
    if current is None:  # TUF versions start at 1 (the policy refuses 0 already)
        raise RollbackError(f"rollback: version {new.version} is not above 0 for {where}")
    if current.version == new.version and is_reset_mark(current):
        raise RollbackError(
            f"rollback: version {new.version} is not above version {current.version}, "
            f"the mark an admin reset set for {where}"
        )
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
