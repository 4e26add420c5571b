"""Microbenchmark of the strict canonical-JSON check on one PEP 458 bin (issue 16).

Prints µs per call (best of several repeats, one process, one thread) for a
~54 KB bin from ``bench._payloads``, split into its parts:

- reference: the pure-Python path (``_parse_reference``: C json decode, orjson
  sorted re-encode and compare, the one-reading check, the depth pre-scan);
- native: the C scan (``_ccanonical.scan``), then orjson building the object;
- native, target paths only (what ``check_sign_request`` asks for):
  ``_ccanonical.scan_targets``, then orjson reading the payload with the
  ``targets`` object cut to ``{}``;
- ``parse_canonical`` before (reference), after (native first), and native
  with ``target_paths_only`` (the Sign path since issue 16's lever 1).

Usage: ``python -m bench.canonical_micro [--targets N] [--number N]``.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from collections.abc import Callable

import orjson

from bench import _payloads
from tuf_signer.policy import _canonical

REPEAT = 7


def _best_us(call: Callable[[], object], number: int) -> float:
    call()
    return min(timeit.repeat(call, number=number, repeat=REPEAT)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=_payloads.TARGETS_PER_BIN)
    parser.add_argument("--number", type=int, default=2000, help="calls per repeat")
    args = parser.parse_args()

    payload = _payloads.bin_payload(5, 1, _payloads.expires(), args.targets)
    digits = sys.get_int_max_str_digits()
    try:
        from tuf_signer.policy import _ccanonical
    except ImportError:
        sys.exit("tuf_signer.policy._ccanonical is not built: pip install -e . with python3-dev")
    if _canonical._scan is None:
        sys.exit("the native check is switched off (TUF_SIGNER_NATIVE=0)")
    assert _ccanonical.scan(payload, 64, digits) == _ccanonical.ACCEPT
    obj = _canonical._DECODER.decode(payload.decode())
    _, start, end, paths = _ccanonical.scan_targets(payload, 64, digits)
    assert paths is not None and len(paths) == args.targets
    rest = payload[:start] + b"{}" + payload[end:]

    n = args.number
    rows = [
        ("reference: json decode (C)", lambda: _canonical._DECODER.decode(payload.decode())),
        (
            "reference: orjson sorted re-encode + compare",
            lambda: orjson.dumps(obj, option=orjson.OPT_SORT_KEYS) == payload,
        ),
        ("reference: _one_reading", lambda: _canonical._one_reading(payload, obj)),
        ("reference: _check_depth", lambda: _canonical._check_depth(payload, 64)),
        ("native: _ccanonical.scan", lambda: _ccanonical.scan(payload, 64, digits)),
        ("native: orjson.loads", lambda: orjson.loads(payload)),
        (
            "parse_canonical before (reference)",
            lambda: _canonical._parse_reference(payload, 64, True),
        ),
        ("native: _ccanonical.scan_targets", lambda: _ccanonical.scan_targets(payload, 64, digits)),
        ("native: orjson.loads without targets", lambda: orjson.loads(rest)),
        ("parse_canonical after (native first)", lambda: _canonical.parse_canonical(payload)),
        (
            "parse_canonical target_paths_only",
            lambda: _canonical.parse_canonical(payload, target_paths_only=True),
        ),
    ]
    print(f"payload: {len(payload)} bytes, {args.targets} targets; µs per call, best of {REPEAT}")
    results = {}
    for name, call in rows:
        results[name] = _best_us(call, n)
        print(f"  {name:46s} {results[name]:8.1f}")
    before = results["parse_canonical before (reference)"]
    after = results["parse_canonical after (native first)"]
    light = results["parse_canonical target_paths_only"]
    print(
        f"canonical_before_us={before:.1f} canonical_after_us={after:.1f} "
        f"speedup={before / after:.2f} canonical_paths_only_us={light:.1f}"
    )


if __name__ == "__main__":
    main()
