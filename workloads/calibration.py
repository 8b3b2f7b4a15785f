"""Length distributions calibrated to real traces, and how the synthetic datasets draw from them.

Method (built once by `scripts/calibrate_traces.py`, shipped as `workloads/data/calibration.json`):

- **Marginals**: each of prompt and output length is stored as its empirical quantile function at ~1,200
  probability levels: every 0.1% up to p99, every 0.01% up to p99.9, every 0.001% above (the tail is where
  the mean of ShareGPT lives: one 241k-token prompt in 58,787 moves the mean by 4 tokens). Quantiles use
  Hazen's plotting positions ((i + 0.5) / N), whose piecewise-linear interpolant integrates to exactly the
  sample mean, so draws reproduce the mean as well as the percentiles.
- **Dependence**: a 32 x 32 empirical copula, i.e. the joint counts of (prompt rank bin, output rank bin)
  with ties broken at random (seeded). It keeps the prompt/output correlation (ShareGPT's Spearman rho is
  about 0.15, LMSYS's 0.22) that independent marginals would lose.

Drawing n requests: n (u, v) pairs come from the copula (a cell by its count, then uniform inside the
cell); the prompt lengths are a *stratified* sample of the marginal (one draw in each 1/n slice of
probability), handed out in the order of the u ranks, and the same for outputs with v. Stratifying is
what makes 10,000 draws match the reference mean/p50/p90/p99 within a few percent for (nearly) any
seed: independent draws of ShareGPT prompts give a mean anywhere from 268 to 354 (reference 299) and a
p99 off by up to 8%. Each request's lengths still follow the reference marginals; only their spread
across the sample is tighter than independent sampling would give. What remains is the top slice: for
ShareGPT prompts its one draw lands anywhere between 37k and 241k tokens, so over 2,000 seeds the
10,000-draw prompt mean fell between -2.5% and +5.1% of the reference (1 seed in 2,000 beyond 5%).
Over 100 seeds every other figure (mean, p50, p90, p99 of the three datasets) stayed within 1%.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import numpy as np

from workloads.errors import TraceError

COPULA_GRID = 32
"""Rank bins per axis of the embedded copula: 32 keeps the shape of the dependence with 1k cells."""


def probability_levels() -> np.ndarray:
    """Levels at which marginal quantiles are stored: dense in the tail, where the mean is decided."""
    body = np.arange(0, 991) / 1000  # 0 .. 0.990 by 0.001
    tail = 0.99 + np.arange(1, 91) / 10_000  # .. 0.999 by 0.0001
    extreme = 0.999 + np.arange(1, 101) / 100_000  # .. 1.0 by 0.00001
    return np.round(np.concatenate([body, tail, extreme]), 6)


def length_summary(values: np.ndarray) -> dict:
    """count, mean, p50, p90, p99, max (numpy's default linear percentiles, as `workloads.stats` uses)."""
    values = np.asarray(values, dtype=np.float64)
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {
        "mean": round(float(values.mean()), 3),
        "p50": round(float(p50), 3),
        "p90": round(float(p90), 3),
        "p99": round(float(p99), 3),
        "max": int(values.max()),
    }


def build_marginal(values: np.ndarray, levels: np.ndarray) -> list[float]:
    """Hazen quantiles of `values` at `levels`, rounded to 0.01 token."""
    quantiles = np.quantile(np.asarray(values, dtype=np.float64), levels, method="hazen")
    return [round(float(q), 2) for q in quantiles]


def rank_bins(values: np.ndarray, grid: int, rng: np.random.Generator) -> np.ndarray:
    """Bin index 0..grid-1 of each value's rank, ties broken at random so that every bin holds N/grid."""
    order = np.lexsort((rng.random(len(values)), values))
    ranks = np.empty(len(values), dtype=np.int64)
    ranks[order] = np.arange(len(values))
    return ranks * grid // len(values)


def build_copula(prompt: np.ndarray, output: np.ndarray, grid: int = COPULA_GRID, seed: int = 0) -> list:
    """Joint counts of (prompt rank bin, output rank bin): grid x grid integers summing to N."""
    rng = np.random.default_rng(seed)
    rows, cols = rank_bins(prompt, grid, rng), rank_bins(output, grid, rng)
    counts = np.zeros((grid, grid), dtype=np.int64)
    np.add.at(counts, (rows, cols), 1)
    return counts.tolist()


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties), used to check the copula keeps dependence."""

    def ranks(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        order = np.argsort(x, kind="stable")
        sorted_x = x[order]
        first = np.r_[True, sorted_x[1:] != sorted_x[:-1]]
        group = np.cumsum(first) - 1
        starts = np.flatnonzero(first)
        ends = np.r_[starts[1:], len(x)]
        average = (starts + ends - 1) / 2
        out = np.empty(len(x))
        out[order] = average[group]
        return out

    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def build_dataset(prompt: np.ndarray, output: np.ndarray, arrivals: np.ndarray | None, source: dict) -> dict:
    """Everything the package keeps about one reference trace (see the module docstring for the method)."""
    prompt, output = np.asarray(prompt), np.asarray(output)
    levels = probability_levels()
    entry = {
        "source": source,
        "reference": {
            "count": int(len(prompt)),
            "prompt_len": length_summary(prompt),
            "output_len": length_summary(output),
            "spearman": round(spearman(prompt, output), 4),
        },
        "prompt_len": build_marginal(prompt, levels),
        "output_len": build_marginal(output, levels),
        "copula": build_copula(prompt, output),
        "arrivals": None,
    }
    if arrivals is not None and np.ptp(arrivals) > 0:
        gaps = np.diff(np.sort(arrivals))
        entry["arrivals"] = {
            "rate": round(float((len(arrivals) - 1) / np.ptp(arrivals)), 4),
            "cv": round(float(gaps.std() / gaps.mean()), 4),
            "duration_s": round(float(np.ptp(arrivals)), 3),
        }
    return entry


@lru_cache(maxsize=1)
def load_calibration() -> dict:
    """The embedded calibration (read-only; cached because every calibrated draw needs it)."""
    text = resources.files("workloads").joinpath("data/calibration.json").read_text(encoding="utf-8")
    return json.loads(text)


def calibrated_names() -> tuple[str, ...]:
    return tuple(load_calibration()["datasets"])


def dataset_entry(name: str) -> dict:
    datasets = load_calibration()["datasets"]
    if name not in datasets:
        raise TraceError(f"no calibration for dataset '{name}': expected one of {', '.join(datasets)}")
    return datasets[name]


def sample_lengths(name: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n (prompt_len, output_len) pairs drawn as the module docstring describes."""
    entry = dataset_entry(name)
    levels = np.asarray(load_calibration()["levels"], dtype=np.float64)
    counts = np.asarray(entry["copula"], dtype=np.float64)
    grid = counts.shape[0]
    cells = rng.choice(grid * grid, size=n, p=(counts / counts.sum()).ravel())
    u = (cells // grid + rng.random(n)) / grid
    v = (cells % grid + rng.random(n)) / grid
    prompt = _stratified(np.asarray(entry["prompt_len"]), levels, n, rng)
    output = _stratified(np.asarray(entry["output_len"]), levels, n, rng)
    return prompt[_ranks(u)], output[_ranks(v)]


def _stratified(quantiles: np.ndarray, levels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """One draw per probability slice [k/n, (k+1)/n), ascending; rounded to whole tokens, at least 1."""
    u = (np.arange(n) + rng.random(n)) / n
    return np.maximum(np.rint(np.interp(u, levels, quantiles)), 1).astype(np.int64)


def _ranks(x: np.ndarray) -> np.ndarray:
    ranks = np.empty(len(x), dtype=np.int64)
    ranks[np.argsort(x, kind="stable")] = np.arange(len(x))
    return ranks
