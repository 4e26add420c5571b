"""Prometheus metrics: what a security team watches (issue 15), with bounded labels.

Every metric is a module-level ``prometheus_client`` object. With
``server.workers > 1`` the supervisor gives each worker the same
``PROMETHEUS_MULTIPROC_DIR`` (``multiproc_env``) before the worker imports
``prometheus_client``, so every worker writes its values to files there and
any worker's ``/metrics`` (``exposition``) sums them: the counters of all
workers, alive or restarted, and the gauges of the live ones (``livemin``,
``livemax``: ``mark_dead`` drops a dead worker's). A single server keeps its
values in memory.

Label values come only from the config or the store, never straight from a
client (README "Metrics and probes" lists each label's values):

- ``key``: a key in the registry, else ``other``;
- ``role_class``: ``timestamp``, ``snapshot``, ``targets``, ``bins`` (any
  other role: PEP 458's hashed bins and other delegations, never one series
  per bin) or ``unknown`` (no role was named);
- ``status``: a gRPC status code name;
- ``identity``: an identity with an access rule, else ``other``;
- ``backend``: a configured backend; ``state``: a key-version state.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
OTHER = "other"
NAMED_ROLES = ("timestamp", "snapshot", "targets")
# The role class of every role that is not named above: its series aggregates them.
BINS = "bins"
STAGES = ("policy", "hsm", "audit_commit")

# From 0.5 ms (a cached policy check) to 30 s (the default call deadline).
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

SIGN_REQUESTS = Counter(
    "tuf_signer_sign_requests",
    "Sign and SignBatch items answered, by method, key, role class and gRPC status.",
    ["method", "key", "role_class", "status"],
)
STAGE_SECONDS = Histogram(
    "tuf_signer_sign_stage_seconds",
    "Time spent in one stage of signing: policy (parse and checks), hsm (one backend "
    "call, a whole chunk of a SignBatch) and audit_commit (one group commit).",
    ["stage"],
    buckets=_BUCKETS,
)
LIMIT_REFUSALS = Counter(
    "tuf_signer_limit_refusals",
    "Calls refused RESOURCE_EXHAUSTED by a per-identity or per-process limit, by identity.",
    ["identity"],
)
UNADMITTED_CALLS = Counter(
    "tuf_signer_unadmitted_calls",
    "Calls refused before admission: no identity (UNAUTHENTICATED: no, revoked or "
    "unnamed client certificate) or no access rule (PERMISSION_DENIED).",
    ["status"],
)
BACKEND_UP = Gauge(
    "tuf_signer_backend_up",
    "1 if the backend's last health probe passed.",
    ["backend"],
    multiprocess_mode="livemin",
)
KEY_VERSIONS = Gauge(
    "tuf_signer_key_versions",
    "Key versions in the registry, by state.",
    ["state"],
    multiprocess_mode="livemax",
)
ROLE_EXPIRY = Gauge(
    "tuf_signer_role_expiry_seconds",
    "Seconds until the last signed version of a role expires (negative: expired); "
    "role bins is the soonest of the key's other roles.",
    ["key", "role"],
    multiprocess_mode="livemin",
)
ROLE_LAST_SIGNED = Gauge(
    "tuf_signer_role_last_signed_timestamp_seconds",
    "Unix time of the record of the last signed version of a role; role bins is the "
    "most recent of the key's other roles.",
    ["key", "role"],
    multiprocess_mode="livemax",
)


# Gauges without labels hold a value from the moment they exist; with workers,
# every process that imports this module (a payload-checker process too) would
# then count as a live worker answering 0. So these exist once first set.
@functools.cache
def _gauge(name: str, documentation: str, mode: str) -> Gauge:
    return Gauge(name, documentation, multiprocess_mode=mode)  # type: ignore[arg-type]


def count_tls_handshake() -> None:
    """``tuf_signer_tls_handshakes_started_total``: one more connection's handshake began.

    Created at the first handshake, not at import: with workers, a counter
    without labels would otherwise write a file for every process that
    imports this module (a payload-checker process too).
    """
    _counter(
        "tuf_signer_tls_handshakes_started",
        "Connections to the gRPC port whose TLS handshake began (gRPC asks for the "
        "server's credentials once per connection): failed and completed handshakes alike.",
    ).inc()


@functools.cache
def _counter(name: str, documentation: str) -> Counter:
    return Counter(name, documentation)


def set_serving(serving: bool) -> None:
    """``tuf_signer_serving``: 1 while health is SERVING and the server is not draining."""
    _gauge(
        "tuf_signer_serving",
        "1 while health is SERVING (backends, store and transparency log pass, not "
        "draining); with workers, the lowest of the live workers.",
        "livemin",
    ).set(1 if serving else 0)


def set_store_up(up: bool) -> None:
    """``tuf_signer_store_up``: whether the store's last health probe passed."""
    _gauge(
        "tuf_signer_store_up",
        "1 if the audit store's last health probe (a write on the Sign path) passed.",
        "livemin",
    ).set(1 if up else 0)


