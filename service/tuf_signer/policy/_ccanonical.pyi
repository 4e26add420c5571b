# Types of the C extension built from _ccanonical.c (see its header comment).
ACCEPT: int
ACCEPT_JSON: int
REFUSE: int
UNDECIDED: int

def scan(payload: bytes, max_depth: int, max_int_digits: int, /) -> int: ...
def scan_targets(
    payload: bytes, max_depth: int, max_int_digits: int, /
) -> tuple[int, int, int, dict[str, None] | None]: ...
