"""One reading of the payload (finding 2 of issue 10): no keys that Go folds into one.

Go's ``encoding/json`` finds a struct field for an object key by exact name, else
by ``foldName`` (encoding/json/fold.go): ASCII letters upper-cased, every other
rune replaced by the smallest rune of its ``unicode.SimpleFold`` orbit (Unicode
simple case folding, CaseFolding.txt status C and S). The last key that matches a
field wins. ``GoFold`` below is a Python model of that rule, built from Python's
Unicode tables; the tests show that every pair of keys Go would fold together is
refused by ``parse_canonical``. When a ``go`` toolchain is on PATH, a real Go
program also decodes the hostile payload the way go-tuf v0.x does.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from securesystemslib.formats import encode_canonical

from tuf_signer.errors import PayloadError
from tuf_signer.policy import parse_canonical
from tuf_signer.policy._canonical import _fold

# CaseFolding.txt "S" (simple) entries of characters whose full folding ("F") is
# several characters, that Python's str methods do not expose (``lower()``
# gives the others, e.g. U+1E9E -> U+00DF, U+1F88 -> U+1F80).
_SIMPLE_ONLY = {"\u1fd3": "\u0390", "\u1fe3": "\u03b0", "\ufb05": "\ufb06"}


def simple_fold(c: str) -> str:
    """Unicode simple case folding (CaseFolding.txt C + S) of one character."""
    folded = c.casefold()
    if len(folded) == 1:
        return folded  # a C entry, or no entry
    lower = c.lower()
    if len(lower) == 1 and lower != c:
        return lower  # the S entry of an F character
    return _SIMPLE_ONLY.get(c, c)


@functools.cache
def _orbit_minimum() -> dict[str, str]:
    """For each character with a non-trivial SimpleFold orbit, the smallest member."""
    classes: dict[str, list[str]] = {}
    for code in range(sys.maxunicode + 1):
        if 0xD800 <= code <= 0xDFFF:
            continue
        c = chr(code)
        classes.setdefault(simple_fold(c), []).append(c)
    out: dict[str, str] = {}
    for members in classes.values():
        if len(members) > 1:
            smallest = min(members)
            for m in members:
                out[m] = smallest
    return out


def go_fold_rune(c: str) -> str:
    """``foldRune``: the smallest rune of ``c``'s SimpleFold orbit."""
    return _orbit_minimum().get(c, c)


def go_fold_name(key: str) -> str:
    """``appendFoldedName``: ASCII upper-cased, other runes by ``foldRune``."""
    return "".join(
        (c.upper() if "a" <= c <= "z" else c) if c < "\x80" else go_fold_rune(c) for c in key
    )


def go_groups() -> list[list[str]]:
    """Characters that Go folds onto one another, grouped (ASCII included)."""
    groups: dict[str, list[str]] = {}
    for c in _orbit_minimum():
        groups.setdefault(go_fold_name(c), []).append(c)
    for code in range(0x80):
        c = chr(code)
        if go_fold_name(c) in groups and c not in groups[go_fold_name(c)]:
            groups[go_fold_name(c)].append(c)
    return [sorted(g) for g in groups.values() if len(g) > 1]


def test_model_agrees_with_go_on_the_known_cases() -> None:
    # From Go's unicode tests and fold.go: the orbits of k and s, ASCII upper-cased.
    assert go_fold_name("expire\u017f") == go_fold_name("expires") == "EXPIRES"
    assert go_fold_name("\u212aeyid") == go_fold_name("keyid") == "KEYID"
    assert go_fold_name("\u00df") == go_fold_name("\u1e9e") == "\u00df"
    assert go_fold_name("\u03c3") == go_fold_name("\u03c2") == go_fold_name("\u03a3")
    # Dotted and dotless i have no simple folding (only Turkic T entries).
    assert go_fold_name("\u0130") == "\u0130" and go_fold_name("\u0131") == "\u0131"
    # NFKC is not Go's business: fullwidth letters fold only among themselves.
    assert go_fold_name("\uff56") != go_fold_name("v")


