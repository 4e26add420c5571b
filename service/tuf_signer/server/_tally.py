"""Counted refusals: what a flood of unadmitted calls costs the record.

Every refused call is on the record (P4), but a refusal that reached no key
(a caller with no identity or no access rule, or one over its limits) does not
get a record and an fsync of its own: any certificate the client CA issued
could then fill the disk and starve the backends' commits. Such refusals are
counted per (identity, status) and written as one summary record per interval,
with the count, the first and last time, the methods called (with their own
counts) and one reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tuf_signer.errors import TufSignerError
from tuf_signer.model import AuditEvent, Outcome, recordable

# Distinct (identity, operation, status) groups kept between two summaries;
# past it, further groups are counted under OVERFLOW_IDENTITY.
MAX_GROUPS = 10_000
OVERFLOW_IDENTITY = "*other identities*"
SUMMARY_OPERATION = "refused-calls"


@dataclass
class _Group:
    count: int
    first: str
    last: str
    reason: str
    methods: dict[str, int] = field(default_factory=dict)


class RefusalTally:
    """Counts refusals between summaries; ``drain`` turns them into records."""

    def __init__(self, max_groups: int = MAX_GROUPS) -> None:
        self._groups: dict[tuple[str, str], _Group] = {}
        self._max_groups = max_groups

    def __len__(self) -> int:
        return len(self._groups)

    def add(self, identity: str, operation: str, error: TufSignerError, at: str) -> None:
        """Count one refusal of ``identity`` calling ``operation`` at time ``at``."""
        key = (identity, error.code)
        group = self._groups.get(key)
        if group is None:
            if len(self._groups) >= self._max_groups:
                key = (OVERFLOW_IDENTITY, error.code)
                group = self._groups.get(key)
            if group is None:
                group = self._groups[key] = _Group(0, at, at, recordable(error.reason, 512))
        group.count += 1
        group.last = at
        if len(group.methods) < 16 or operation in group.methods:
            group.methods[operation] = group.methods.get(operation, 0) + 1

    def restore(self, events: list[AuditEvent]) -> None:
        """Count again the summaries ``drain`` gave, when they could not be written."""
        for event in events:
            key = (event.identity, event.status)
            detail = event.detail
            group = self._groups.get(key)
            if group is None:
                reason = event.reason.partition(": ")[2] or event.reason
                group = self._groups[key] = _Group(0, detail["first"], detail["last"], reason)
            group.count += int(detail["count"])
            group.first = min(group.first, detail["first"])
            group.last = max(group.last, detail["last"])
            for operation, count in detail["operations"].items():
                group.methods[operation] = group.methods.get(operation, 0) + int(count)

    def drain(self) -> list[AuditEvent]:
        """One summary event per group counted since the last drain; resets the counts."""
        groups, self._groups = self._groups, {}
        return [
            AuditEvent(
                time=group.last,
                identity=recordable(identity, 1024),
                operation=SUMMARY_OPERATION,
                outcome=Outcome.REFUSED,
                status=status,
                reason=f"{group.count} calls refused from {group.first} to {group.last}: "
                f"{group.reason}",
                detail={
                    "count": group.count,
                    "first": group.first,
                    "last": group.last,
                    "operations": dict(sorted(group.methods.items())),
                },
            )
            for (identity, status), group in groups.items()
        ]
