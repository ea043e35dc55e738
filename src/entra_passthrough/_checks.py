"""Checks of configured values shared by every constructor: a duration in seconds and a count.

A wrong value is a ``ConfigurationError`` with a fix when the object is built, never a bare
``TypeError``/``ValueError`` from a comparison at the first request, and never NaN, infinity or
a negative number taken silently. Imports nothing of the library but its errors, so that every
module can use them at import time.
"""

from __future__ import annotations

import math

from ._errors import ConfigurationError


def seconds(value: object, *, what: str, low: float, high: float, above_low: bool = False) -> float:
    """A configured duration: a finite number (not a bool) from ``low`` to ``high`` (above
    ``low`` when ``above_low``), else a ``ConfigurationError`` naming ``what`` (a string such as
    ``"60"`` used to end in a ``TypeError``, NaN was accepted)."""
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
    if (
        number is None
        or not math.isfinite(number)
        or number < low
        or number > high
        or (above_low and number == low)
    ):
        bound = "above" if above_low else "at least"
        upper = "" if math.isinf(high) else f" and at most {high:g}"
        raise ConfigurationError(
            f"{what} must be a number of seconds, {bound} {low:g}{upper}.",
            fix=f"pass {what}= a number of seconds in that range (an int or a float).",
        )
    return float(number)


def whole_number(value: object, *, what: str, low: int, high: int | None = None, fix: str) -> int:
    """A configured count (entries, connections, tenants, retries): an ``int`` (not a bool)
    from ``low`` to ``high``, else a ``ConfigurationError`` naming ``what``. A string such as
    ``"10"`` used to end in a ``TypeError`` from a comparison, and a float such as ``2.5`` or
    a count of 0 was kept until the first request that used it."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 1e6 is a whole number (and was taken before these checks)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(
            f"{what} must be a whole number, not {type(value).__name__}.", fix=fix
        )
    if value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise ConfigurationError(f"{what} must be {bounds}, not {value}.", fix=fix)
    return value
