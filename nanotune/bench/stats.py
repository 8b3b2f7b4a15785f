"""Small statistics without scipy: percentiles as numpy's default (linear), and the Student t quantile for
95% confidence intervals over `--repeat N` runs."""

from __future__ import annotations

import math
import statistics

# Two-sided 95% (i.e. the 0.975 quantile) of Student's t for 1..30 degrees of freedom.
_T975 = [12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
         2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
         2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423]
_Z975 = 1.959963984540054


def t_quantile_975(df: int) -> float:
    """Student t 0.975 quantile: the table up to 30 degrees of freedom, beyond it the Cornish-Fisher
    expansion around the normal quantile (error < 1e-4 from df = 30 on, where the two agree)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / df + g2 / df**2 + g3 / df**3


def ci95_half_width(values: list[float]) -> float | None:
    """Half-width of the 95% confidence interval of the mean (t-distribution, sample std); None for n < 2."""
    n = len(values)
    if n < 2:
        return None
    return t_quantile_975(n - 1) * statistics.stdev(values) / math.sqrt(n)


def percentile(sorted_values: list[float], q: float) -> float:
    """numpy.percentile(values, q) with its default linear interpolation (what vLLM reports)."""
    if not sorted_values:
        raise ValueError("percentile of an empty list")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(values: list[float], name: str, percentiles=(50, 90, 99), scale: float = 1.0) -> dict:
    """`mean_<name>`, `median_<name>`, `std_<name>` (population std, as numpy/vLLM) and `p<q>_<name>`;
    None for every key when there are no values (never a made-up 0)."""
    keys = ["mean", "median", "std"] + [f"p{q:g}" for q in percentiles]
    if not values:
        return {f"{k}_{name}": None for k in keys}
    v = sorted(x * scale for x in values)
    out = {f"mean_{name}": statistics.fmean(v), f"median_{name}": percentile(v, 50),
           f"std_{name}": statistics.pstdev(v)}
    out.update({f"p{q:g}_{name}": percentile(v, q) for q in percentiles})
    return out


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def aggregate_runs(runs: list[dict]) -> tuple[dict, dict]:
    """Across repeats of one benchmark: (mean of every numeric key present in all runs, 95% CI half-width
    per key). Non-numeric keys are taken from the first run."""
    if not runs:
        return {}, {}
    if len(runs) == 1:  # one run: its own values (integers stay integers), no interval
        return dict(runs[0]), dict.fromkeys(runs[0])
    mean, ci = {}, {}
    for key, first in runs[0].items():
        values = [r.get(key) for r in runs]
        if all(_is_number(v) for v in values):
            mean[key] = statistics.fmean(values)
            ci[key] = ci95_half_width(values)
        else:
            mean[key] = first if len(runs) == 1 or all(v == first for v in values) else None
    return mean, ci
