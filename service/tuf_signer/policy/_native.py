"""The native fast paths of the payload checks (issue 16), and whether they run.

Two optional C extensions, built by ``pip install`` when a C compiler and the
headers are there (``make`` installs ``gcc``, ``python3-dev`` and ``libssl-dev``):

- ``_ccanonical``: the canonical-JSON scan (``_canonical.parse_canonical``);
- ``_cbins``: the path-to-bin hash check (``_bins.check_bin_payload``).

Each has a pure-Python reference that stays the path when the extension was
not built, or for both when ``TUF_SIGNER_NATIVE=0`` is set at start-up (to
compare, or to rule out a native bug). ``serve`` warns when either is off.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

# Why the native paths are off by setting, or "" when they are not.
_FORCED_OFF = ""
if os.environ.get("TUF_SIGNER_NATIVE", "1") == "0":
    _FORCED_OFF = "TUF_SIGNER_NATIVE=0 is set"

_NEEDS = {
    "_ccanonical": "a C compiler and Python's headers",
    "_cbins": "a C compiler, Python's headers and OpenSSL's (libssl-dev)",
}
_off: dict[str, str] = {}  # extension -> why it is not in use


def load(name: str) -> ModuleType | None:
    """The extension ``tuf_signer.policy.<name>``, or None when it is off.

    Why it is off goes to ``native_check_off``.
    """
    if _FORCED_OFF:
        _off[name] = _FORCED_OFF
        return None
    try:
        return importlib.import_module(f"tuf_signer.policy.{name}")
    except ImportError:
        _off[name] = f"the extension was not built ({_NEEDS[name]} are needed)"
        return None


def native_check_off() -> str:
    """Why some payload check runs in its pure-Python reference alone; "" when none does."""
    return "; ".join(f"{name}: {why}" for name, why in sorted(_off.items()))
