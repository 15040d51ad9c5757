"""Argument checks every layer shares: one wording for the errors, whichever module raises them."""

from __future__ import annotations

from numbers import Real


def check_positive_int(name: str, value) -> None:
    """TypeError unless `value` is an int (bools refused), ValueError unless it is > 0."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value}")


def check_probability(name: str, p) -> None:
    """ValueError unless `p` is a number in [0, 1) (a dropout rate)."""
    if isinstance(p, bool) or not isinstance(p, Real) or not 0.0 <= p < 1.0:
        raise ValueError(f"{name}: expected a probability in [0, 1), got {p!r}")
