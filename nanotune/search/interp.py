"""Interpolation over profiled points: an op's time against its size, and against its SM budget.

Kernel times grow sub-linearly at small sizes (launch- and weight-bound) and linearly at large ones
(compute- or bandwidth-bound), so straight lines in log-log space between measured neighbours follow
both regimes. Outside the measured range we refuse to invent curvature:
- below the smallest point the time stays at that point's (a kernel never gets faster than its floor);
- above the largest point it grows in proportion to the size (throughput-bound, no further gains).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence


def curve(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sorted (size, ms) with duplicate sizes averaged (repeats of one point) and non-positive ones dropped."""
    acc: dict[float, list[float]] = {}
    for x, y in points:
        if x > 0 and y > 0:
            acc.setdefault(float(x), []).append(float(y))
    return sorted((x, sum(ys) / len(ys)) for x, ys in acc.items())


def interp_loglog(pts: Sequence[tuple[float, float]], x: float) -> float:
    """Time at size x from a curve(); 0 for an empty op (the executor skips rows it has none of)."""
    if x <= 0:
        return 0.0
    if not pts:
        raise ValueError("no points to interpolate")
    xs = [p[0] for p in pts]
    if x <= xs[0]:
        return pts[0][1]
    if x >= xs[-1]:
        return pts[-1][1] * x / xs[-1]
    i = bisect.bisect_left(xs, x)
    (x0, y0), (x1, y1) = pts[i - 1], pts[i]
    if x == x1:
        return y1
    w = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
    return math.exp(math.log(y0) + w * (math.log(y1) - math.log(y0)))


def interp_budget(times: dict[int, float], budget: int | None, num_sms: int) -> float:
    """Time at an SM budget from the times measured at several budgets (the same size at each).

    `times` maps a budget (programs) to ms, with the whole GPU (no budget) under key 0. A budget that was
    measured is used as is; one between two measured budgets is interpolated linearly; one below the
    smallest scales as 1/budget (a bandwidth-bound kernel's rate is its bytes in flight, i.e. its
    programs; the kernel check on an H200 saw 16 -> 33 -> 66 programs halve the time each step); one
    above the largest numeric budget moves toward the whole-GPU time at num_sms.
    """
    full = times.get(0)
    if budget is None:
        return full if full is not None else times[max(times)]  # else the largest budget: nearest to all
    if budget in times:
        return times[budget]
    anchors = sorted((b, t) for b, t in times.items() if b > 0)
    if full is not None and (not anchors or anchors[-1][0] < num_sms):
        anchors.append((num_sms, full))
    if budget <= anchors[0][0]:
        b0, t0 = anchors[0]
        return t0 * b0 / budget
    if budget >= anchors[-1][0]:
        return anchors[-1][1]
    bs = [b for b, _ in anchors]
    i = bisect.bisect_left(bs, budget)
    (b0, t0), (b1, t1) = anchors[i - 1], anchors[i]
    return t0 + (t1 - t0) * (budget - b0) / (b1 - b0)