def test_every_pair_go_folds_together_is_refused() -> None:
    """Exhaustive over every code point: members of a Go fold group share our fold."""
    groups = go_groups()
    assert len(groups) > 1000  # the model did find Unicode's case pairs
    for group in groups:
        assert len({_fold(c) for c in group}) == 1, [f"U+{ord(c):04X}" for c in group]


@functools.cache
def _group_of() -> dict[str, list[str]]:
    return {c: g for g in go_groups() for c in g}


_KEY_CHARS = st.one_of(
    st.deferred(lambda: st.sampled_from(sorted(_group_of()))),  # built on first use
    st.sampled_from(list("abcdefghijklmnopqrstuvwxyz_-./0123456789")),
    st.sampled_from(["\u0301", "\u0307", "\u0345", "\u00e9", "\u2126", "\u212b"]),
    st.characters(codec="utf-8"),
)


@settings(max_examples=500, deadline=None)
@given(st.text(_KEY_CHARS, min_size=1, max_size=10), st.randoms(use_true_random=False))
def test_keys_go_reads_as_one_field_are_refused(key: str, rnd: Any) -> None:
    """Swap characters for others in their Go fold group: the pair is refused."""
    groups = _group_of()
    other = "".join(rnd.choice(groups[c]) if c in groups else c for c in key)
    if other == key:
        return
    assert go_fold_name(other) == go_fold_name(key)
    payload = str(encode_canonical({key: 1, other: 2})).encode("utf-8")
    with pytest.raises(PayloadError, match="differ only in case or Unicode form"):
        parse_canonical(payload)


# --- the real thing: Go's encoding/json on the unfixed payload ------------------------------

_GO_PROGRAM = """
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"
)

// go-tuf v0.x data.Timestamp (github.com/theupdateframework/go-tuf/data/types.go).
type Timestamp struct {
	Type        string                     `json:"_type"`
	SpecVersion string                     `json:"spec_version"`
	Version     int64                      `json:"version"`
	Expires     time.Time                  `json:"expires"`
	Meta        map[string]json.RawMessage `json:"meta"`
}

func main() {
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		panic(err)
	}
	var t Timestamp
	if err := json.Unmarshal(data, &t); err != nil {
		panic(err)
	}
	fmt.Printf("%d %s\\n", t.Version, t.Expires.UTC().Format(time.RFC3339))
}
"""


def _hostile_timestamp() -> bytes:
    """The review's payload: a valid timestamp plus "expire\u017f" and "ver\u017fion"."""
    expires = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    signed = {
        "_type": "timestamp",
        "spec_version": "1.0.31",
        "version": 7,
        "expires": expires,
        "meta": {"snapshot.json": {"version": 7}},
        "expire\u017f": "2099-01-01T00:00:00Z",
        "ver\u017fion": 1,
    }
    return str(encode_canonical(signed)).encode("utf-8")


def test_hostile_timestamp_is_refused() -> None:
    payload = _hostile_timestamp()
    assert json.loads(payload)["version"] == 7  # what a Python reader sees
    with pytest.raises(PayloadError, match=r"'expires' and 'expire\u017f'"):
        parse_canonical(payload)


@pytest.mark.skipif(
    shutil.which("go") is None, reason="no Go toolchain on PATH (encoding/json is the reference)"
)
def test_go_reads_the_hostile_timestamp_differently(tmp_path: Path) -> None:
    program = tmp_path / "main.go"
    program.write_text(_GO_PROGRAM)
    env = {
        **os.environ,
        "GOCACHE": str(tmp_path / "cache"),
        "GOPATH": str(tmp_path / "gopath"),
        "GO111MODULE": "off",
    }
    out = subprocess.run(
        ["go", "run", str(program)],
        input=_hostile_timestamp(),
        capture_output=True,
        env=env,
        timeout=300,
        check=True,
    )
    # Go read the second, folded pair: version 1, expires 2099.
    assert out.stdout.decode().split() == ["1", "2099-01-01T00:00:00Z"]
