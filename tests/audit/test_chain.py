"""The hash chain: its documented byte format, and the event's round trip."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import pytest

from tuf_signer.audit import GENESIS_HASH, event_from_dict, event_to_dict, record_hash
from tuf_signer.audit._chain import chain
from tuf_signer.model import AuditEvent, Outcome

EVENT = AuditEvent(
    time="2025-01-01T00:00:00.000000Z",
    identity="repo",
    operation="sign",
    outcome=Outcome.GRANTED,
    status="OK",
)

FULL = AuditEvent(
    time="2025-01-01T00:00:00.123456Z",
    identity="spiffe://pypi/warehouse",
    operation="sign",
    outcome=Outcome.REFUSED,
    status="FAILED_PRECONDITION",
    reason='version 5 is not above "7"\n',
    key_name="online",
    keyid="ab" * 32,
    key_version=3,
    role="bins-3fff",
    metadata_version=5,
    expires="2025-01-02T00:00:00Z",
    payload_sha256="cd" * 32,
    signature="",
    detail={"peer": "ipv6:[::1]:5000", "list": [1, None, True], "nested": {"é": "😀/\x7f"}},
)


def test_worked_example_in_the_docstring() -> None:
    assert (
        record_hash(GENESIS_HASH, 1, EVENT)
        == "438120952e021a2df7c140ccad31fb434a1f9789c718b5841c3bd4ded74c0448"
    )


def _independent_hash(prev_hash: str, seq: int, event: dict[str, Any]) -> str:
    """The module docstring's recipe, written out by hand (an auditor's version)."""

    def enc(v: Any) -> str:
        if isinstance(v, str):
            out = ['"']
            short = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r"}
            short["\t"] = "\\t"
            for ch in v:
                if ch in short:
                    out.append(short[ch])
                elif " " <= ch <= "~":
                    out.append(ch)
                else:
                    for unit in range(0, len(ch.encode("utf-16-be")), 2):
                        code = ch.encode("utf-16-be")[unit : unit + 2]
                        out.append(f"\\u{code.hex()}")
            out.append('"')
            return "".join(out)
        if v is None:
            return "null"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, list):
            return "[" + ",".join(enc(x) for x in v) + "]"
        assert isinstance(v, dict)
        return "{" + ",".join(f"{enc(k)}:{enc(v[k])}" for k in sorted(v)) + "}"

    text = enc({"event": event, "prev_hash": prev_hash, "seq": seq})
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@pytest.mark.parametrize("event", [EVENT, FULL], ids=["minimal", "every-field"])
def test_an_independent_implementation_agrees(event: AuditEvent) -> None:
    d = event_to_dict(event)
    assert _independent_hash("f" * 64, 42, d) == record_hash("f" * 64, 42, event)


def test_event_dict_round_trip() -> None:
    d = event_to_dict(FULL)
    assert d["outcome"] == "refused"
    assert set(d) == {f.name for f in dataclasses.fields(AuditEvent)}
    assert event_from_dict(json.loads(json.dumps(d))) == FULL


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param(f.name, None, id=f.name)
        for f in dataclasses.fields(AuditEvent)
        if f.name not in ("outcome", "detail")
    ]
    + [
        pytest.param("outcome", Outcome.GRANTED, id="outcome"),
        pytest.param("detail", {"x": "y"}, id="detail"),
    ],
)
def test_every_field_is_hashed(field: str, value: Any) -> None:
    base = record_hash(GENESIS_HASH, 1, FULL)
    old = getattr(FULL, field)
    if value is None:
        value = old + 1 if isinstance(old, int) else old + "x"
    assert record_hash(GENESIS_HASH, 1, dataclasses.replace(FULL, **{field: value})) != base


def test_position_is_hashed() -> None:
    base = record_hash(GENESIS_HASH, 1, EVENT)
    assert record_hash(GENESIS_HASH, 2, EVENT) != base
    assert record_hash("1" * 64, 1, EVENT) != base


def test_detail_key_order_does_not_matter() -> None:
    a = dataclasses.replace(EVENT, detail={"a": 1, "b": {"c": 2, "d": 3}})
    b = dataclasses.replace(EVENT, detail={"b": {"d": 3, "c": 2}, "a": 1})
    assert record_hash(GENESIS_HASH, 1, a) == record_hash(GENESIS_HASH, 1, b)


def test_chain_links_records() -> None:
    first = chain(GENESIS_HASH, 1, EVENT)
    second = chain(first.hash, 2, FULL)
    assert (second.seq, second.prev_hash, second.event) == (2, first.hash, FULL)
    assert second.hash == record_hash(first.hash, 2, FULL)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        pytest.param({"drop": "role"}, r"missing \['role'\]", id="missing-member"),
        pytest.param({"add": ("extra", "x")}, r"unexpected \['extra'\]", id="extra-member"),
        pytest.param({"set": ("key_version", "3")}, "must be an integer", id="int-as-string"),
        pytest.param({"set": ("key_version", True)}, "must be an integer", id="bool-as-int"),
        pytest.param({"set": ("role", 3)}, "must be a string", id="int-as-string-field"),
        pytest.param({"set": ("outcome", "maybe")}, "'granted' or 'refused'", id="bad-outcome"),
        pytest.param({"set": ("detail", [])}, "must be an object", id="detail-not-object"),
        pytest.param({"set": ("detail", {"f": 0.5})}, "floating-point", id="float-in-detail"),
    ],
)
def test_event_from_dict_rejects(change: dict[str, Any], match: str) -> None:
    d = event_to_dict(FULL)
    if "drop" in change:
        del d[change["drop"]]
    if "add" in change:
        d[change["add"][0]] = change["add"][1]
    if "set" in change:
        d[change["set"][0]] = change["set"][1]
    with pytest.raises(ValueError, match=match):
        event_from_dict(d)


@pytest.mark.parametrize(
    ("detail", "match"),
    [
        pytest.param({"x": 1.0}, "floating-point", id="float"),
        pytest.param({"x": [float("nan")]}, "floating-point", id="nan"),
        pytest.param({1: "x"}, "keys must be strings", id="int-key"),
        pytest.param({"x": b"bytes"}, "bytes is not allowed", id="bytes"),
    ],
)
def test_event_to_dict_rejects_unportable_detail(detail: dict[Any, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        event_to_dict(dataclasses.replace(EVENT, detail=detail))
