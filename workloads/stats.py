"""Summary statistics of a trace, and its distance to a reference trace.

Percentiles are numpy's default (linear interpolation), the same definition the calibration's reference
figures use, so a synthetic trace and the real file are compared like for like. The arrival rate is
(n - 1) / (last - first arrival) and the CV is std / mean of the gaps between consecutive arrivals (both
None for an offline trace). The Kolmogorov-Smirnov distance is the largest gap between the two samples'
empirical CDFs (0 = same distribution, 1 = disjoint), computed with numpy (scipy is not a dependency).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from workloads.trace import Trace


@dataclass(frozen=True)
class LengthStats:
    mean: float
    p50: float
    p90: float
    p99: float
    max: int


@dataclass(frozen=True)
class TraceStats:
    """What `nanotune trace --stats` prints; `as_dict()` is its JSON form."""

    count: int
    prompt_len: LengthStats | None
    output_len: LengthStats | None
    rate: float | None
    cv: float | None
    ks: dict[str, float] | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def length_stats(values: np.ndarray) -> LengthStats | None:
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return None
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return LengthStats(float(values.mean()), float(p50), float(p90), float(p99), int(values.max()))


def arrival_stats(arrivals: np.ndarray) -> tuple[float | None, float | None]:
    """(rate in requests/s, CV of inter-arrival gaps); None where undefined (offline, too few requests)."""
    times = np.sort(np.asarray(arrivals, dtype=np.float64))
    if len(times) < 2 or times[-1] <= times[0]:
        return None, None
    rate = float((len(times) - 1) / (times[-1] - times[0]))
    gaps = np.diff(times)
    cv = float(gaps.std() / gaps.mean()) if len(gaps) >= 2 else None
    return rate, cv


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic sup |F_a - F_b| (exact with ties: both ECDFs are evaluated
    at every observed value, right-continuous)."""
    a = np.sort(np.asarray(a, dtype=np.float64))
    b = np.sort(np.asarray(b, dtype=np.float64))
    if len(a) == 0 or len(b) == 0:
        raise ValueError("ks_distance needs two non-empty samples")
    points = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, points, side="right") / len(a)
    cdf_b = np.searchsorted(b, points, side="right") / len(b)
    return float(np.max(np.abs(cdf_a - cdf_b)))


def trace_stats(trace: Trace, reference: Trace | None = None) -> TraceStats:
    """Statistics of `trace`, with the KS distance of its lengths to `reference` when one is given."""
    rate, cv = arrival_stats(trace.arrivals)
    ks = None
    if reference is not None and len(trace) and len(reference):
        ks = {
            "prompt_len": ks_distance(trace.prompt_lens, reference.prompt_lens),
            "output_len": ks_distance(trace.output_lens, reference.output_lens),
        }
    return TraceStats(
        count=len(trace),
        prompt_len=length_stats(trace.prompt_lens),
        output_len=length_stats(trace.output_lens),
        rate=rate,
        cv=cv,
        ks=ks,
    )
