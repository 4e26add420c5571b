"""``model.evolve``: ``dataclasses.replace`` without ``__init__`` on the Sign path (issue 16)."""

from __future__ import annotations

import dataclasses
from functools import cached_property

import pytest

from tuf_signer.model import AuditEvent, Outcome, RoleState, evolve

EVENT = AuditEvent(
    time="2026-12-01T00:00:00.000000Z",
    identity="uri:spiffe://x/backend",
    operation="sign",
    outcome=Outcome.GRANTED,
    status="OK",
    key_name="online",
    key_version=1,
    role="timestamp",
)


@pytest.mark.parametrize(
    ("value", "changes"),
    [
        (EVENT, {"signature": "ab" * 32}),
        (EVENT, {"role": "bins-0a", "metadata_version": 7}),
        (EVENT, {}),
    ],
)
def test_evolve_is_replace(value: object, changes: dict[str, object]) -> None:
    got = evolve(value, **changes)
    assert got == dataclasses.replace(value, **changes)  # type: ignore[type-var]
    assert got is not value and type(got) is type(value)
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.role = "x"  # type: ignore[attr-defined, misc]


def test_evolve_refuses_an_unknown_field() -> None:
    with pytest.raises(TypeError, match="no field"):
        evolve(EVENT, rolee="x")


def test_evolve_of_a_role_state() -> None:
    state = RoleState(**{f.name: _sample(str(f.type)) for f in dataclasses.fields(RoleState)})
    assert evolve(state, audit_seq=9) == dataclasses.replace(state, audit_seq=9)


@dataclasses.dataclass(frozen=True)
class _Cached:
    x: int

    @cached_property
    def double(self) -> int:
        return 2 * self.x


@dataclasses.dataclass(frozen=True)
class _Checked:
    x: int

    def __post_init__(self) -> None:
        if self.x < 0:
            raise ValueError("negative")


@dataclasses.dataclass
class _Slotted:
    __slots__ = ("x",)
    x: int


def test_evolve_falls_back_where_copying_would_be_wrong() -> None:
    cached = _Cached(1)
    assert cached.double == 2
    assert evolve(cached, x=5).double == 10  # not the stale cached value
    with pytest.raises(ValueError, match="negative"):
        evolve(_Checked(1), x=-1)  # __post_init__ still runs
    assert evolve(_Slotted(1), x=2).x == 2


def _sample(kind: str) -> object:
    return 3 if "int" in kind else "x"
