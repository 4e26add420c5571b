"""Facts about Google Cloud KMS that the config and the gcpkms backend share.

Dependency-free, so that parsing a config loads no Google (or PKCS#11) library.
Resource ids: https://cloud.google.com/kms/docs/resource-hierarchy.
"""

from __future__ import annotations

import re
from typing import Final

# Budgets of one call and of one key creation, in seconds.
DEFAULT_CALL_TIMEOUT: Final = 10.0
DEFAULT_CREATE_TIMEOUT: Final = 120.0  # KMS generates HSM keys asynchronously

PROTECTION_LEVELS: Final = ("HSM", "SOFTWARE")
DEFAULT_PROTECTION_LEVEL: Final = "HSM"  # keys that never leave Google's HSMs (P1)

_IDS: Final = {
    "project": (re.compile(r"[a-z0-9][a-z0-9.:-]{0,99}"), "is not a Google Cloud project id"),
    "location": (re.compile(r"[a-z][a-z0-9-]{0,62}"), "is not a KMS location"),
    "key_ring": (re.compile(r"[a-zA-Z0-9_-]{1,63}"), "must match [a-zA-Z0-9_-]{1,63}"),
}
# A KMS key ring or crypto key id.
KMS_ID: Final = _IDS["key_ring"][0]


def id_problem(kind: str, value: str) -> str | None:
    """What is wrong with ``value`` as a KMS ``kind`` id ("project", "location", "key_ring").

    Returns:
        None when it is valid, else the complaint, starting with the quoted value.
    """
    pattern, complaint = _IDS[kind]
    return None if pattern.fullmatch(value) else f"{value!r} {complaint}"
