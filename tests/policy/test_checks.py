"""The P3 policy checks, one table per check, then check_sign_request end to end."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from tuf.api.metadata import Metadata, Snapshot, Timestamp

from tuf_signer.errors import (
    PayloadError,
    PermissionError_,
    PolicyError,
    RequestError,
    TufSignerError,
)
from tuf_signer.model import BinsDelegation, RoleRule
from tuf_signer.policy import (
    PEP458_BINS,
    PEP458_ONLINE_RULES,
    TUF_EXPIRES_FORMAT,
    SignedInfo,
    check_expiry,
    check_role_allowed,
    check_sign_request,
    check_spec_version,
    check_type_fits_role,
    inspect_signed,
    parse_canonical,
    pep458_online_rules,
    resolve_role,
    validate_rules,
)

from .conftest import NOW, BinFactory, PayloadFactory

DAY = 86400
# A key created before bins declarations: its stored glob rules still work for
# check_role_allowed, and for every role that is not a bin.
RULES = (
    RoleRule("timestamp", DAY),
    RoleRule("snapshot", 2 * DAY),
    RoleRule("bins-*", 3 * DAY),
    RoleRule("delegated-[ab]", DAY),
)
MAX_PAYLOAD = 4 * 1024 * 1024
# 16 bins ("bins-0".."bins-f"): python-tuf can fill one with many targets quickly.
BINS4 = BinsDelegation("bins", 4)


def refused(
    excinfo: pytest.ExceptionInfo[TufSignerError], cls: type[TufSignerError], code: str
) -> None:
    """The exception is exactly ``cls`` (not a subclass) and carries ``code``."""
    assert excinfo.type is cls
    assert excinfo.value.code == code
    assert excinfo.value.reason == str(excinfo.value)


# --- inspect_signed ------------------------------------------------------------------

DELETE = object()

INSPECT_REFUSALS = [
    pytest.param({"type_": DELETE}, r"no '_type' field", id="type-missing"),
    pytest.param({"type_": 1}, r"'_type' must be a string, not an integer", id="type-int"),
    pytest.param({"type_": "mirrors"}, r"_type 'mirrors' is not a TUF metadata type", id="type-x"),
    pytest.param({"type_": "Timestamp"}, r"not a TUF metadata type", id="type-capitalised"),
    pytest.param({"version": DELETE}, r"no 'version' field", id="version-missing"),
    pytest.param({"version": "7"}, r"'version' must be an integer, not a string", id="version-str"),
    pytest.param({"version": True}, r"'version' must be an integer, not a boolean", id="v-true"),
    pytest.param({"version": None}, r"'version' must be an integer, not null", id="version-null"),
    pytest.param({"version": 0}, r"version '0' is out of range 1\.\.2\*\*63-1", id="version-0"),
    pytest.param({"version": -1}, r"version '-1' is out of range", id="version-negative"),
    pytest.param({"version": 2**63}, r"version '9223372036854775808' is out", id="version-2^63"),
    pytest.param({"version": 10**400}, r"version '1000000.*\.\.\. is out of range", id="v-huge"),
    pytest.param({"expires": DELETE}, r"no 'expires' field", id="expires-missing"),
    pytest.param({"expires": 1893456000}, r"'expires' must be a string", id="expires-int"),
    *(
        pytest.param(
            {"expires": value},
            rf"expires {re.escape(repr(value))} is not in TUF's form YYYY-MM-DDTHH:MM:SSZ \(UTC\)",
            id=f"expires-{name}",
        )
        for name, value in [
            ("fraction", "2030-01-01T00:00:00.5Z"),
            ("offset", "2030-01-01T00:00:00+00:00"),
            ("date-only", "2030-01-01"),
            ("lowercase-z", "2030-01-01T00:00:00z"),
            ("lowercase-t", "2030-01-01t00:00:00Z"),
            ("no-zone", "2030-01-01T00:00:00"),
            ("space", "2030-01-01 00:00:00Z"),
            ("short-fields", "2030-1-1T0:0:0Z"),
            ("trailing-newline", "2030-01-01T00:00:00Z\n"),
            ("arabic-digits", "\u0662030-01-01T00:00:00Z"),
            ("fullwidth-digits", "\uff12\uff10\uff13\uff10-01-01T00:00:00Z"),
            ("year-5-digits", "12030-01-01T00:00:00Z"),
        ]
    ),
    pytest.param(
        {"expires": "2030-02-30T00:00:00Z"},
        r"expires '2030-02-30T00:00:00Z' is not a valid date and time: day is out of range",
        id="expires-feb-30",
    ),
    pytest.param({"expires": "2030-01-01T24:00:00Z"}, r"not a valid date", id="expires-hour-24"),
    pytest.param({"expires": "2030-12-31T23:59:60Z"}, r"not a valid date", id="expires-leap-sec"),
    pytest.param({"expires": "0000-01-01T00:00:00Z"}, r"not a valid date", id="expires-year-0"),
    pytest.param({"spec_version": DELETE}, r"no 'spec_version' field", id="spec-missing"),
    pytest.param({"spec_version": 1}, r"'spec_version' must be a string", id="spec-int"),
    *(
        pytest.param(
            {"spec_version": value},
            r"spec_version .* is not MAJOR\.MINOR or MAJOR\.MINOR\.PATCH",
            id=f"spec-{name}",
        )
        for name, value in [
            ("abc", "abc"),
            ("major-only", "1"),
            ("four-parts", "1.0.31.1"),
            ("suffix", "1.0.31-rc1"),
            ("v-prefix", "v1.0.31"),
            ("empty", ""),
            ("unicode-digit", "\u0661.0.0"),
            ("huge-part", "1" * 5000 + ".0"),
        ]
    ),
]


@pytest.mark.parametrize(("overrides", "reason"), INSPECT_REFUSALS)
def test_inspect_signed_refusals(
    make_payload: PayloadFactory, delete: object, overrides: dict[str, Any], reason: str
) -> None:
    overrides = {k: delete if v is DELETE else v for k, v in overrides.items()}
    payload = make_payload(**overrides)
    obj = parse_canonical(payload)  # canonical: only the field is wrong
    with pytest.raises(PayloadError, match=reason) as excinfo:
        inspect_signed(obj, payload)
    refused(excinfo, PayloadError, "INVALID_ARGUMENT")


def test_inspect_signed_reads_python_tuf_timestamp(timestamp_md: Metadata[Timestamp]) -> None:
    payload = timestamp_md.signed_bytes
    info = inspect_signed(parse_canonical(payload), payload)
    assert info == SignedInfo(
        type="timestamp",
        version=42,
        expires=NOW + timedelta(hours=12),
        spec_version="1.0.31",
        payload_sha256=hashlib.sha256(payload).hexdigest(),
    )
    assert info.expires.tzinfo is UTC
    assert info.expires.strftime(TUF_EXPIRES_FORMAT) == "2025-06-02T00:00:00Z"
    with pytest.raises(AttributeError):
        info.version = 43  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        pytest.param({"version": 1}, 1, id="version-1"),
        pytest.param({"version": 2**63 - 1}, 2**63 - 1, id="version-max"),
        pytest.param({"spec_version": "1.0"}, 1, id="spec-two-parts"),
        pytest.param({"expires": "2030-02-28T23:59:59Z"}, 1, id="expires-ok"),
        pytest.param({"extra": {"unknown": ["fields", "kept"]}}, 1, id="unrecognised-fields"),
    ],
)
def test_inspect_signed_accepts(
    make_payload: PayloadFactory, overrides: dict[str, Any], expected: int
) -> None:
    payload = make_payload(**overrides)
    info = inspect_signed(parse_canonical(payload), payload)
    assert info.type == "timestamp"
    if "version" in overrides:
        assert info.version == expected


# --- resolve_role ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "type_", "expected"),
    [
        pytest.param(None, "timestamp", "timestamp", id="default-timestamp"),
        pytest.param("", "snapshot", "snapshot", id="empty-defaults-snapshot"),
        pytest.param(None, "root", "root", id="default-root"),
        pytest.param("bins-3fff", "targets", "bins-3fff", id="named-bin"),
        pytest.param("timestamp", "snapshot", "timestamp", id="named-wins-over-type"),
        pytest.param("café", "targets", "café", id="nfc-non-ascii"),
        pytest.param("a.b-c_d", "targets", "a.b-c_d", id="dots-dashes"),
        pytest.param("x" * 255, "targets", "x" * 255, id="255-chars"),
    ],
)
def test_resolve_role(role: str | None, type_: str, expected: str) -> None:
    assert resolve_role(role, type_) == expected


ROLE_NAME_REFUSALS = [
    pytest.param(None, r"role name required for targets metadata", id="targets-needs-role"),
    pytest.param("", r"role name required for targets metadata", id="targets-empty-role"),
    pytest.param("../x", r"role name '\.\./x' contains '/'", id="dotdot-slash"),
    pytest.param("a/b", r"role name 'a/b' contains '/'", id="slash"),
    pytest.param("..", r"role name '\.\.' contains '\.\.' or is '\.'", id="dotdot"),
    pytest.param("a..b", r"contains '\.\.'", id="dotdot-inside"),
    pytest.param(".", r"role name '\.' contains '\.\.' or is '\.'", id="dot"),
    pytest.param("x" * 300, r"role name is 300 characters long, more than 255", id="too-long"),
    pytest.param("snap\x00", r"role name 'snap\\x00' contains a control .* \(U\+0000\)", id="nul"),
    pytest.param("bins-\n1", r"contains a control or format character '\\n'", id="newline"),
    pytest.param("bins-\x1b[31m", r"'\\x1b' \(U\+001B\)", id="escape"),
    pytest.param("bins-\u202e1", r"U\+202E", id="bidi-override"),
    pytest.param("bins-\u200b", r"U\+200B", id="zero-width-space"),
    pytest.param("bins-\u2028", r"U\+2028", id="line-separator"),
    pytest.param("bins-\ud800", r"U\+D800", id="lone-surrogate"),
    pytest.param(" timestamp", r"role name ' timestamp' has leading or trailing", id="lead-space"),
    pytest.param("timestamp ", r"has leading or trailing whitespace", id="trailing-space"),
    pytest.param("\u3000bins", r"has leading or trailing whitespace", id="ideographic-space"),
    pytest.param("e\u0301", r"role name 'e\u0301' is not in Unicode normal form NFC", id="nfd"),
]


@pytest.mark.parametrize(("role", "reason"), ROLE_NAME_REFUSALS)
def test_resolve_role_refusals(role: str | None, reason: str) -> None:
    with pytest.raises(RequestError, match=reason) as excinfo:
        resolve_role(role, "targets")
    refused(excinfo, RequestError, "INVALID_ARGUMENT")
    assert "\x00" not in excinfo.value.reason
    assert "\n" not in excinfo.value.reason


# --- check_type_fits_role -------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "type_"),
    [
        ("timestamp", "timestamp"),
        ("snapshot", "snapshot"),
        ("root", "root"),
        ("targets", "targets"),
        ("bins-0000", "targets"),
        ("Timestamp", "targets"),
    ],
)
def test_type_fits_role(role: str, type_: str) -> None:
    check_type_fits_role(role, type_)


@pytest.mark.parametrize(
    ("role", "type_", "reason"),
    [
        pytest.param(
            "timestamp",
            "snapshot",
            r"_type 'snapshot' does not fit role 'timestamp' \(expected 'timestamp'\)",
            id="snapshot-as-timestamp",
        ),
        pytest.param("snapshot", "timestamp", r"\(expected 'snapshot'\)", id="ts-as-snapshot"),
        pytest.param("timestamp", "targets", r"\(expected 'timestamp'\)", id="targets-as-ts"),
        pytest.param(
            "bins-00", "snapshot", r"role 'bins-00' \(expected 'targets'\)", id="snap-bin"
        ),
        pytest.param("bins-00", "timestamp", r"\(expected 'targets'\)", id="ts-as-bin"),
        pytest.param("bins-00", "root", r"\(expected 'targets'\)", id="root-as-bin"),
        pytest.param("root", "targets", r"\(expected 'root'\)", id="targets-as-root"),
    ],
)
def test_type_fits_role_refusals(role: str, type_: str, reason: str) -> None:
    with pytest.raises(PayloadError, match=reason) as excinfo:
        check_type_fits_role(role, type_)
    refused(excinfo, PayloadError, "INVALID_ARGUMENT")


# --- check_role_allowed ------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "pattern"),
    [
        ("timestamp", "timestamp"),
        ("snapshot", "snapshot"),
        ("bins-0000", "bins-*"),
        ("bins-3fff", "bins-*"),
        ("bins-", "bins-*"),
        ("delegated-a", "delegated-[ab]"),
        ("delegated-b", "delegated-[ab]"),
    ],
)
def test_role_allowed_first_match(role: str, pattern: str) -> None:
    assert check_role_allowed(role, RULES, "online").pattern == pattern


def test_role_allowed_first_rule_wins() -> None:
    rules = (RoleRule("bins-0*", 60), RoleRule("bins-*", DAY))
    assert check_role_allowed("bins-0abc", rules, "k") == RoleRule("bins-0*", 60)
    assert check_role_allowed("bins-1abc", rules, "k") == RoleRule("bins-*", DAY)


@pytest.mark.parametrize(
    ("role", "rules", "reason"),
    [
        pytest.param("root", RULES, r"root is an offline role", id="root"),
        pytest.param("root", (RoleRule("*", DAY),), r"root is an offline role", id="root-star"),
        pytest.param("targets", RULES, r"role 'targets' is not allowed for key 'k'", id="targets"),
        pytest.param("bins", RULES, r"role 'bins' is not allowed", id="bins-offline"),
        pytest.param("BINS-0000", RULES, r"role 'BINS-0000' is not allowed", id="case-sensitive"),
        pytest.param("Timestamp", RULES, r"role 'Timestamp' is not allowed", id="case-ts"),
        pytest.param("delegated-c", RULES, r"'delegated-c' is not allowed", id="class-miss"),
        pytest.param("timestamp", (), r"role 'timestamp' is not allowed", id="no-rules"),
    ],
)
def test_role_allowed_refusals(role: str, rules: tuple[RoleRule, ...], reason: str) -> None:
    with pytest.raises(PermissionError_, match=reason) as excinfo:
        check_role_allowed(role, rules, "k")
    refused(excinfo, PermissionError_, "PERMISSION_DENIED")


# --- check_spec_version ---------------------------------------------------------------


@pytest.mark.parametrize("spec_version", ["1.0", "1.0.0", "1.0.31", "1.99.0", "1.0.01"])
def test_spec_version_supported(spec_version: str) -> None:
    check_spec_version(spec_version)


@pytest.mark.parametrize(
    ("spec_version", "supported", "reason"),
    [
        pytest.param(
            "2.0.0", 1, r"unsupported spec_version major in '2\.0\.0' \(supported: 1\.x\)", id="2"
        ),
        pytest.param("0.9.0", 1, r"unsupported spec_version major", id="0"),
        pytest.param("abc", 1, r"unsupported spec_version major in 'abc'", id="abc"),
        pytest.param("01.0.0", 1, r"unsupported spec_version major in '01\.0\.0'", id="01"),
        pytest.param("", 1, r"unsupported spec_version major in ''", id="empty"),
        pytest.param("1.0.0", 2, r"\(supported: 2\.x\)", id="other-supported"),
    ],
)
def test_spec_version_refusals(spec_version: str, supported: int, reason: str) -> None:
    with pytest.raises(PolicyError, match=reason) as excinfo:
        check_spec_version(spec_version, supported)
    refused(excinfo, PolicyError, "FAILED_PRECONDITION")


# --- check_expiry --------------------------------------------------------------------


@pytest.mark.parametrize(
    "expires",
    [
        pytest.param(NOW + timedelta(seconds=1), id="one-second-ahead"),
        pytest.param(NOW + timedelta(hours=12), id="half-day"),
        pytest.param(NOW + timedelta(seconds=DAY), id="exactly-max"),
    ],
)
def test_expiry_accepted(expires: datetime) -> None:
    check_expiry(expires, NOW, DAY)


@pytest.mark.parametrize(
    ("expires", "now", "reason"),
    [
        pytest.param(
            NOW - timedelta(days=1),
            NOW,
            r"expires 2025-05-31T12:00:00Z is in the past \(now 2025-06-01T12:00:00Z\)",
            id="yesterday",
        ),
        pytest.param(NOW, NOW, r"is in the past", id="exactly-now"),
        pytest.param(
            NOW, NOW + timedelta(microseconds=1), r"is in the past", id="now-has-microseconds"
        ),
        pytest.param(
            NOW + timedelta(seconds=DAY + 1),
            NOW,
            r"expires 2025-06-02T12:00:01Z is beyond the maximum validity of 86400 s "
            r"for this role \(latest allowed 2025-06-02T12:00:00Z\)",
            id="one-second-too-far",
        ),
        pytest.param(NOW + timedelta(days=365), NOW, r"maximum validity of 86400 s", id="a-year"),
    ],
)
def test_expiry_refusals(expires: datetime, now: datetime, reason: str) -> None:
    with pytest.raises(PolicyError, match=reason) as excinfo:
        check_expiry(expires, now, DAY)
    refused(excinfo, PolicyError, "FAILED_PRECONDITION")


def test_expiry_compares_instants_across_zones() -> None:
    plus_two = timezone(timedelta(hours=2))
    check_expiry(NOW + timedelta(hours=1), NOW.astimezone(plus_two), DAY)
    with pytest.raises(PolicyError, match="in the past"):
        check_expiry(NOW, (NOW + timedelta(hours=1)).astimezone(plus_two), DAY)


def test_expiry_needs_aware_datetimes() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        check_expiry(NOW, NOW.replace(tzinfo=None), DAY)


# --- validate_rules --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rules", "bins"),
    [
        pytest.param(PEP458_ONLINE_RULES, PEP458_BINS, id="pep458"),
        pytest.param(pep458_online_rules(BINS4), BINS4, id="pep458-bins4"),
        pytest.param(
            (RoleRule("timestamp", DAY), RoleRule("snapshot", DAY), RoleRule("targets", DAY)),
            None,
            id="literals-without-bins",
        ),
        pytest.param((RoleRule("root-mirror", 10 * 365 * DAY),), None, id="ten-years"),
        pytest.param((RoleRule("bins-7", DAY),), BINS4, id="one-literal-bin"),
    ],
)
def test_validate_rules_accepts(rules: tuple[RoleRule, ...], bins: BinsDelegation | None) -> None:
    validate_rules(rules, bins)


@pytest.mark.parametrize(
    ("rules", "reason"),
    [
        pytest.param((), r"a key needs at least one role rule", id="none"),
        pytest.param((RoleRule("", DAY),), r"pattern must be a non-empty string", id="empty"),
        pytest.param((RoleRule("*", DAY),), r"'\*' would allow signing root", id="star"),
        pytest.param((RoleRule("r*", DAY),), r"'r\*' would allow signing root", id="r-star"),
        pytest.param((RoleRule("ro?t", DAY),), r"would allow signing root", id="question"),
        pytest.param((RoleRule("[r]oot", DAY),), r"would allow signing root", id="class"),
        pytest.param((RoleRule("root", DAY),), r"'root' would allow signing root", id="root"),
        pytest.param(
            (RoleRule("bins/*", DAY),), r"role rule pattern 'bins/\*' contains '/'", id="/"
        ),
        pytest.param((RoleRule("../*", DAY),), r"contains '/'", id="dotdot-slash"),
        pytest.param((RoleRule("bins-..*", DAY),), r"contains '\.\.'", id="dotdot"),
        pytest.param((RoleRule("bins-*\n", DAY),), r"control or format character", id="newline"),
        pytest.param((RoleRule(" bins-*", DAY),), r"leading or trailing whitespace", id="space"),
        pytest.param((RoleRule("e\u0301-*", DAY),), r"not in Unicode normal form NFC", id="nfd"),
        pytest.param((RoleRule("b" * 256, DAY),), r"256 characters long", id="too-long"),
        pytest.param(
            (RoleRule("bins-*", DAY), RoleRule("bins-*", 60)),
            r"role rule pattern 'bins-\*' appears twice",
            id="duplicate",
        ),
        pytest.param(
            (RoleRule("timestamp", 0),),
            r"max_validity '0' of role rule 'timestamp' must be a whole number of seconds "
            r"in 1\.\.315619200 \(10 years\)",
            id="validity-0",
        ),
        pytest.param((RoleRule("timestamp", -1),), r"max_validity '-1'", id="validity-negative"),
        pytest.param(
            (RoleRule("timestamp", 3653 * DAY + 1),), r"max_validity '315619201'", id="too-long"
        ),
        pytest.param((RoleRule("timestamp", True),), r"max_validity 'True'", id="validity-bool"),
        pytest.param(
            (RoleRule("timestamp", 1.5),),  # type: ignore[arg-type]
            r"max_validity '1\.5'",
            id="validity-float",
        ),
    ],
)
def test_validate_rules_refusals(rules: tuple[RoleRule, ...], reason: str) -> None:
    with pytest.raises(RequestError, match=reason) as excinfo:
        validate_rules(rules)
    refused(excinfo, RequestError, "INVALID_ARGUMENT")


def test_pep458_online_rules() -> None:
    assert BinsDelegation("bins", 14) == PEP458_BINS
    assert [(r.pattern, r.max_validity) for r in PEP458_ONLINE_RULES] == [
        ("timestamp", DAY),
        ("snapshot", DAY),
        ("bins-[0-3][0-9a-f][0-9a-f][0-9a-f]", DAY),
    ]
    for offline in ("root", "targets", "bins"):
        with pytest.raises(PermissionError_):
            check_role_allowed(offline, PEP458_ONLINE_RULES, "online")


# --- check_sign_request ----------------------------------------------------------------


def test_sign_request_timestamp(timestamp_md: Metadata[Timestamp]) -> None:
    payload = timestamp_md.signed_bytes
    role, info, rule = check_sign_request(payload, None, "online", RULES, NOW, MAX_PAYLOAD)
    assert role == "timestamp"
    assert (info.type, info.version) == ("timestamp", 42)
    assert rule == RoleRule("timestamp", DAY)


def test_sign_request_snapshot(snapshot_md: Metadata[Snapshot]) -> None:
    payload = snapshot_md.signed_bytes
    role, info, rule = check_sign_request(payload, "snapshot", "online", RULES, NOW, MAX_PAYLOAD)
    assert (role, info.type, info.version, rule.pattern) == ("snapshot", "snapshot", 41, "snapshot")


@pytest.mark.parametrize("n_targets", [1, 139, 2000])
def test_sign_request_bin(make_bin: BinFactory, n_targets: int) -> None:
    md = make_bin(n_targets, bins=("bins", 4), role="bins-a")
    payload = md.signed_bytes
    role, info, rule = check_sign_request(
        payload, "bins-a", "online", pep458_online_rules(BINS4), NOW, MAX_PAYLOAD, bins=BINS4
    )
    assert (role, info.type, info.version) == ("bins-a", "targets", 3)
    assert rule.pattern == "bins-[0-9a-f]"
    assert info.expires == NOW + timedelta(hours=23)


def test_sign_request_pep458_bin(make_bin: BinFactory) -> None:
    md = make_bin(2, bins=("bins", 14), role="bins-00a1")
    role, _, rule = check_sign_request(
        md.signed_bytes,
        "bins-00a1",
        "online",
        PEP458_ONLINE_RULES,
        NOW,
        MAX_PAYLOAD,
        bins=PEP458_BINS,
    )
    assert (role, rule) == ("bins-00a1", PEP458_ONLINE_RULES[2])


def test_sign_request_bin_with_control_characters_in_custom(make_bin: BinFactory) -> None:
    md = make_bin(5, bins=("bins", 4), role="bins-1")
    next(iter(md.signed.targets.values())).unrecognized_fields["custom"] = {"note": "a\tb\x00"}
    role, _, _ = check_sign_request(
        md.signed_bytes,
        "bins-1",
        "online",
        pep458_online_rules(BINS4),
        NOW,
        MAX_PAYLOAD,
        bins=BINS4,
    )
    assert role == "bins-1"


def _sign(payload: bytes, role: str | None = None, limit: int = MAX_PAYLOAD) -> None:
    check_sign_request(payload, role, "online", RULES, NOW, limit)


# Each case breaks two rules; the first in check_sign_request's order must win.
ORDER = [
    pytest.param(
        dict(payload=b"{ not json", limit=4),
        PayloadError,
        r"payload is 10 bytes, more than the limit of 4",
        id="size-before-parse",
    ),
    pytest.param(
        dict(payload=b'{"_type":"root", "version":0}'),
        PayloadError,
        r"not canonical JSON",
        id="canonical-before-fields",
    ),
    pytest.param(
        dict(fields={"version": 0}, role="a/b"),
        PayloadError,
        r"version '0' is out of range",
        id="fields-before-role-name",
    ),
    pytest.param(
        dict(fields={"type_": "targets"}, role="bins-\x00"),
        RequestError,
        r"contains a control",
        id="role-name-before-type",
    ),
    pytest.param(
        dict(fields={"type_": "targets"}),
        RequestError,
        r"role name required for targets metadata",
        id="targets-role-required",
    ),
    pytest.param(
        dict(fields={"type_": "snapshot"}, role="targets"),
        PayloadError,
        r"_type 'snapshot' does not fit role 'targets' \(expected 'targets'\)",
        id="type-before-permission",
    ),
    pytest.param(
        dict(fields={"type_": "root", "spec_version": "2.0.0"}),
        PermissionError_,
        r"root is an offline role",
        id="root-default-role-refused",
    ),
    pytest.param(
        dict(fields={"type_": "targets", "spec_version": "2.0.0"}, role="targets"),
        PermissionError_,
        r"role 'targets' is not allowed for key 'online'",
        id="permission-before-spec",
    ),
    pytest.param(
        dict(fields={"spec_version": "2.0.0", "expires": "2000-01-01T00:00:00Z"}),
        PolicyError,
        r"unsupported spec_version major",
        id="spec-before-expiry",
    ),
    pytest.param(
        dict(fields={"expires": "2025-06-01T12:00:00Z"}),
        PolicyError,
        r"expires 2025-06-01T12:00:00Z is in the past",
        id="expired",
    ),
    pytest.param(
        dict(fields={"expires": "2025-06-02T12:00:01Z"}),
        PolicyError,
        r"beyond the maximum validity of 86400 s",
        id="timestamp-too-far",
    ),
    pytest.param(
        dict(fields={"type_": "snapshot", "expires": "2025-06-03T12:00:01Z"}, role="snapshot"),
        PolicyError,
        r"maximum validity of 172800 s",
        id="snapshot-uses-its-rule",
    ),
]


@pytest.mark.parametrize(("case", "cls", "reason"), ORDER)
def test_sign_request_refusal_order(
    make_payload: PayloadFactory,
    case: dict[str, Any],
    cls: type[TufSignerError],
    reason: str,
) -> None:
    payload = case.get("payload") or make_payload(**case.get("fields", {}))
    with pytest.raises(cls, match=reason) as excinfo:
        _sign(payload, case.get("role"), case.get("limit", MAX_PAYLOAD))
    refused(excinfo, cls, cls.code)


def test_sign_request_boundaries(make_payload: PayloadFactory) -> None:
    payload = make_payload(expires="2025-06-02T12:00:00Z")  # exactly now + 1 day
    _sign(payload, limit=len(payload))
    with pytest.raises(PayloadError, match="more than the limit"):
        _sign(payload, limit=len(payload) - 1)
