"""What a payload says about the rest of the repository (issue 14): pure, no I/O.

Three things the store needs to hold one signature against the others this
key made, all read here from the parsed ``signed`` object:

- **Which bin a role-less targets payload is** (``infer_targets_role``).
  python-tuf's ``Metadata.sign`` hands a signer only bytes, so a repository
  with one online key (RSTUF) cannot say which bin it signs. The payload can:
  a bin lists only paths that hash into it (python-tuf
  ``SuccinctRoles.get_role_for_target``), and the top-level ``targets`` is the
  one that carries the declared ``succinct_roles`` delegation.
- **What a snapshot or timestamp lists** (``listing``): the version of every
  role this key signs that a snapshot lists, and the snapshot version a
  timestamp names. The store refuses a listing below the one before or at a
  version the key never signed (docs/design.md P9).
- **The delegations a targets payload makes** (``delegations_digest``,
  ``delegated_keyids``): a change needs an admin's approval, and so do the
  first ones unless they delegate only to keys of the service, so a
  compromised backend cannot delegate the bins to a key outside it.

Empty bins. An empty bin (``"targets": {}``) holds nothing that names its bin:
its bytes are the same for every bin at one version and expiry, and its
signature verifies as any of them. A role-less empty bin is therefore
attributed to no bin but to the *empty bin* of its exact payload
(``empty_bin_role``: ``PREFIX-*empty-SHA256``, a name no client can send, since
role names may not hold ``*``). That mark only makes a retry a replay; what
keeps bins from rolling back is the snapshot: it may list a bin at version V
only if V is not below the version the last snapshot of this key listed, and
the key signed that bin at V or above, or signed an empty bin at V. So an empty
bin opens no rollback: the version a client trusts for a bin never goes down.
What it allows is what TUF allows for any empty bin: shown in place of a bin at
the same version, it hides that bin's targets at that version (never adds one).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any

from tuf_signer.errors import PayloadError, RequestError, shown
from tuf_signer.model import BinsDelegation, RoleRule
from tuf_signer.policy._bins import (
    GLOB_CHARS,
    bin_for_path,
    bin_index,
    bin_name,
    bins_pattern,
    suffix_len,
)

# The role an empty, role-less bin is attributed to: PREFIX + EMPTY_BIN + digest.
EMPTY_BIN = "-*empty-"
_JSON_SUFFIX = ".json"  # TUF spec §4.4: snapshot meta keys are ROLENAME.json
_MAX_VERSION = 2**63 - 1
_TOP_LEVEL = frozenset({"root", "snapshot", "timestamp"})

# (role, version, is a bin) for each role this key signs that a snapshot or
# timestamp lists.
Listing = tuple[tuple[str, int, bool], ...]


def empty_bin_role(bins: BinsDelegation, payload_sha256: str) -> str:
    """The role a role-less empty bin with this payload digest is attributed to."""
    return f"{bins.prefix}{EMPTY_BIN}{payload_sha256}"


def is_empty_bin_role(role: str) -> bool:
    """Whether ``role`` is an empty-bin attribution (no client may name one: it holds ``*``)."""
    return EMPTY_BIN in role


def infer_targets_role(
    obj: Mapping[str, Any], bins: BinsDelegation | None, key_name: str, payload_sha256: str
) -> str:
    """The role of a targets payload sent without one.

    - It carries the declared ``succinct_roles`` delegation: ``targets``.
    - Its target paths all hash into one bin: that bin.
    - It lists no target and delegates nothing: the empty bin of its payload
      (``empty_bin_role``; see the module docstring).

    Raises:
        RequestError: the key declares no bins, so nothing can be inferred.
        PayloadError: the payload has delegations other than the declared
            ``succinct_roles``, no ``targets`` object, or paths in several bins.
    """
    if bins is None:
        raise RequestError(
            f"role name required for targets metadata: key {shown(key_name)} declares no "
            "hash-bin delegation to infer the role from (keys create … --bins PREFIX:BIT_LENGTH)"
        )
    if "delegations" in obj:
        check_declared_delegation(obj, bins)
        return "targets"
    targets = obj.get("targets")
    if not isinstance(targets, dict):
        raise PayloadError("targets metadata has no 'targets' object")
    if not targets:
        return empty_bin_role(bins, payload_sha256)
    homes: dict[str, str] = {}
    for path in targets:
        home = bin_for_path(bins, path)
        homes.setdefault(home, path)
        if len(homes) > 1:
            (a, pa), (b, pb) = list(homes.items())[:2]
            raise PayloadError(
                f"no role can be inferred: the target paths belong in several bins, {shown(pa)} "
                f"in {a!r} and {shown(pb)} in {b!r} (python-tuf SuccinctRoles); a bin lists "
                "only its own paths"
            )
    return next(iter(homes))


def check_declared_delegation(obj: Mapping[str, Any], bins: BinsDelegation) -> None:
    """Check that a role-less payload's ``delegations`` are exactly the declared bins.

    Raises:
        PayloadError: naming what differs.
    """
    delegations = obj.get("delegations")
    succinct = delegations.get("succinct_roles") if isinstance(delegations, dict) else None
    if not isinstance(succinct, dict):
        raise PayloadError(
            "a role-less targets payload with 'delegations' must delegate to the declared "
            f"succinct_roles {bins}; name the role of any other delegating targets metadata"
        )
    prefix, bits = succinct.get("name_prefix"), succinct.get("bit_length")
    if prefix != bins.prefix or bits != bins.bit_length or isinstance(bits, bool):
        raise PayloadError(
            f"delegations.succinct_roles {shown(str(prefix))}:{shown(str(bits))} is not the "
            f"declared bins {bins}"
        )


def check_role_agrees(
    role: str, obj: Mapping[str, Any], bins: BinsDelegation | None, payload_sha256: str
) -> None:
    """An explicit role must agree with what the payload itself says (issue 14, item 3).

    Only a payload that names its role agrees or disagrees: one with the
    declared ``succinct_roles`` is ``targets``, one with target paths is their
    bin. An empty bin names none, so any role may sign it.

    Raises:
        RequestError: the role disagrees (names both).
    """
    if bins is None:
        return
    try:
        inferred = infer_targets_role(obj, bins, "", payload_sha256)
    except (PayloadError, RequestError):
        return  # nothing inferred: the role's own checks judge the payload
    if is_empty_bin_role(inferred) or inferred == role:
        return
    raise RequestError(
        f"role {shown(role)} disagrees with the payload, which is {inferred!r} "
        + (
            "(it carries the declared succinct_roles delegation)"
            if inferred == "targets"
            else "(its target paths hash into that bin)"
        )
    )


def check_not_a_bin(role: str, obj: Mapping[str, Any], bins: BinsDelegation | None) -> None:
    """Targets metadata that is not a bin lists no target file, for a key that declares bins.

    TUF's signed bytes do not name their role: a targets payload this key
    signs as ``targets`` (or as any role other than a bin) that lists target
    files verifies as each bin its paths hash into, at its version. A
    compromised backend would sign, as top-level ``targets`` with the very
    delegations already approved, a second version N of a bin it could never
    get signed as that bin: a fork (P3). PEP 458 and RSTUF list no target in
    top-level ``targets``; delegated roles other than the bins belong to
    another key.

    Raises:
        PayloadError: the payload lists target files (names the bin of the
            first one).
    """
    if bins is None or bin_index(bins, role) is not None or is_empty_bin_role(role):
        return
    targets = obj.get("targets")
    if isinstance(targets, dict) and targets:
        first = next(iter(targets))
        raise PayloadError(
            f"role {shown(role)} lists target files, but the key declares the bins {bins} and "
            f"signs target files only in them: this signature would also verify as "
            f"{bin_for_path(bins, first)!r} (TUF's signed bytes do not name the role; "
            f"{shown(first)} hashes there); list targets in the bins, and give other "
            "delegated roles a key without a bins declaration"
        )


def empty_bin_rule(rules: Sequence[RoleRule], bins: BinsDelegation, key_name: str) -> RoleRule:
    """The rule that lets the key sign an empty bin: one that allows every bin.

    An empty bin's signature verifies as any bin, so the key must be allowed
    all of them; the first and last bin stand for the declared range.

    Raises:
        PermissionError_: no rule allows both.
    """
    from tuf_signer.policy._checks import check_role_allowed  # _checks imports this module

    first = check_role_allowed(bin_name(bins, 0), rules, key_name)
    check_role_allowed(bin_name(bins, (1 << bins.bit_length) - 1), rules, key_name)
    return first


def listing(
    obj: Mapping[str, Any],
    type_: str,
    bins: BinsDelegation | None,
    rules: Sequence[RoleRule],
) -> Listing | None:
    """What a snapshot or timestamp lists of the roles this key signs (P9).

    Coherence holds for keys that declare bins; for others, and for targets
    metadata, there is nothing to hold (None).

    Returns:
        A snapshot: ``(role, version, is a bin)`` for each ``ROLE.json`` in
        ``meta`` whose role this key signs (a declared bin its rules allow, or
        a role a literal rule names). A timestamp: ``(("snapshot", version,
        False),)``.

    Raises:
        PayloadError: ``meta`` is missing or not an object, a listed version
            is not an integer in 1..2**63-1, or a timestamp names no
            ``snapshot.json`` (TUF spec §4.4, §4.6).
    """
    if bins is None or type_ not in ("snapshot", "timestamp"):
        return None
    meta = obj.get("meta")
    if not isinstance(meta, dict):
        raise PayloadError(f"{type_} metadata has no 'meta' object")
    if type_ == "timestamp":
        if "snapshot.json" not in meta:
            raise PayloadError("timestamp meta names no 'snapshot.json'")
        return (("snapshot", _listed_version(meta, "snapshot.json"), False),)
    signs = _signed_roles(rules, bins)
    out: list[tuple[str, int, bool]] = []
    cut = -len(_JSON_SUFFIX)
    for name, entry in meta.items():
        if not name.endswith(_JSON_SUFFIX):
            continue
        role = name[:cut]
        kind = signs(role)
        if kind is None:
            continue
        # The common case inline (a snapshot lists 16,384 bins): an object whose
        # version is a plain int in range.
        version = entry.get("version") if type(entry) is dict else None
        if type(version) is not int or not 1 <= version <= _MAX_VERSION:
            version = _listed_version(meta, name)  # raises, naming the entry
        out.append((role, version, kind))
    return tuple(out)


def delegations_digest(obj: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a targets payload's ``delegations`` as canonical JSON ("null" if none).

    The payload is canonical JSON already, so one object always gives one digest.
    """
    text = json.dumps(
        obj.get("delegations"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def delegated_keyids(obj: Mapping[str, Any]) -> frozenset[str] | None:
    """Every keyid a targets payload's ``delegations`` names (TUF spec §4.5).

    The keys of ``delegations.keys`` and the ``keyids`` of every role and of
    ``succinct_roles``. The service accepts a key's first delegations for a
    role without an admin's approval only when each is a version of a key in
    its registry (``audit._rules.coherence_writes``).

    Returns:
        The keyids; None when ``delegations`` is not shaped as the spec says
        (then nothing is known about it: an admin approves it).
    """
    delegations = obj.get("delegations")
    if delegations is None:
        return frozenset()
    if not isinstance(delegations, dict):
        return None
    keys = delegations.get("keys", {})
    if not isinstance(keys, dict):
        return None
    out = set(keys)
    roles = delegations.get("roles", [])
    succinct = delegations.get("succinct_roles")
    groups = (
        [*roles, *([succinct] if succinct is not None else [])] if isinstance(roles, list) else None
    )
    if groups is None:
        return None
    for group in groups:
        keyids = group.get("keyids") if isinstance(group, dict) else None
        if not isinstance(keyids, list) or not all(isinstance(k, str) for k in keyids):
            return None
        out.update(keyids)
    return frozenset(out)


def _listed_version(meta: Mapping[str, Any], name: str) -> int:
    entry = meta[name]
    version = entry.get("version") if isinstance(entry, dict) else None
    if (
        not isinstance(version, int)
        or isinstance(version, bool)
        or not 1 <= version <= _MAX_VERSION
    ):
        raise PayloadError(f"meta[{shown(name)}].version is not an integer in 1..2**63-1")
    return version


def _signed_roles(rules: Sequence[RoleRule], bins: BinsDelegation) -> Any:
    """A test: does this key sign ``role`` (other than snapshot and timestamp), and is it a bin?"""
    literal = {
        r.pattern
        for r in rules
        if not any(c in GLOB_CHARS for c in r.pattern) and r.pattern not in _TOP_LEVEL
    }
    globs = [r.pattern for r in rules if any(c in GLOB_CHARS for c in r.pattern)]
    every_bin = bins_pattern(bins) in globs
    # bin_index, fast: exactly PREFIX-<suffix_len lowercase hex digits>, below 2**bits.
    width = suffix_len(bins)
    shape = re.compile(f"{re.escape(bins.prefix)}-[0-9a-f]{{{width}}}")
    lead = len(bins.prefix) + 1
    # The first suffix digit carries what is left of the bit length.
    first = frozenset("0123456789abcdef"[: 1 << (bins.bit_length - 4 * (width - 1))])

    def is_a_bin(role: str) -> bool:
        return shape.fullmatch(role) is not None and role[lead] in first

    def signs(role: str) -> bool | None:
        """None: not signed by this key; else whether it is a bin."""
        is_bin = is_a_bin(role)
        if role in literal:
            return is_bin
        if not is_bin:
            return None
        return True if every_bin or any(fnmatchcase(role, g) for g in globs) else None

    return signs


__all__ = [
    "EMPTY_BIN",
    "Listing",
    "check_declared_delegation",
    "check_not_a_bin",
    "check_role_agrees",
    "delegated_keyids",
    "delegations_digest",
    "empty_bin_role",
    "empty_bin_rule",
    "infer_targets_role",
    "is_empty_bin_role",
    "listing",
]
