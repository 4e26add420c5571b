"""Fuzz the native canonical-JSON check against the pure-Python reference (issue 16).

The oracle is ``_parse_reference``: whatever bytes the native scan accepts, the
reference must accept and read as the same object; whatever it refuses, the
reference must refuse; and ``parse_canonical`` (native first) must give exactly
the reference's answer, the refusal's reason included. ``check_one`` is that
property; tests/policy/test_native_canonical.py uses it with hypothesis and runs
this file, bounded, under atheris (libFuzzer):

    .venv/bin/python tests/policy/fuzz_canonical.py -max_total_time=60 [CORPUS_DIR]

With no corpus directory, libFuzzer starts from nothing; ``write_seeds`` gives a
few canonical TUF payloads to start from.
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Any

from tuf_signer.errors import PayloadError
from tuf_signer.policy import _canonical, _ccanonical

ACCEPTS = (_ccanonical.ACCEPT, _ccanonical.ACCEPT_JSON)
DEPTHS = (64, 3)  # the service's default, and a small one that deep payloads cross

Outcome = tuple[str, Any]


def outcome(parse: Any, payload: bytes, max_depth: int) -> Outcome:
    """("ok", the object) or ("refused", the reason)."""
    try:
        return ("ok", parse(payload, max_depth))
    except PayloadError as e:
        return ("refused", str(e))


def reference(payload: bytes, max_depth: int) -> Outcome:
    return outcome(lambda p, d: _canonical._parse_reference(p, d, True), payload, max_depth)


def native_first(payload: bytes, max_depth: int) -> Outcome:
    return outcome(lambda p, d: _canonical.parse_canonical(p, max_depth=d), payload, max_depth)


def same(a: Any, b: Any) -> bool:
    """Equal, with the same types at every level (1 is not 1.0 is not True) and key order."""
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if type(x) is not type(y):
            return False
        if isinstance(x, dict):
            if list(x) != list(y):
                return False
            stack.extend((x[k], y[k]) for k in x)
        elif isinstance(x, list):
            if len(x) != len(y):
                return False
            stack.extend(zip(x, y, strict=True))
        elif x != y:
            return False
    return True


def check_one(payload: bytes, max_depth: int = 64) -> int:
    """Assert the native scan and ``parse_canonical`` agree with the reference.

    Returns:
        The native verdict (tests count them, to show both sides were reached).
    """
    verdict = _ccanonical.scan(payload, max_depth, sys.get_int_max_str_digits())
    expected = reference(payload, max_depth)
    if verdict in ACCEPTS:
        assert expected[0] == "ok", (payload[:200], verdict, expected)
    elif verdict == _ccanonical.REFUSE:
        assert expected[0] == "refused", (payload[:200], expected)
    else:
        assert verdict == _ccanonical.UNDECIDED, verdict
    got = native_first(payload, max_depth)
    assert got[0] == expected[0], (payload[:200], got, expected)
    if got[0] == "ok":
        assert same(got[1], expected[1]), payload[:200]
    else:
        assert got[1] == expected[1], (got, expected)
    _check_targets_scan(payload, max_depth, verdict, expected)
    return verdict


def _check_targets_scan(payload: bytes, max_depth: int, verdict: int, expected: Outcome) -> None:
    """``scan_targets`` (the Sign path's light parse) agrees with ``scan`` and the reference:
    the same verdict, and a span, when it gives one, holding exactly the paths it lists."""
    targets_verdict, start, end, paths = _ccanonical.scan_targets(
        payload, max_depth, sys.get_int_max_str_digits()
    )
    assert targets_verdict == verdict, (payload[:200], targets_verdict, verdict)
    if paths is None:
        assert (start, end) == (-1, -1)
        return
    assert verdict in ACCEPTS and expected[0] == "ok"
    whole = expected[1]
    assert whole.get("_type") == "targets" and isinstance(whole.get("targets"), dict)
    assert list(paths) == list(whole["targets"]), payload[:200]
    assert json.loads(payload[start:end], strict=False).keys() == whole["targets"].keys()


def fuzz_one_input(data: bytes) -> None:
    for depth in DEPTHS:
        check_one(data, depth)


SEEDS = (
    b"{}",
    b'{"a":[1,-2,true,false,null,"x\\"y\\\\z"],"b":{"A":{}},"c":"\x01\xc3\xa9"}',
    b'{"_type":"timestamp","expires":"2030-01-01T00:00:00Z","meta":{"snapshot.json":'
    b'{"version":7}},"spec_version":"1.0.31","version":7}',
    b'{"_type":"targets","expires":"2030-01-01T00:00:00Z","spec_version":"1.0.31",'
    b'"targets":{"a/B.whl":{"hashes":{"sha256":"00ff"},"length":18446744073709551616},'
    b'"a/c.whl":{"custom":{"k":[[[]]]},"hashes":{"sha256":"ab"},"length":0}},"version":1}',
    b'{"_type":"targets","targets":{"a/b.whl":{"length":1},"c\\"d":{}},"version":1}',
)


def write_seeds(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(SEEDS):
        (directory / f"seed-{i}").write_bytes(seed)


def main() -> None:
    import atheris  # type: ignore[import-not-found, unused-ignore]

    # Coverage comes from the reference's branches, which follow the payload's
    # structure (gcc cannot give libFuzzer coverage of the C code). Only that
    # module: instrumenting everything loaded takes longer than the run.
    for value in vars(_canonical).values():
        if inspect.isfunction(value) and value.__module__ == _canonical.__name__:
            atheris.instrument_func(value)
    atheris.Setup(sys.argv, fuzz_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
