"""The one backoff policy of the key backends (PKCS#11 startup, KMS retries and polling)."""

from __future__ import annotations

import pytest

from tuf_signer.keys._backoff import Backoff


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [
        pytest.param(1, 0.05, id="first"),
        pytest.param(2, 0.1, id="doubled"),
        pytest.param(5, 0.8, id="fifth"),
        pytest.param(6, 1.0, id="capped"),
        pytest.param(50, 1.0, id="stays-capped"),
    ],
)
def test_delays_double_up_to_the_maximum(attempt: int, expected: float) -> None:
    assert Backoff(jitter=0.0).delay(attempt) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("draw", "expected"),
    [
        pytest.param("low", 0.4, id="half"),
        pytest.param("high", 1.2, id="one-and-a-half"),
    ],
)
def test_jitter_scales_by_half_to_one_and_a_half(draw: str, expected: float) -> None:
    drawn: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        drawn.append((low, high))
        return low if draw == "low" else high

    assert Backoff(uniform=uniform).delay(5) == pytest.approx(expected)
    assert drawn == [(0.5, 1.5)]


def test_no_jitter_draws_nothing() -> None:
    def uniform(low: float, high: float) -> float:
        raise AssertionError("drawn")

    assert Backoff(first=0.05, maximum=2.0, jitter=0.0, uniform=uniform).delay(7) == 2.0
