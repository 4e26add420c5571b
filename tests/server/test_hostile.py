"""Hostile Sign requests through the real RPC surface, over mutual TLS (P2, P3, P4, P7).

Every case is an attack or a malformed request that a compromised or buggy
repository backend could send. Each must get its exact status and a short,
printable reason, return no signature, leave exactly one REFUSED record that
names the caller, and move no high-water mark.

The checks run in this order (server/_preparing.py, policy/_checks.py), which
decides the status when a request is wrong in several ways:

    identity may sign -> key allowed for identity -> key exists -> size ->
    canonical parse -> fields -> role name -> _type fits role -> key's role
    rules (root never) -> spec_version -> expires -> identity's role patterns ->
    ACTIVE version -> keyid pin -> high-water mark

One server serves the whole table (a server per case would triple the run
time); the cases do not depend on each other, and each arranges what it needs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from tuf_signer.audit import SqliteAuditStore
from tuf_signer.config import load_config
from tuf_signer.model import BinsDelegation, Outcome, RoleState, recordable
from tuf_signer.policy import bin_for_path, pep458_online_rules
from tuf_signer.server import SignerServer
from tuf_signer.v1 import signer_pb2 as pb
from tuf_signer.v1 import signer_pb2_grpc as pb_grpc

from . import _hostile_payloads as hp
from .conftest import (
    ADMIN,
    BACKEND,
    NOBODY,
    TEST_MAX_PAYLOAD,
    TLS_POLICY,
    Clock,
    Payloads,
    TlsHarness,
    make_pki,
    write_tls_config,
)

# Every test here talks to the one module-scoped server, on its event loop.
on_module_loop = pytest.mark.asyncio(loop_scope="module")

IDENTITIES = {"backend": BACKEND, "admin": ADMIN, "nobody": NOBODY}
# Targets roles of key "k", which declares no bins: literal names only.
LITERAL_BINS = ("bins-0", "bins-r", "bins-e", "bins-max")
BINS12 = BinsDelegation("bins", 12)
MAX_REASON = 512  # characters: a reason is a short message (errors.py), never an echo


# --- the server -------------------------------------------------------------------------


@dataclass
class Signer:
    """One mutual-TLS server for the module, with a stub per client identity."""

    h: TlsHarness
    stubs: dict[str, pb_grpc.SignerStub]
    admin: pb_grpc.KeyAdminStub

    @property
    def payloads(self) -> Payloads:
        return self.h.payloads

    def states(self) -> list[RoleState]:
        store = SqliteAuditStore(self.h.server.config.audit.path)
        try:
            return sorted(store.list_role_states(), key=lambda s: (s.key_name, s.role))
        finally:
            store.close()

    async def keyids(self, key: str = "k") -> dict[int, pb.KeyVersionInfo]:
        (info,) = [
            k for k in (await self.admin.ListKeys(pb.ListKeysRequest())).keys if k.name == key
        ]
        return {v.version: v for v in info.versions}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def signer(tmp_path_factory: pytest.TempPathFactory, softhsm: Any) -> AsyncIterator[Signer]:
    directory: Path = tmp_path_factory.mktemp("hostile") / "signer"
    pki = make_pki(directory)
    # No SignBatch here: gRPC's message limit is then max_payload_bytes + 64 KiB.
    path = write_tls_config(
        directory,
        softhsm,
        server=f"max_batch_bytes = {TEST_MAX_PAYLOAD}\n",
        policy=TLS_POLICY.replace('keys = ["k"]', 'keys = ["k", "b12"]'),
    )
    clock = Clock()
    server = SignerServer(load_config(path), clock=clock)
    await server.start()
    h = TlsHarness(path, pki, server, clock, Payloads(clock))
    try:
        admin = h.admin("admin")
        # Key "k" declares no hash bins: its targets roles are literal names.
        await admin.CreateKey(
            pb.CreateKeyRequest(
                name="k",
                roles=[
                    pb.RoleRule(pattern=p, max_validity_seconds=86400)
                    for p in ("timestamp", "snapshot", "targets", *LITERAL_BINS)
                ],
                activate=True,
            )
        )
        # Key "b12" declares bins:12 ("bins-000".."bins-fff"), exactly as the CLI's
        # --bins bins:12 does, with the one glob that declaration allows.
        await admin.CreateKey(
            pb.CreateKeyRequest(
                name="b12",
                roles=[
                    pb.RoleRule(pattern=r.pattern, max_validity_seconds=r.max_validity)
                    for r in pep458_online_rules(BINS12)
                ],
                activate=True,
                bins=pb.BinsDelegation(prefix=BINS12.prefix, bit_length=BINS12.bit_length),
            )
        )
        s = Signer(h, {name: h.signer(name) for name in IDENTITIES}, admin)
        # High-water marks at version 1; hostile payloads carry version 2, so
        # one that slipped through would be signed and move a mark.
        backend = s.stubs["backend"]
        for role, payload in [
            ("", h.payloads.timestamp(1)),
            ("", h.payloads.snapshot(1)),
            ("bins-0", h.payloads.targets(1)),
        ]:
            await backend.Sign(pb.SignRequest(key="k", role=role, payload=payload))
        yield s
    finally:
        for ch in h.channels:
            await ch.close()
        await server.stop(grace=5)


# --- the table ----------------------------------------------------------------------------


Arrange = Callable[[Signer], Awaitable[str]]


@dataclass(frozen=True)
class Hostile:
    """One hostile Sign request and the refusal it must get."""

    code: grpc.StatusCode
    match: str  # regex the reason must match
    payload: hp.Build = hp.TIMESTAMP
    role: str = ""
    key: str = "k"
    client: str = "backend"
    arrange: Arrange | None = None  # sets up state; returns the expected_keyid to send


async def _pin_other_key(s: Signer) -> str:
    r = await s.admin.CreateKey(
        pb.CreateKeyRequest(
            name=f"other-{secrets.token_hex(4)}",
            roles=[pb.RoleRule(pattern="timestamp", max_validity_seconds=86400)],
            activate=True,
        )
    )
    return str(r.key.versions[0].keyid)


async def _pin_pending(s: Signer) -> str:
    r = await s.admin.RotateKey(pb.RotateKeyRequest(key="k"))
    assert r.version.state == pb.PENDING
    return str(r.version.keyid)


async def _pin_retired(s: Signer) -> str:
    active = next(v for v in (await s.keyids()).values() if v.state == pb.ACTIVE)
    new = await s.admin.RotateKey(pb.RotateKeyRequest(key="k"))
    await s.admin.ActivateKeyVersion(
        pb.ActivateKeyVersionRequest(key="k", version=new.version.version)
    )
    assert (await s.keyids())[active.version].state == pb.RETIRED
    return str(active.keyid)


def _pin_active(transform: Callable[[str], str]) -> Arrange:
    async def pin(s: Signer) -> str:
        active = next(v for v in (await s.keyids()).values() if v.state == pb.ACTIVE)
        return transform(active.keyid)

    return pin


def _signed(role: str, version: int, salt: str = "") -> Arrange:
    async def arrange(s: Signer) -> str:
        payload = s.payloads.targets(version, n_targets=2, salt=salt)
        await s.stubs["backend"].Sign(pb.SignRequest(key="k", role=role, payload=payload))
        return ""

    return arrange


def _pin(value: str) -> Arrange:
    async def pin(s: Signer) -> str:
        return value

    return pin


INVALID = grpc.StatusCode.INVALID_ARGUMENT
DENIED = grpc.StatusCode.PERMISSION_DENIED
FAILED = grpc.StatusCode.FAILED_PRECONDITION
TS = '"_type":"timestamp"'
TUF_FORM = "not in TUF's form"
EXPIRES = "%Y-%m-%dT%H:%M:%S"
NOT_ACTIVE = "is not the ACTIVE version"

HOSTILE: dict[str, Hostile] = {
    # --- Unicode tricks -----------------------------------------------------------------
    "role-nfd-combining-accent": Hostile(
        INVALID, "not in Unicode normal form NFC", hp.targets(), role="bins-cafe\u0301"
    ),
    "role-nfc-singleton-angstrom-sign": Hostile(
        INVALID, "not in Unicode normal form NFC", hp.targets(), role="bins-\u212b"
    ),
    "role-bom-prefix": Hostile(INVALID, r"U\+FEFF", hp.targets(), role="\ufeffbins-0"),
    "role-bidi-override": Hostile(INVALID, r"U\+202E", hp.targets(), role="bins-\u202e0"),
    "role-zero-width-space": Hostile(INVALID, r"U\+200B", role="time\u200bstamp"),
    "role-zero-width-joiner": Hostile(INVALID, r"U\+200D", hp.targets(), role="bins-0\u200d"),
    "payload-type-combining-mark": Hostile(
        INVALID, "not a TUF metadata type", hp.edit(hp.timestamp(), type_="timestamp\u0301")
    ),
    "payload-type-cyrillic-homoglyph": Hostile(
        INVALID, "not a TUF metadata type", hp.edit(hp.timestamp(), type_="tim\u0435stamp")
    ),
    "payload-expires-fullwidth-digits": Hostile(
        INVALID,
        TUF_FORM,
        hp.expires_as(lambda e: e.strftime(EXPIRES + "Z").translate({ord("2"): "\uff12"})),
    ),
    "payload-lone-surrogate-raw-bytes": Hostile(
        INVALID,
        "not valid UTF-8 at byte",
        hp.splice(hp.timestamp(), b'"snapshot.json"', b'"snapshot\xed\xa0\x80.json"'),
    ),
    "payload-lone-surrogate-json-escape": Hostile(
        INVALID,
        r"escape sequence '\\\\ud800'",
        hp.splice(hp.timestamp(), b'"snapshot.json"', b'"snapshot\\ud800.json"'),
    ),
    "payload-overlong-utf8-slash": Hostile(
        INVALID,
        "not valid UTF-8 at byte",
        hp.splice(hp.timestamp(), b'"snapshot.json"', b'"..\xc0\xafsnapshot.json"'),
    ),
    "payload-utf8-bom": Hostile(
        INVALID, "byte order mark", lambda p: b"\xef\xbb\xbf" + p.timestamp(hp.VERSION)
    ),
    "payload-utf16": Hostile(
        INVALID,
        "not valid UTF-8",
        lambda p: p.timestamp(hp.VERSION).decode().encode("utf-16"),
    ),
    # --- JSON hazards ----------------------------------------------------------------
    "nesting-bomb-100k-open-brackets": Hostile(
        INVALID, "nested deeper than 64 levels", hp.raw(b"[" * 100_000)
    ),
    "nesting-bomb-100k-balanced-in-field": Hostile(
        INVALID, "nested deeper than 64 levels", hp.nested(100_000)
    ),
    "nesting-65-objects": Hostile(
        INVALID, "nested deeper than 64 levels", hp.nested(64, b'{"a":', b"}")
    ),
    "version-10e30": Hostile(
        INVALID, r"version .* out of range", hp.edit(hp.timestamp(), version=10**30)
    ),
    "version-2e63": Hostile(INVALID, "out of range 1..2", hp.edit(hp.timestamp(), version=2**63)),
    "version-5000-digits": Hostile(
        INVALID, "integer literal too long", hp.version_literal(b"1" + b"0" * 5000)
    ),
    "version-zero": Hostile(
        INVALID, "version '0' is out of range", hp.edit(hp.timestamp(), version=0)
    ),
    "version-negative": Hostile(
        INVALID, "version '-2' is out of range", hp.edit(hp.timestamp(), version=-2)
    ),
    "version-negative-zero": Hostile(INVALID, "not canonical", hp.version_literal(b"-0")),
    "version-true": Hostile(
        INVALID,
        "'version' must be an integer, not a boolean",
        hp.edit(hp.timestamp(), version=True),
    ),
    "version-string": Hostile(
        INVALID, "'version' must be an integer, not a string", hp.edit(hp.timestamp(), version="2")
    ),
    "version-float": Hostile(INVALID, "float '2.0'", hp.version_literal(b"2.0")),
    "version-exponent": Hostile(INVALID, "float '2e0'", hp.version_literal(b"2e0")),
    "version-nan": Hostile(INVALID, "NaN or Infinity", hp.version_literal(b"NaN")),
    "version-infinity": Hostile(INVALID, "NaN or Infinity", hp.version_literal(b"Infinity")),
    "version-minus-infinity": Hostile(INVALID, "NaN or Infinity", hp.version_literal(b"-Infinity")),
    "float-nested-in-targets": Hostile(
        INVALID,
        "float",
        hp.splice(hp.targets(), b'"length":', b'"length":1.0e1,"x":'),
        role="bins-0",
    ),
    "expires-fractional-seconds": Hostile(
        INVALID, TUF_FORM, hp.expires_as(lambda e: e.strftime(EXPIRES + ".5Z"))
    ),
    "expires-utc-offset": Hostile(
        INVALID, TUF_FORM, hp.expires_as(lambda e: e.strftime(EXPIRES + "+00:00"))
    ),
    "expires-lowercase-z": Hostile(
        INVALID, TUF_FORM, hp.expires_as(lambda e: e.strftime(EXPIRES + "z"))
    ),
    "expires-no-zone": Hostile(INVALID, TUF_FORM, hp.expires_as(lambda e: e.strftime(EXPIRES))),
    "expires-date-only": Hostile(
        INVALID, TUF_FORM, hp.expires_as(lambda e: e.strftime("%Y-%m-%d"))
    ),
    "expires-space-separator": Hostile(
        INVALID, TUF_FORM, hp.expires_as(lambda e: e.strftime("%Y-%m-%d %H:%M:%SZ"))
    ),
    "expires-february-30": Hostile(
        INVALID, "not a valid date", hp.expires_as(lambda e: "2030-02-30T00:00:00Z")
    ),
    "expires-hour-24": Hostile(
        INVALID, "not a valid date", hp.expires_as(lambda e: e.strftime("%Y-%m-%dT24:00:00Z"))
    ),
    "expires-leap-second": Hostile(
        INVALID, "not a valid date", hp.expires_as(lambda e: e.strftime("%Y-%m-%dT%H:%M:60Z"))
    ),
    "expires-year-0000": Hostile(
        INVALID, "not a valid date", hp.expires_as(lambda e: "0000-01-01T00:00:00Z")
    ),
    "expires-year-99999": Hostile(
        INVALID, TUF_FORM, hp.expires_as(lambda e: "99999-01-01T00:00:00Z")
    ),
    "expires-year-9999": Hostile(
        FAILED,
        "beyond the maximum validity of 86400 s",
        hp.expires_as(lambda e: "9999-12-31T23:59:59Z"),
    ),
    "expires-unix-time": Hostile(
        INVALID,
        "'expires' must be a string, not an integer",
        hp.edit(hp.timestamp(), expires=1893456000),
    ),
    "duplicate-key-depth-1-identical": Hostile(
        INVALID, "duplicate object key 'version'", hp.append_field(hp.timestamp(), b',"version":2')
    ),
    "duplicate-key-depth-2": Hostile(
        INVALID,
        "duplicate object key 'snapshot.json'",
        hp.splice(
            hp.timestamp(),
            b'"meta":{"snapshot.json":{"version":1}}',
            b'"meta":{"snapshot.json":{"version":1},"snapshot.json":{"version":9}}',
        ),
    ),
    "duplicate-key-depth-3": Hostile(
        INVALID,
        "duplicate object key 'version'",
        hp.splice(hp.timestamp(), b'{"version":1}}', b'{"version":1,"version":1}}'),
    ),
    "duplicate-key-depth-4-in-hashes": Hostile(
        INVALID,
        "duplicate object key 'sha256'",
        hp.splice(hp.targets(), b'{"sha256":', b'{"sha256":"00","sha256":'),
        role="bins-0",
    ),
    "duplicate-key-hidden-by-escape": Hostile(
        INVALID,
        "duplicate object key 'version'",
        hp.append_field(hp.timestamp(), b',"versio\\u006e":1'),
    ),
    "not-canonical-indented": Hostile(
        INVALID,
        "whitespace at byte 1",
        lambda p: json.dumps(json.loads(p.timestamp(2)), indent=1).encode(),
    ),
    "not-canonical-space-after-colon": Hostile(
        INVALID, "whitespace at byte", hp.splice(hp.timestamp(), b'"version":', b'"version": ')
    ),
    "not-canonical-trailing-newline": Hostile(
        INVALID, "whitespace at byte", lambda p: p.timestamp(2) + b"\n"
    ),
    "not-canonical-unsorted-keys": Hostile(
        INVALID,
        "keys are not sorted",
        lambda p: json.dumps(
            dict(reversed(json.loads(p.timestamp(2)).items())), separators=(",", ":")
        ).encode(),
    ),
    "not-canonical-escaped-letter": Hostile(
        INVALID,
        r"escape sequence '\\\\u0074'",
        hp.splice(hp.timestamp(), TS.encode(), b'"_type":"\\u0074imestamp"'),
    ),
    "not-canonical-escaped-solidus": Hostile(
        INVALID,
        r"escape sequence '\\\\/'",
        hp.splice(hp.targets(), b"packages/", b"packages\\/"),
        role="bins-0",
    ),
    "not-canonical-escaped-newline": Hostile(
        INVALID, r"escape sequence '\\\\n'", hp.append_field(hp.timestamp(), b',"x-note":"a\\nb"')
    ),
    "not-canonical-escaped-non-ascii": Hostile(
        INVALID,
        r"escape sequence '\\\\u00e9'",
        hp.append_field(hp.timestamp(), b',"x-note":"caf\\u00e9"'),
    ),
    "size-one-byte-over-limit": Hostile(
        INVALID,
        f"is {TEST_MAX_PAYLOAD + 1} bytes, more than the limit of {TEST_MAX_PAYLOAD}",
        hp.sized_targets(TEST_MAX_PAYLOAD + 1),
        role="bins-0",
    ),
    "empty-payload": Hostile(INVALID, "not JSON", hp.raw(b"")),
    "top-level-array": Hostile(
        INVALID, "top level is an array", lambda p: b"[" + p.timestamp(2) + b"]"
    ),
    "top-level-string": Hostile(INVALID, "top level is a string", hp.raw(b'"timestamp"')),
    "trailing-garbage": Hostile(INVALID, "not JSON: Extra data", lambda p: p.timestamp(2) + b"x"),
    "two-objects": Hostile(INVALID, "not JSON: Extra data", lambda p: p.timestamp(2) * 2),
    "whole-envelope-not-signed": Hostile(
        INVALID,
        "no '_type' field",
        lambda p: hp.canonical({"signatures": [], "signed": json.loads(p.timestamp(2))}),
    ),
    # --- _type ----------------------------------------------------------------------
    "type-snapshot-sent-as-timestamp": Hostile(
        INVALID, "'snapshot' does not fit role 'timestamp'", hp.snapshot(), role="timestamp"
    ),
    "type-timestamp-sent-as-bin": Hostile(
        INVALID, "'timestamp' does not fit role 'bins-0' \\(expected 'targets'\\)", role="bins-0"
    ),
    "type-targets-sent-as-snapshot": Hostile(
        INVALID, "'targets' does not fit role 'snapshot'", hp.targets(), role="snapshot"
    ),
    "type-root-sent-as-bin": Hostile(
        INVALID, "'root' does not fit role 'bins-0'", hp.root(), role="bins-0"
    ),
    "type-missing": Hostile(INVALID, "no '_type' field", hp.edit(hp.timestamp(), type_=hp.DELETE)),
    "type-integer": Hostile(
        INVALID, "'_type' must be a string, not an integer", hp.edit(hp.timestamp(), type_=1)
    ),
    "type-null": Hostile(
        INVALID, "'_type' must be a string, not null", hp.edit(hp.timestamp(), type_=None)
    ),
    "type-array": Hostile(
        INVALID,
        "'_type' must be a string, not an array",
        hp.edit(hp.timestamp(), type_=["timestamp"]),
    ),
    "type-unknown-mirrors": Hostile(
        INVALID, "'mirrors' is not a TUF metadata type", hp.edit(hp.timestamp(), type_="mirrors")
    ),
    "type-capitalised": Hostile(
        INVALID,
        "'Timestamp' is not a TUF metadata type",
        hp.edit(hp.timestamp(), type_="Timestamp"),
    ),
    # --- other fields -------------------------------------------------------------------
    "spec-version-major-2": Hostile(
        FAILED, "unsupported spec_version major", hp.edit(hp.timestamp(), spec_version="2.0.0")
    ),
    "spec-version-major-01": Hostile(
        FAILED, "unsupported spec_version major", hp.edit(hp.timestamp(), spec_version="01.0.31")
    ),
    "spec-version-not-semver": Hostile(
        INVALID, "not MAJOR.MINOR", hp.edit(hp.timestamp(), spec_version="1.0.31-rc1")
    ),
    "spec-version-missing": Hostile(
        INVALID, "no 'spec_version' field", hp.edit(hp.timestamp(), spec_version=hp.DELETE)
    ),
    "expires-in-the-past": Hostile(
        FAILED,
        "is in the past",
        hp.edit(
            hp.timestamp(),
            expires=lambda p: (p.clock.now - timedelta(seconds=1)).strftime(EXPIRES + "Z"),
        ),
    ),
    # --- role-name injection ----------------------------------------------------------------
    "role-dotdot-slash": Hostile(INVALID, "contains '/'", hp.targets(), role="../timestamp"),
    "role-slash": Hostile(INVALID, "contains '/'", hp.targets(), role="bins-0/../x"),
    "role-dotdot": Hostile(INVALID, r"contains '\.\.'", hp.targets(), role="bins-.."),
    "role-empty-for-targets": Hostile(
        INVALID, "role name required for targets metadata", hp.targets()
    ),
    "role-10k-chars": Hostile(
        INVALID,
        "role name is 10000 characters long, more than 255",
        hp.targets(),
        role="bins-" + "0" * 9995,
    ),
    "role-256-chars": Hostile(
        INVALID, "is 256 characters long", hp.targets(), role="bins-" + "0" * 251
    ),
    "role-nul": Hostile(INVALID, r"U\+0000", hp.targets(), role="bins-0\x00.json"),
    "role-ansi-escape": Hostile(INVALID, r"U\+001B", hp.targets(), role="bins-\x1b[31m0"),
    "role-newline": Hostile(INVALID, r"U\+000A", hp.targets(), role="bins-0\nbins-1"),
    "role-leading-space": Hostile(INVALID, "leading or trailing whitespace", role=" timestamp"),
    "role-trailing-space": Hostile(
        INVALID, "leading or trailing whitespace", hp.targets(), role="bins-0 "
    ),
    "role-capitalised-timestamp-payload": Hostile(
        INVALID,
        "'timestamp' does not fit role 'Timestamp' \\(expected 'targets'\\)",
        role="Timestamp",
    ),
    "role-capitalised-targets-payload": Hostile(
        DENIED, "role 'Timestamp' is not allowed for key 'k'", hp.targets(), role="Timestamp"
    ),
    "role-bins-offline": Hostile(
        DENIED, "role 'bins' is not allowed for key 'k'", hp.targets(), role="bins"
    ),
    "role-root": Hostile(DENIED, "root is an offline role", hp.root(), role="root"),
    "role-targets-outside-identity-rule": Hostile(
        DENIED, f"identity '{BACKEND}' may not sign role 'targets'", hp.targets(), role="targets"
    ),
    "role-glob-star": Hostile(INVALID, "role name 'bins-\\*'", hp.targets(), role="bins-*"),
    "role-glob-question-mark": Hostile(
        INVALID, "role name 'bins-\\?'", hp.targets(), role="bins-?"
    ),
    "role-glob-brackets": Hostile(
        INVALID, "role name 'bins-\\[0-9\\]'", hp.targets(), role="bins-[0-9]"
    ),
    # --- high-water mark (own roles, so that the seeded marks stay put) ---------------------
    "rollback": Hostile(
        FAILED,
        "rollback: version 4 is not above version 5",
        hp.targets(4),
        role="bins-r",
        arrange=_signed("bins-r", 5),
    ),
    "equivocation": Hostile(
        FAILED,
        "equivocation: a different payload was already signed as version 5",
        hp.targets(5, salt="b"),
        role="bins-e",
        arrange=_signed("bins-e", 5, salt="a"),
    ),
    # --- keyid pins -------------------------------------------------------------------------
    "pin-another-keys-version": Hostile(FAILED, NOT_ACTIVE, arrange=_pin_other_key),
    "pin-pending-version": Hostile(FAILED, NOT_ACTIVE, arrange=_pin_pending),
    "pin-retired-version": Hostile(FAILED, NOT_ACTIVE, arrange=_pin_retired),
    "pin-uppercase-active-keyid": Hostile(FAILED, NOT_ACTIVE, arrange=_pin_active(str.upper)),
    "pin-prefix-of-active-keyid": Hostile(
        FAILED, NOT_ACTIVE, arrange=_pin_active(lambda k: k[:16])
    ),
    "pin-non-hex": Hostile(FAILED, "expected keyid zzzz", arrange=_pin("z" * 64)),
    "pin-10k-chars": Hostile(
        INVALID, "expected_keyid 'abab.*is not a keyid", arrange=_pin("ab" * 5000)
    ),
    # --- key names: validated first (issue 10, findings 3 and 4), then authorised before
    # they are looked up (an unknown key is just not allowed) -------------------------------
    "key-unknown": Hostile(DENIED, "may not sign with key 'nope'", key="nope"),
    "key-empty": Hostile(INVALID, "key name is required", key=""),
    "key-path-like": Hostile(INVALID, r"key name '\.\./k' may only use letters", key="../k"),
    "key-case": Hostile(DENIED, "may not sign with key 'K'", key="K"),
    "key-trailing-nul": Hostile(INVALID, r"key name 'k\\x00' may only use", key="k\x00"),
    "key-10k-chars": Hostile(INVALID, "key name is longer than 128", key="k" * 10_000),
    "key-100k-chars": Hostile(INVALID, "key name is longer than 128", key="k" * 100_000),
    # --- identities -------------------------------------------------------------------------
    # An identity without any rule is counted, not recorded per call: test_abuse.py (f4).
    "identity-admin-signs": Hostile(DENIED, f"identity '{ADMIN}' may not sign", client="admin"),
    # --- issue 10, finding 2: one reading of the payload (keys Go folds into one) ---------
    "f2-go-long-s-expires-and-version": Hostile(
        INVALID,
        r"keys 'expires' and 'expire\u017f' \(expire\\u017f\) in the object at the top "
        r"level: they differ only in case or Unicode form",
        hp.go_folded_timestamp(),
    ),
    "f2-go-kelvin-sign": Hostile(
        INVALID,
        r"keys 'x-key' and 'x-\u212aey' \(x-\\u212aey\)",
        hp.folded_keys(**{"x-key": 1, "x-\u212aey": 2}),
    ),
    "f2-fullwidth-nfkc": Hostile(
        INVALID,
        r"'version' and '\uff56ersion' \(\\uff56ersion\)",
        hp.folded_keys(**{"\uff56ersion": 1}),
    ),
    "f2-nested-depth": Hostile(
        INVALID,
        r"keys 'version' and 'ver\u017fion' .* in the object at '/meta/snapshot\.json'",
        hp.folded_in_meta(),
    ),
    "f2-target-paths-differ-only-in-case": Hostile(
        INVALID,
        r"'a/Foo\.whl' and 'a/foo\.whl' in the object at '/targets'",
        hp.targets_differing_in_case(),
        role="bins-0",
    ),
}

# BUG: the reason echoes the caller's key name unbounded (policy/_authz.py,
# authorize_key: f"... may not sign with key {key_name!r}"; likewise NotFoundError
# "unknown key ..." in server/_registry.py). A 10,000-character name gives a
# 10 KB reason, over gRPC's 8 KiB metadata soft limit (so the client may get
# RESOURCE_EXHAUSTED at random); from 16 KiB the client always gets
# RESOURCE_EXHAUSTED "received metadata size exceeds hard limit" while the
# record says PERMISSION_DENIED, with a 100 KB reason.
# BUG: a role name may hold the glob metacharacters * ? [ ] (policy/_checks.py,
# _check_name allows them), so the literal role "bins-*" matches the key's rule
# and the identity's pattern "bins-*", is signed, and gets its own high-water
# mark; "bins-?" and "bins-[0-9]" too.
BUGS: dict[str, str] = {}  # case id -> reason, for a known bug pinned with xfail(strict)


def _params() -> list[Any]:
    return [
        pytest.param(
            case,
            id=name,
            marks=[pytest.mark.xfail(strict=True, reason=BUGS[name])] if name in BUGS else [],
        )
        for name, case in HOSTILE.items()
    ]


@on_module_loop
@pytest.mark.parametrize("case", _params())
async def test_hostile_sign_is_refused_recorded_and_unsigned(signer: Signer, case: Hostile) -> None:
    keyid = await case.arrange(signer) if case.arrange else ""
    request = pb.SignRequest(
        key=case.key, role=case.role, payload=case.payload(signer.payloads), expected_keyid=keyid
    )
    states = signer.states()
    head = signer.h.records()[-1].seq

    with pytest.raises(grpc.aio.AioRpcError) as info:  # no signature: the call raised
        await signer.stubs[case.client].Sign(request)

    reason = info.value.details() or ""
    assert info.value.code() == case.code, reason
    assert re.search(case.match, reason), reason
    assert reason.isprintable(), "a reason carries no raw control or format characters"
    assert len(reason) <= MAX_REASON
    (record,) = [r for r in signer.h.records() if r.seq > head]  # exactly one new record
    event = record.event
    assert event.operation == "sign"
    assert event.outcome is Outcome.REFUSED
    assert event.status == case.code.name
    assert event.reason == reason
    assert event.identity == IDENTITIES[case.client]
    assert event.signature == ""
    assert event.key_name == recordable(case.key)  # escaped and bounded (findings 3, 4)
    assert event.payload_sha256 == hashlib.sha256(request.payload).hexdigest()
    assert signer.states() == states, "a refusal moves no high-water mark"


# --- issue 10, finding 1: bins are real bins, end to end ------------------------------------


def _bin12_payload(s: Signer, version: int, role: str, salt: str, outside: str = "") -> bytes:
    """Targets metadata whose paths python-tuf puts in ``role`` (bins:12), plus ``outside``."""

    def in_bin(name: str) -> Iterator[str]:
        candidates = (f"packages/{salt}/{i:05d}/dist-{i}.tar.gz" for i in itertools.count())
        return (p for p in candidates if bin_for_path(BINS12, p) == name)

    paths = list(itertools.islice(in_bin(role), 2))
    if outside:
        paths.append(next(in_bin(outside)))
    obj = json.loads(s.payloads.targets(version, n_targets=1, salt=salt))
    (info,) = obj["targets"].values()
    obj["targets"] = {path: info for path in paths}
    return hp.canonical(obj)


async def _refused_once(
    s: Signer, request: pb.SignRequest, code: grpc.StatusCode, match: str
) -> None:
    """The Sign is refused with ``code``, recorded exactly once, and signs nothing."""
    states = s.states()
    head = s.h.records()[-1].seq
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await s.stubs["backend"].Sign(request)
    reason = info.value.details() or ""
    assert info.value.code() == code, reason
    assert re.search(match, reason), reason
    (record,) = [r for r in s.h.records() if r.seq > head]
    assert record.event.outcome is Outcome.REFUSED
    assert (record.event.role, record.event.signature) == (request.role, "")
    assert record.event.reason == reason
    assert s.states() == states, "a refusal moves no high-water mark"


@on_module_loop
async def test_f1_fork_and_rollback_under_bin_aliases_are_refused(signer: Signer) -> None:
    """The review's reproduction: bins-0c1 v5 A granted; B as bins-0c1-fork and v1 as
    bins-0c1-old were granted too, and python-tuf accepts both as bins-0c1."""
    (created,) = [
        r
        for r in signer.h.records()
        if r.event.operation == "create-key" and r.event.key_name == "b12"
    ]
    assert created.event.detail["bins"] == "bins:12"  # the declaration is on the record
    listed = {k.name: k for k in (await signer.admin.ListKeys(pb.ListKeysRequest())).keys}
    assert (listed["b12"].bins.prefix, listed["b12"].bins.bit_length) == ("bins", 12)
    assert not listed["k"].HasField("bins")

    payload_a = _bin12_payload(signer, 5, "bins-0c1", salt="a")
    payload_b = _bin12_payload(signer, 5, "bins-0c1", salt="b")
    payload_old = _bin12_payload(signer, 1, "bins-0c1", salt="a")
    backend = signer.stubs["backend"]
    granted = await backend.Sign(pb.SignRequest(key="b12", role="bins-0c1", payload=payload_a))
    assert granted.signature.sig

    # f1-fork-alias, f1-rollback-alias: no name outside bins-000..bins-fff is signed.
    alias = r"role 'bins-0c1-(fork|old)' is not allowed for key 'b12'"
    await _refused_once(
        signer, pb.SignRequest(key="b12", role="bins-0c1-fork", payload=payload_b), DENIED, alias
    )
    await _refused_once(
        signer, pb.SignRequest(key="b12", role="bins-0c1-old", payload=payload_old), DENIED, alias
    )
    # Under its own name, B is an equivocation and the v1 a rollback, as before.
    await _refused_once(
        signer,
        pb.SignRequest(key="b12", role="bins-0c1", payload=payload_b),
        FAILED,
        "equivocation",
    )
    await _refused_once(
        signer, pb.SignRequest(key="b12", role="bins-0c1", payload=payload_old), FAILED, "rollback"
    )
    # f1-bin-replayed-under-another-bin, f1-path-outside-bin: A's bytes as bins-0c2,
    # and a bin holding one path of another bin.
    await _refused_once(
        signer,
        pb.SignRequest(key="b12", role="bins-0c2", payload=payload_a),
        INVALID,
        r"belongs in bin 'bins-0c1', not 'bins-0c2'",
    )
    await _refused_once(
        signer,
        pb.SignRequest(
            key="b12",
            role="bins-0c3",
            payload=_bin12_payload(signer, 5, "bins-0c3", salt="c", outside="bins-fff"),
        ),
        INVALID,
        r"belongs in bin 'bins-fff', not 'bins-0c3'",
    )
    # Only A was ever signed for bins-0c1.
    (state,) = [st for st in signer.states() if st.key_name == "b12"]
    assert (state.role, state.version) == ("bins-0c1", 5)
    assert state.payload_sha256 == hashlib.sha256(payload_a).hexdigest()


# --- what the table cannot send: invalid UTF-8 in a proto3 string field ----------------------
#
# proto3 ``string`` fields must hold valid UTF-8. Python's protobuf refuses to
# build such a message, so no client written with the stubs can send one; a
# hand-written client can, and the server's protobuf (upb) then fails to decode
# the request before any servicer code runs.

_STRING_FIELDS = {"key": 1, "role": 2, "expected_keyid": 4}
_BAD_UTF8 = {
    "lone-surrogate": b"\xed\xa0\x80",
    "overlong-slash": b"\xc0\xaf",
    "truncated": b"bins-\xe2\x82",
    "byte-ff": b"bins-\xff",
}
_WIRE_CASES = [
    pytest.param(field, data, id=f"{field}-{name}")
    for field in ("role", "key", "expected_keyid")
    for name, data in _BAD_UTF8.items()
]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("role", "bins-\ud800"),
        ("role", b"bins-\xed\xa0\x80"),
        ("key", b"\xc0\xaf"),
        ("expected_keyid", "\udfff"),
    ],
    ids=["role-surrogate-str", "role-surrogate-bytes", "key-overlong-bytes", "keyid-surrogate"],
)
def test_client_cannot_build_a_string_field_of_invalid_utf8(field: str, value: object) -> None:
    with pytest.raises(ValueError, match="utf-8"):
        pb.SignRequest(**{field: value})  # type: ignore[arg-type]


def _with_raw_field(payload: bytes, field: str, data: bytes) -> bytes:
    """A serialised SignRequest whose string ``field`` holds ``data`` (last value wins)."""
    base = pb.SignRequest(key="k", role="bins-0", payload=payload).SerializeToString()
    assert len(data) < 128  # one-byte length
    return base + bytes([_STRING_FIELDS[field] << 3 | 2, len(data)]) + data


async def _send_raw(s: Signer, message: bytes) -> grpc.aio.AioRpcError:
    call = s.h.channel("backend").unary_unary(
        "/tuf_signer.v1.Signer/Sign", response_deserializer=pb.SignResponse.FromString
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(message)
    return info.value


@on_module_loop
@pytest.mark.parametrize(("field", "data"), _WIRE_CASES)
async def test_invalid_utf8_on_the_wire_is_never_signed(
    signer: Signer, field: str, data: bytes
) -> None:
    """A lenient decoder (say, U+FFFD for bad bytes) would sign role 'bins-\\ufffd': never."""
    states = signer.states()
    head = signer.h.records()[-1].seq
    error = await _send_raw(signer, _with_raw_field(signer.payloads.targets(9), field, data))
    assert error.code() != grpc.StatusCode.OK
    assert not [r for r in signer.h.records() if r.seq > head and r.event.signature]
    assert signer.states() == states


# Protobuf decoding fails before any servicer runs; the error interceptor turns
# it into INVALID_ARGUMENT and records it (it used to leak as UNKNOWN, unrecorded).
@on_module_loop
@pytest.mark.parametrize(
    ("field", "data"),
    [("role", b"\xed\xa0\x80"), ("key", b"\xc0\xaf"), ("expected_keyid", b"\xff")],
    ids=["role-lone-surrogate", "key-overlong", "keyid-byte-ff"],
)
async def test_invalid_utf8_on_the_wire_is_refused_and_recorded(
    signer: Signer, field: str, data: bytes
) -> None:
    head = signer.h.records()[-1].seq
    error = await _send_raw(signer, _with_raw_field(signer.payloads.targets(9), field, data))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "UTF-8" in (error.details() or "")
    assert "Error" not in (error.details() or ""), "no internal exception in the reason"
    (record,) = [r for r in signer.h.records() if r.seq > head]
    assert record.event.outcome is Outcome.REFUSED
    assert record.event.status == "INVALID_ARGUMENT"
    assert record.event.identity == BACKEND


# --- the size limit, both sides of it ------------------------------------------------------------


@on_module_loop
async def test_payload_of_exactly_the_limit_is_signed(signer: Signer) -> None:
    """The other side of ``size-one-byte-over-limit``: the limit itself is allowed."""
    payload = hp.sized_targets(TEST_MAX_PAYLOAD)(signer.payloads)
    r = await signer.stubs["backend"].Sign(
        pb.SignRequest(key="k", role="bins-max", payload=payload)
    )
    assert (r.role, r.metadata_version) == ("bins-max", hp.VERSION)


@on_module_loop
async def test_payload_beyond_the_transport_limit_is_cut_off_by_grpc(signer: Signer) -> None:
    """gRPC refuses a message over max_payload_bytes + 64 KiB before the service sees it.

    So the refusal is RESOURCE_EXHAUSTED from gRPC, and it is not recorded: a
    request whose bytes never arrived reaches no key (P4). Nothing is signed.
    """
    payload = hp.sized_targets(TEST_MAX_PAYLOAD + 64 * 1024 + 1)(signer.payloads)
    states = signer.states()
    head = signer.h.records()[-1].seq
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await signer.stubs["backend"].Sign(pb.SignRequest(key="k", role="bins-0", payload=payload))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in (info.value.details() or "")
    assert signer.h.records()[-1].seq == head
    assert signer.states() == states
