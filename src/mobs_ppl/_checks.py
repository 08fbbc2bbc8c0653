"""Checks of user arguments: counts, tolerances, seeds and choices.

The one owner of these rules: :func:`mobs_ppl.fit_map`, :func:`mobs_ppl.sample`,
:func:`mobs_ppl.laplace` and the Newton optimiser call them, so that every bad value
gives the same kind of message (the argument, the value, what to give instead).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection


def check_int(name: str, value, minimum: int | None = None) -> int:
    """``value`` as an ``int``, or ``TypeError`` / ``ValueError`` naming ``name``.

    Parameters
    ----------
    name : str
        The argument's name, for the message.
    value : object
        An integer, Python or NumPy, or a float holding a whole number (``100.0``);
        not ``bool``.
    minimum : int, optional
        Smallest accepted value.
    """
    whole = isinstance(value, numbers.Integral) or (
        isinstance(value, numbers.Real) and math.isfinite(value) and value == int(value)
    )
    if isinstance(value, bool) or not whole:
        raise TypeError(f"{name} must be a whole number (int); got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}; got {value}")
    return value


def check_positive(name: str, value, allow_zero: bool = False) -> float:
    """``value`` as a finite positive ``float``, or an error naming ``name``.

    ``allow_zero`` accepts zero too.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and (value > 0 or (allow_zero and value == 0))):
        wanted = "zero or positive" if allow_zero else "positive"
        raise ValueError(f"{name} must be {wanted} and finite; got {value}")
    return value


def check_probability(name: str, value) -> float:
    """``value`` as a ``float`` strictly between 0 and 1, or an error naming ``name``."""
    value = check_positive(name, value)
    if not value < 1:
        raise ValueError(f"{name} must lie strictly between 0 and 1; got {value}")
    return value


def check_choice(name: str, value, choices: Collection[str]) -> str:
    """``value`` if it is one of ``choices``, else ``ValueError`` listing them."""
    if not isinstance(value, str) or value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {listed}; got {value!r}")
    return value
