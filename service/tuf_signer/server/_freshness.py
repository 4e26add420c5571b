"""The freshness watch: roles about to expire because nobody re-signed them (issue 15).

A repository that stops refreshing ``timestamp`` (it expires in a day) is a
frozen repository: clients keep the old metadata until it expires, and a
freeze is the attack TUF's timestamp role exists to bound (TUF spec §1.5.2,
"freeze attack"; PEP 458 re-signs timestamp "possibly every minute"). The
service knows, for each (key, role), the last version it signed and its
``expires`` (the role state), so it can tell before clients do.

Every ``ops.freshness_interval_seconds`` the watch reads the role states and
sets ``tuf_signer_role_expiry_seconds{key, role}``: for ``timestamp``,
``snapshot`` and ``targets`` their own, for every other role of the key
(PEP 458's hashed bins) the soonest one, as role ``bins`` (one series per key,
never one per bin). When one of these comes within
``ops.expiry_margin_seconds`` of expiry, it logs a warning and records ONE
audit event (operation ``expiry-warning``), not one per tick: it warns again
only after the role was re-signed out of the margin and then fell back into
it. With workers, only worker 0 (or the single server) warns; all set the
gauge. A restarted process warns once more for a role still in the margin.

The same tick sets ``tuf_signer_role_last_signed_timestamp_seconds{key, role}``:
the time of the record of each series' last signed version, for bins the most
recent bin (the stalest would say nothing: a bin is re-signed only when its
targets change). A frozen repository shows as a timestamp whose last signing
grows old long before it expires. The role state names its record (its
``audit_seq``), whose time is read once per new record (the records since it
are few for a role re-signed often; older ones are cached).

The same tick refreshes the registry and log gauges (key versions by state,
audit tree size and checkpoint lag). At start, a first pass sets the gauges
only (no warning, no record), so they exist from the first scrape on. A role
state that is reset drops its series (with workers, which cannot drop one, it
reads NaN: ``_metrics.drop_role_expiry``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from tuf_signer.audit import AuditStore, Entry
from tuf_signer.errors import TufSignerError
from tuf_signer.model import AuditEvent, Outcome, RoleState
from tuf_signer.policy._coherence import is_empty_bin_role
from tuf_signer.server import _metrics
from tuf_signer.server._recording import loggable_cause
from tuf_signer.server._values import Clock, rfc3339, utc_now

log = logging.getLogger(__name__)

EXPIRY_OPERATION = "expiry-warning"
WATCH_IDENTITY = "tuf-signer"


@dataclass(frozen=True)
class Soonest:
    """The soonest-expiring signed role of one (key, role class) series.

    Attributes:
        key: the key name.
        series: ``timestamp``, ``snapshot``, ``targets`` or ``bins``.
        state: the role state that expires first in the series.
        left: seconds until it expires (negative once expired).
        count: roles in the series (1 but for ``bins``).
    """

    key: str
    series: str
    state: RoleState
    left: float
    count: int


def soonest(states: Sequence[RoleState], now: datetime) -> list[Soonest]:
    """One ``Soonest`` per (key, series) of ``states``, sorted by key and series.

    A role state whose ``expires`` does not parse (none should: the policy
    checked it before signing) is left out, and so are empty-bin marks
    (``PREFIX-*empty-SHA256``): each empty payload gets a mark of its own that
    is never signed again, so one would read as a bin left to expire forever.
    """
    best: dict[tuple[str, str], tuple[float, RoleState]] = {}
    counts: Counter[tuple[str, str]] = Counter()
    for state in states:
        if is_empty_bin_role(state.role):
            continue
        try:
            expires = datetime.fromisoformat(state.expires.replace("Z", "+00:00"))
        except ValueError:
            continue
        key = (state.key_name, _series_of(state))
        left = (expires - now).total_seconds()
        counts[key] += 1
        if key not in best or left < best[key][0]:
            best[key] = (left, state)
    return [
        Soonest(k, s, best[(k, s)][1], best[(k, s)][0], counts[(k, s)]) for k, s in sorted(best)
    ]


def _series_of(state: RoleState) -> str:
    return state.role if state.role in _metrics.NAMED_ROLES else _metrics.BINS


def _signed(state: RoleState) -> bool:
    """Whether ``state`` marks a signed version (not an empty bin, nor a reset mark)."""
    if is_empty_bin_role(state.role) or not state.signature:
        return False
    try:
        datetime.fromisoformat(state.expires.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def latest(states: Sequence[RoleState]) -> dict[tuple[str, str], RoleState]:
    """The last signed role state of each (key, series): the highest ``audit_seq``
    (records are numbered in the order they were written), for bins the most
    recent bin. The same states as ``soonest`` (empty bins and reset marks left out)."""
    out: dict[tuple[str, str], RoleState] = {}
    for state in states:
        if not _signed(state):
            continue
        key = (state.key_name, _series_of(state))
        if key not in out or state.audit_seq > out[key].audit_seq:
            out[key] = state
    return out


def expiry_event(item: Soonest, margin: float, at: str) -> AuditEvent:
    """The audit record of one warning: which role, which version, when it expires."""
    state = item.state
    detail: dict[str, object] = {"seconds_left": int(item.left), "margin_seconds": int(margin)}
    if item.series == _metrics.BINS:
        detail["roles"] = item.count
    return AuditEvent(
        time=at,
        identity=WATCH_IDENTITY,
        operation=EXPIRY_OPERATION,
        outcome=Outcome.GRANTED,
        status="OK",
        reason=(
            f"role {state.role} of key {state.key_name} (version {state.version}) expires at "
            f"{state.expires}, in {int(item.left)} s, within ops.expiry_margin_seconds "
            f"({int(margin)}), and has not been re-signed"
        ),
        key_name=state.key_name,
        keyid=state.keyid,
        key_version=state.key_version,
        role=state.role,
        metadata_version=state.version,
        expires=state.expires,
        detail=detail,
    )


class FreshnessWatch:
    """Sets the expiry gauges and warns once per role that nears expiry unrefreshed.

    Args:
        store: the audit store (role states, key registry, tree size).
        record: commits audit entries (the service's group-commit writer).
        margin: ``ops.expiry_margin_seconds``.
        interval: ``ops.freshness_interval_seconds``.
        warn: whether this process warns and records (worker 0 or a single server).
        tree: the transparency log's (tree size, witnessed size, halted), when
            it runs; else the tree size is read from the store.
        clock: returns the current UTC time.
    """

    def __init__(
        self,
        store: AuditStore,
        record: Callable[[Sequence[Entry]], Awaitable[object]],
        margin: float,
        interval: float,
        warn: bool = True,
        tree: Callable[[], tuple[int, int, bool]] | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self._store = store
        self._record = record
        self._margin = margin
        self._interval = interval
        self._warn = warn
        self._tree = tree
        self._clock = clock
        # (key, series) warned about and not yet back out of the margin.
        self._warned: set[tuple[str, str]] = set()
        self._series: set[tuple[str, str]] = set()
        # audit_seq -> Unix time of that record, for the series' last signed states.
        self._signed_at: dict[int, float] = {}

    async def run(self) -> None:
        """Set the gauges at once (``tick(warn=False)``), then tick every ``interval``
        until cancelled; a failing tick is logged, not fatal."""
        warn = False  # the first warning comes one interval after start, as before
        while True:
            try:
                await self.tick(warn=warn)
            except TufSignerError as e:
                log.warning("freshness watch: %s", e.reason)
            except Exception as e:  # a bug must not stop the watch for good
                log.error("freshness watch failed: %s", loggable_cause(e))
            warn = True
            await asyncio.sleep(self._interval)

    async def tick(self, warn: bool = True) -> list[AuditEvent]:
        """Read the role states, set the gauges, warn about roles newly in the margin.

        Args:
            warn: False for a gauge-only pass: no warning, no record, nothing
                remembered as warned.

        Returns:
            The warnings recorded by this tick.

        Raises:
            TufSignerError: the store could not be read, or the warning not recorded
                (it is tried again next tick).
        """
        states, versions, size, signed_at = await asyncio.to_thread(self._read)
        now = self._clock()
        _metrics.set_expiry_margin(self._margin)
        for state_name in ("pending", "active", "retired"):
            _metrics.KEY_VERSIONS.labels(state_name).set(versions.get(state_name, 0))
        if self._tree is not None:
            _metrics.set_log_state(*self._tree())
        else:
            _metrics.set_log_state(size, None, False)
        items = soonest(states, now)
        seen = {(i.key, i.series) for i in items}
        for gone in self._series - seen:  # a reset role state: drop its series
            _metrics.drop_role_expiry(*gone)
        self._series = seen
        fresh: list[Soonest] = []
        for (key, role), when in signed_at.items():
            _metrics.ROLE_LAST_SIGNED.labels(key, role).set(when)
        for item in items:
            _metrics.ROLE_EXPIRY.labels(item.key, item.series).set(item.left)
            if not warn:
                continue
            series = (item.key, item.series)
            if item.left >= self._margin:
                self._warned.discard(series)
            elif series not in self._warned:
                fresh.append(item)
        if not self._warn or not fresh:
            return []
        at = rfc3339(now)
        events = [expiry_event(item, self._margin, at) for item in fresh]
        await self._record([Entry(e) for e in events])
        for item, event in zip(fresh, events, strict=True):
            self._warned.add((item.key, item.series))
            log.warning(
                "freshness: %s",
                event.reason,
                extra={"key": item.key, "role": event.role, "status": "EXPIRY_WARNING"},
            )
        return events

    def _read(
        self,
    ) -> tuple[list[RoleState], dict[str, int], int, dict[tuple[str, str], float]]:
        states = self._store.list_role_states()
        versions: Counter[str] = Counter()
        for key in self._store.list_keys():
            for version in self._store.list_versions(key.name):
                versions[str(version.state.value).lower()] += 1
        size = self._store.tree_size() if self._tree is None else 0
        return states, dict(versions), size, self._signed_times(latest(states))

    def _signed_times(self, last: dict[tuple[str, str], RoleState]) -> dict[tuple[str, str], float]:
        """The Unix time of each series' last signed record (a record that cannot
        be read, or is not that signature's, leaves its series out)."""
        known, self._signed_at = self._signed_at, {}
        out: dict[tuple[str, str], float] = {}
        for series, state in last.items():
            seq = state.audit_seq
            if seq not in known:
                records = self._store.records(seq)
                try:
                    record = next(iter(records), None)
                finally:
                    getattr(records, "close", lambda: None)()
                if record is None or record.seq != seq or record.event.operation != "sign":
                    continue
                try:
                    at = datetime.fromisoformat(record.event.time.replace("Z", "+00:00"))
                except ValueError:
                    continue
                known[seq] = at.timestamp()
            self._signed_at[seq] = known[seq]
            out[series] = known[seq]
        return out
