"""Request rates in result files. JSON has no infinity, and `inf` (everything at once) is a rate users
sweep (`--sweep-rate 2,8,inf`): it is written as the string "inf" and read back as float('inf')."""

from __future__ import annotations

import math


def rate_json(rate):
    """float('inf') -> 'inf'; other values unchanged (None stays None: offline or the trace's times)."""
    return "inf" if isinstance(rate, float) and math.isinf(rate) and rate > 0 else rate


def rate_value(rate) -> float | None:
    """What rate_json wrote (a number, 'inf', or null) back as a float or None; anything else is None."""
    if rate is None:
        return None
    try:
        v = float(rate)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def rate_text(rate) -> str:
    v = rate_value(rate)
    return "-" if v is None else ("inf" if math.isinf(v) else f"{v:g}")
