"""t quantiles, confidence intervals and repeat aggregation (no scipy)."""

import statistics

import numpy as np
import pytest

from nanotune.bench.stats import aggregate_runs, ci95_half_width, percentile, summarize, t_quantile_975


def test_t_table_and_expansion_agree():
    assert t_quantile_975(1) == pytest.approx(12.7062, abs=1e-4)
    assert t_quantile_975(4) == pytest.approx(2.7764, abs=1e-4)
    # beyond the table: the expansion; continuous with the table at its end, -> z as df grows
    assert t_quantile_975(31) == pytest.approx(2.0395, abs=2e-4)
    assert t_quantile_975(60) == pytest.approx(2.0003, abs=2e-4)
    assert t_quantile_975(120) == pytest.approx(1.9799, abs=2e-4)
    assert t_quantile_975(10**6) == pytest.approx(1.95996, abs=1e-4)
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_ci95_hand_computed():
    values = [10.0, 12.0, 14.0]  # mean 12, sample sd 2, n 3 -> 4.3027 * 2 / sqrt(3)
    assert ci95_half_width(values) == pytest.approx(4.3027 * 2 / 3**0.5, rel=1e-4)
    assert ci95_half_width([1.0]) is None


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 99, 100])
def test_percentile_is_numpy_linear(q):
    v = sorted([3.0, 1.0, 4.0, 1.5, 9.0, 2.6])
    assert percentile(v, q) == pytest.approx(np.percentile(v, q))


def test_summarize_keys_and_scale():
    s = summarize([0.1, 0.2, 0.3], "ttft_ms", (50, 99), scale=1e3)
    assert s["mean_ttft_ms"] == pytest.approx(200) and s["p99_ttft_ms"] == pytest.approx(298)
    assert s["std_ttft_ms"] == pytest.approx(statistics.pstdev([100, 200, 300]))
    assert set(summarize([], "x", (99,))) == {"mean_x", "median_x", "std_x", "p99_x"}


def test_aggregate_runs():
    runs = [
        {"tput": 10.0, "n": 5, "name": "a", "x": None},
        {"tput": 12.0, "n": 5, "name": "a", "x": 1.0},
        {"tput": 14.0, "n": 5, "name": "a", "x": 2.0},
    ]
    mean, ci = aggregate_runs(runs)
    assert mean["tput"] == pytest.approx(12.0) and mean["n"] == 5 and mean["name"] == "a"
    assert ci["tput"] == pytest.approx(4.3027 * 2 / 3**0.5, rel=1e-4) and ci["n"] == 0
    assert mean["x"] is None  # not numeric in every run: no mean made up
    one, ci1 = aggregate_runs(runs[:1])
    assert one == runs[0] and ci1["tput"] is None