def set_log_state(tree: int, witnessed: int | None, halted: bool) -> None:
    """The audit log's size; with a transparency log, its checkpoint lag and halt too."""
    _gauge(
        "tuf_signer_audit_tree_size",
        "Records in the audit log (the Merkle tree's size).",
        "livemax",
    ).set(tree)
    if witnessed is None:
        return
    _gauge(
        "tuf_signer_audit_witnessed_size",
        "Size of the newest checkpoint the witness quorum cosigned.",
        "livemax",
    ).set(witnessed)
    _gauge(
        "tuf_signer_audit_unwitnessed_records",
        "Records newer than the newest witnessed checkpoint (checkpoint lag).",
        "livemax",
    ).set(max(0, tree - witnessed))
    _gauge(
        "tuf_signer_audit_halted",
        "1 if the transparency log halted signing (store behind or forked from a witness).",
        "livemax",
    ).set(1 if halted else 0)


def set_expiry_margin(seconds: float) -> None:
    """``tuf_signer_expiry_margin_seconds``: the freshness watch's margin."""
    _gauge(
        "tuf_signer_expiry_margin_seconds",
        "ops.expiry_margin_seconds: a role with less time left is warned about.",
        "livemax",
    ).set(seconds)


def drop_role_expiry(key: str, role: str) -> None:
    """Drop the ``tuf_signer_role_expiry_seconds`` and
    ``tuf_signer_role_last_signed_timestamp_seconds`` series of a role whose
    state was reset.

    With workers the values live in files that cannot drop a series
    (``remove`` does nothing there), so the series reads NaN instead: every
    comparison with NaN is false, so no alert such as ``< 3600`` fires on it.
    """
    for gauge in (ROLE_EXPIRY, ROLE_LAST_SIGNED):
        if multiproc_dir() is None:
            with contextlib.suppress(KeyError):
                gauge.remove(key, role)
        else:
            gauge.labels(key, role).set(math.nan)


def role_class(role: str) -> str:
    """The ``role_class`` label of ``role``: its own name, ``bins`` or ``unknown``."""
    if not role:
        return "unknown"
    return role if role in NAMED_ROLES else BINS


def count_sign(method: str, key: str, role_class: str, status: str, n: int = 1) -> None:
    """Count ``n`` answered Sign or SignBatch items with the same labels (``key``
    already bounded: a registry key or ``other``; ``role_class`` as ``role_class`` gives it)."""
    _sign_requests(method, key, role_class, status).inc(n)


# ``labels()`` takes a lock and checks the values on every call; the children
# it returns are the same objects each time, so each is looked up once. The
# labels are bounded (see the module docstring), so these caches are too.
@functools.cache
def _sign_requests(method: str, key: str, role_class: str, status: str) -> Counter:
    return SIGN_REQUESTS.labels(method, key, role_class, status)


@functools.cache
def _stage(stage: str) -> Histogram:
    return STAGE_SECONDS.labels(stage)


def timed(stage: str) -> _Timer:
    """Observe the time the block takes in ``tuf_signer_sign_stage_seconds{stage}``."""
    return _Timer(_stage(stage))


class _Timer:
    """``timed``'s context manager: two ``perf_counter`` calls and one observation.

    Not a ``@contextmanager``: it runs for every Sign and SignBatch item, and a
    generator costs more than the timing it wraps.
    """

    __slots__ = ("_child", "_start")

    def __init__(self, child: Histogram) -> None:
        self._child = child
        self._start = 0.0

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self._child.observe(time.perf_counter() - self._start)


def multiproc_dir() -> Path | None:
    """The directory the workers share their values in, or None (one process)."""
    path = os.environ.get(MULTIPROC_ENV)
    return Path(path) if path else None


def registry() -> CollectorRegistry:
    """What ``/metrics`` shows: every worker's values, or this process's."""
    path = multiproc_dir()
    if path is None:
        return REGISTRY
    merged = CollectorRegistry()
    multiprocess.MultiProcessCollector(merged, str(path))  # type: ignore[no-untyped-call]
    return merged


def exposition() -> tuple[bytes, str]:
    """The Prometheus text exposition of ``registry()`` and its content type."""
    return generate_latest(registry()), CONTENT_TYPE_LATEST


def all_serving() -> bool:
    """Whether every live worker (or this process) answers SERVING."""
    for family in registry().collect():
        if family.name == "tuf_signer_serving":
            values = [s.value for s in family.samples]
            return bool(values) and min(values) >= 1
    return False


def mark_dead(pid: int, path: Path) -> None:
    """Drop a dead worker's live gauges (its counters stay in the sums)."""
    multiprocess.mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]
