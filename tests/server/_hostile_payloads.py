"""Hostile TUF ``signed`` payloads for the hostile-input table and the property tests.

Each builder is a function of the harness's ``Payloads`` (whose clock sets a
valid ``expires``), so that a payload is wrong in exactly the way its name says
and valid in every other way: python-tuf builds the base, and a change is made
either on the parsed object, re-encoded canonically (``edit``), or on the raw
bytes (``splice``) when the defect is the encoding itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from securesystemslib.formats import encode_canonical

from .conftest import Payloads

Build = Callable[[Payloads], bytes]

# Hostile payloads carry this version: one above the high-water marks the
# table seeds, so a payload that slipped through the checks would be signed.
VERSION = 2

DELETE = object()  # for ``edit``: drop the field


def timestamp(version: int = VERSION) -> Build:
    return lambda p: p.timestamp(version)


TIMESTAMP = timestamp()  # the default payload: valid, version 2


def snapshot(version: int = VERSION) -> Build:
    return lambda p: p.snapshot(version)


def targets(version: int = VERSION, n_targets: int = 2, salt: str = "") -> Build:
    return lambda p: p.targets(version, n_targets=n_targets, salt=salt)


def root() -> Build:
    return lambda p: p.root(VERSION)


def raw(data: bytes) -> Build:
    return lambda p: data


def canonical(obj: Any) -> bytes:
    encoded = encode_canonical(obj)
    assert isinstance(encoded, str)
    return encoded.encode("utf-8")


def edit(base: Build, **fields: Any) -> Build:
    """Set (or ``DELETE``) top-level fields, then re-encode canonically.

    ``type_`` stands for ``_type``; a callable value is called with ``Payloads``.
    """

    def build(p: Payloads) -> bytes:
        obj = json.loads(base(p))
        for name, value in fields.items():
            key = "_type" if name == "type_" else name
            if value is DELETE:
                del obj[key]
            else:
                obj[key] = value(p) if callable(value) else value
        return canonical(obj)

    return build


def splice(base: Build, old: bytes, new: bytes) -> Build:
    """Replace the first ``old`` in the payload's bytes (which must hold it) by ``new``."""

    def build(p: Payloads) -> bytes:
        payload = base(p)
        assert old in payload, (old, payload[:200])
        return payload.replace(old, new, 1)

    return build


def append_field(base: Build, text: bytes) -> Build:
    """Add raw ``,"key":value`` text before the closing brace (sorts last if key >= "version")."""
    return lambda p: base(p)[:-1] + text + b"}"


def expires_as(render: Callable[[datetime], str], base: Build | None = None) -> Build:
    """A payload whose ``expires`` is the valid expiry rendered by ``render``."""
    return edit(base or timestamp(), expires=lambda p: render(p.expires()))


def version_literal(literal: bytes, base: Build | None = None) -> Build:
    """A payload whose ``version`` value is the raw JSON text ``literal``."""
    return splice(
        base or timestamp(), f'"version":{VERSION}}}'.encode(), b'"version":' + literal + b"}"
    )


def sized_targets(size: int) -> Build:
    """Valid targets metadata of exactly ``size`` bytes (one target, with a long path)."""

    def build(p: Payloads) -> bytes:
        def make(path_len: int) -> bytes:
            obj = json.loads(p.targets(VERSION, n_targets=1))
            (info,) = obj["targets"].values()
            obj["targets"] = {"p" * path_len: info}
            return canonical(obj)

        short = make(1)
        payload = make(1 + size - len(short))
        assert len(payload) == size
        return payload

    return build


def nested(depth: int, open_: bytes = b"[", close: bytes = b"]") -> Build:
    """Valid timestamp with an extra field ``z`` nested ``depth`` containers deep."""
    return append_field(timestamp(), b',"z":' + open_ * depth + close * depth)


# --- issue 10, finding 2: keys that Go's encoding/json folds into one ----------------

# Go matches keys to struct fields case-insensitively with Unicode simple folding
# (U+017F long s ~ s, U+212A Kelvin sign ~ k), and the last match wins: go-tuf
# v0.x read these payloads' second "expires"/"version". They sort after the
# real keys ("expires" < "expire\u017f"), so Go reads them last.
GO_EXPIRES = "2099-01-01T00:00:00Z"


def go_folded_timestamp() -> Build:
    """A valid timestamp plus ``expire\u017f`` (2099) and ``ver\u017fion`` (1)."""
    return edit(timestamp(), **{"expire\u017f": GO_EXPIRES, "ver\u017fion": 1})


def folded_keys(**fields: Any) -> Build:
    """A valid timestamp plus the given top-level fields (keys that fold onto others)."""
    return edit(timestamp(), **fields)


def folded_in_meta() -> Build:
    """``meta/snapshot.json`` holds ``version`` and ``ver\u017fion``: depth 2."""

    def build(p: Payloads) -> bytes:
        obj = json.loads(p.timestamp(VERSION))
        obj["meta"]["snapshot.json"]["ver\u017fion"] = 99
        return canonical(obj)

    return build


def targets_differing_in_case() -> Build:
    """Targets metadata with the paths ``a/Foo.whl`` and ``a/foo.whl``."""

    def build(p: Payloads) -> bytes:
        obj = json.loads(p.targets(VERSION, n_targets=1))
        (info,) = obj["targets"].values()
        obj["targets"] = {"a/Foo.whl": info, "a/foo.whl": info}
        return canonical(obj)

    return build
