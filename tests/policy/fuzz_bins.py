"""Fuzz the native path-to-bin check against its Python reference (issue 16).

The input's first eight bytes are ``low`` and ``high`` (big-endian 32-bit); the
rest, split at NUL bytes and decoded as UTF-8 with ``surrogatepass`` (so lone
surrogates, which have no UTF-8 form, come through), are the target paths.
``check_one`` asserts that ``_cbins.first_outside`` names the same path as
``first_path_outside_reference``, or raises the same exception class.
tests/policy/test_native_bins.py runs it with hypothesis and, bounded, under
atheris (libFuzzer):

    .venv/bin/python tests/policy/fuzz_bins.py -max_total_time=60
"""

from __future__ import annotations

import sys
from typing import Any

from tuf_signer.policy import _bins, _cbins


def outcome(first: Any, targets: dict[str, None], low: int, high: int) -> tuple[str, Any]:
    try:
        return ("path", first(targets, low, high))
    except Exception as e:
        return ("raised", type(e))


def native(targets: dict[str, None], low: int, high: int) -> str | None:
    i = _cbins.first_outside(targets, low, high)
    return None if i < 0 else list(targets)[i]


def check_one(targets: dict[str, None], low: int, high: int) -> tuple[str, Any]:
    """Assert the native check and the reference agree; return what they gave."""
    expected = outcome(_bins.first_path_outside_reference, targets, low, high)
    got = outcome(native, targets, low, high)
    assert got == expected, (targets, low, high, got, expected)
    return got


def fuzz_one_input(data: bytes) -> None:
    if len(data) < 8:
        return
    low, high = int.from_bytes(data[:4], "big"), int.from_bytes(data[4:8], "big")
    text = data[8:].decode("utf-8", "surrogatepass") if _decodes(data[8:]) else ""
    check_one(dict.fromkeys(text.split("\0")), low, high)


def _decodes(data: bytes) -> bool:
    try:
        data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return False
    return True


def main() -> None:
    import atheris  # type: ignore[import-not-found, unused-ignore]

    atheris.instrument_func(_bins.first_path_outside_reference)
    atheris.Setup(sys.argv, fuzz_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
