"""Synthetic generators: statistics against the real reference traces, determinism, parameters, filters.

The reference traces live outside the repository (../shared/traces); tests that need them skip with a
reason when that folder is absent, the package itself never reads it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from workloads import (
    TraceError,
    apply_filter,
    arrival_stats,
    generate,
    ks_distance,
    length_range,
    measured_arrivals,
    read_trace,
    trace_stats,
)
from workloads.calibration import load_calibration, spearman

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "shared" / "traces"
CALIBRATED = ("sharegpt", "lmsys", "splitwise")
needs_reference = pytest.mark.skipif(
    not REFERENCE_DIR.is_dir(), reason=f"reference traces not found at {REFERENCE_DIR}"
)


@pytest.fixture(scope="module")
def reference():
    """name -> Trace of the real file, read once per module."""
    return {name: read_trace(REFERENCE_DIR / f"{name}.csv") for name in CALIBRATED}


def within(value: float, target: float, rel: float = 0.05, abs_tokens: float = 2.0) -> bool:
    """The issue's criterion: within 5% of the reference, or 2 tokens where 5% is less."""
    return abs(value - target) <= max(rel * abs(target), abs_tokens)


@needs_reference
@pytest.mark.parametrize("name", CALIBRATED)
@pytest.mark.parametrize("seed", [1, 2])
def test_calibrated_matches_reference_file(reference, name, seed):
    synthetic = trace_stats(generate(name, 10_000, seed))
    real = trace_stats(reference[name])
    for side in ("prompt_len", "output_len"):
        for key in ("mean", "p50", "p90", "p99"):
            got, want = getattr(getattr(synthetic, side), key), getattr(getattr(real, side), key)
            assert within(got, want), f"{name} seed {seed} {side} {key}: {got:.1f} vs reference {want:.1f}"


@needs_reference
@pytest.mark.parametrize("name", CALIBRATED)
def test_calibrated_distribution_and_correlation(reference, name):
    """Beyond four figures: whole-distribution distance and the prompt/output rank correlation."""
    trace, real = generate(name, 10_000, 3), reference[name]
    assert ks_distance(trace.prompt_lens, real.prompt_lens) < 0.02
    assert ks_distance(trace.output_lens, real.output_lens) < 0.02
    rho_real = spearman(real.prompt_lens, real.output_lens)
    assert abs(spearman(trace.prompt_lens, trace.output_lens) - rho_real) < 0.05


@needs_reference
@pytest.mark.parametrize("name", CALIBRATED)
def test_filter_keeps_joint_shape(reference, name):
    """vLLM's rule looks at prompt + output jointly: the copula must keep what the file keeps."""
    real = apply_filter(reference[name], "vllm")
    trace = generate(name, 10_000, 4, filter="vllm")
    keep_real = len(real) / len(reference[name])
    keep_synthetic = len(trace) / (len(trace) + trace.meta["filter"]["dropped"])
    assert abs(keep_synthetic - keep_real) < 0.05 * keep_real
    for side in ("prompt_lens", "output_lens"):
        assert within(getattr(trace, side).mean(), getattr(real, side).mean())


@needs_reference
def test_embedded_calibration_is_what_the_script_derives():
    """workloads/data/calibration.json must be regenerated when the method or the files change."""
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "scripts" / "calibrate_traces.py"
    spec = importlib.util.spec_from_file_location("calibrate_traces", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fresh = json.loads(module.dumps(module.calibrate(REFERENCE_DIR)))
    assert fresh == load_calibration()


@needs_reference
def test_splitwise_measured_arrivals_match_file(reference):
    rate, cv = arrival_stats(reference["splitwise"].arrivals)
    measured = measured_arrivals("splitwise")
    assert measured["rate"] == pytest.approx(rate, rel=1e-3)
    assert measured["cv"] == pytest.approx(cv, rel=1e-3)
    assert measured_arrivals("sharegpt") is None  # its timestamps are XXX


def test_calibration_is_small_and_self_describing():
    path = Path(__file__).resolve().parents[1] / "workloads" / "data" / "calibration.json"
    assert path.stat().st_size < 200_000
    document = load_calibration()
    levels = np.asarray(document["levels"])
    assert levels[0] == 0 and levels[-1] == 1 and np.all(np.diff(levels) > 0)
    for name in CALIBRATED:
        entry = document["datasets"][name]
        for side in ("prompt_len", "output_len"):
            assert len(entry[side]) == len(levels) and np.all(np.diff(entry[side]) >= 0)
        assert np.asarray(entry["copula"]).sum() == entry["source"]["rows"]


@pytest.mark.parametrize("name", ["constant", "random", *CALIBRATED])
def test_same_seed_same_trace_other_seed_other_trace(name):
    params = {"range_ratio": 0.5} if name == "random" else {}
    a, b = generate(name, 500, 7, **params), generate(name, 500, 7, **params)
    assert a.requests == b.requests and a.meta == b.meta
    if name != "constant":
        assert generate(name, 500, 8, **params).requests != a.requests


def test_meta_records_provenance():
    trace = generate("sharegpt", 100, 5, filter="max-len:512")
    meta = trace.meta
    assert meta["generator"] == "sharegpt" and meta["seed"] == 5 and meta["count"] == 100
    assert meta["filter"]["spec"] == "max-len:512"
    assert meta["params"]["calibration"]["file"] == "sharegpt.csv"
    assert "sharegpt.csv" in meta["source"]
    assert meta["arrivals"] == {"mode": "offline"}
    assert all(r.arrival_s == 0 for r in trace.requests)


def test_constant():
    trace = generate("constant", 50, 0, input_len=300, output_len=20)
    assert set(trace.prompt_lens) == {300} and set(trace.output_lens) == {20}
    assert trace.meta["params"] == {"input_len": 300, "output_len": 20}


@pytest.mark.parametrize(
    ("style", "ratio", "low", "high"),
    [
        ("vllm", 0.5, 500, 1500),
        ("vllm", 0.0, 1000, 1000),
        ("sglang", 0.5, 500, 1000),
        ("sglang", 0.0, 1, 1000),
    ],
)
def test_random_range_conventions(style, ratio, low, high):
    assert length_range(1000, ratio, style) == (low, high)
    trace = generate(
        "random", 20_000, 0, input_len=1000, output_len=1000, range_ratio=ratio, range_style=style
    )
    for lens in (trace.prompt_lens, trace.output_lens):
        assert lens.min() == low and lens.max() == high  # both ends reached: inclusive range
        assert lens.mean() == pytest.approx((low + high) / 2, rel=0.02)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"range_ratio": 1.0}, "range_ratio must be in [0, 1) with range_style vllm"),
        ({"range_ratio": 1.5, "range_style": "sglang"}, "range_ratio must be in [0, 1]"),
        ({"range_style": "trt"}, "unknown range_style 'trt'"),
        ({"input_len": 0}, "must be a positive integer"),
        ({"prefix_len": 3}, "does not take prefix_len"),
    ],
)
def test_random_rejects_bad_parameters(params, message):
    with pytest.raises(TraceError, match=re.escape(message)):
        generate("random", 10, 0, **params)


def test_unknown_dataset_and_calibrated_parameters():
    with pytest.raises(
        TraceError, match="unknown dataset 'alpaca': expected one of constant, random, sharegpt"
    ):
        generate("alpaca", 10, 0)
    with pytest.raises(TraceError, match="dataset 'lmsys' does not take input_len"):
        generate("lmsys", 10, 0, input_len=5)


def test_generator_filters_reach_n_and_count():
    vllm = generate("sharegpt", 2000, 0, filter="vllm")
    p, o = vllm.prompt_lens, vllm.output_lens
    assert len(vllm) == 2000 and vllm.meta["filter"]["dropped"] > 0
    assert p.min() >= 4 and o.min() >= 4 and p.max() <= 1024 and (p + o).max() <= 2048
    capped = generate("sharegpt", 2000, 0, filter="max-len:1024")
    assert len(capped) == 2000 and (capped.prompt_lens + capped.output_lens).max() <= 1024
    assert capped.meta["filter"]["truncated"] > 0
    with pytest.raises(TraceError, match="filter 'vllm' keeps 0 of"):
        generate("constant", 10, 0, input_len=2000, filter="vllm")


def test_ks_distance():
    a = np.arange(100)
    assert ks_distance(a, a) == 0
    assert ks_distance(a, a + 1000) == 1
    assert ks_distance(np.array([1, 1, 2, 2]), np.array([1, 2, 2, 2])) == pytest.approx(0.25)  # ties
    shifted = ks_distance(
        np.random.default_rng(0).normal(size=4000), np.random.default_rng(1).normal(size=4000)
    )
    assert shifted < 0.05


@pytest.mark.parametrize("name", CALIBRATED)
def test_calibrated_matches_embedded_reference_figures(name):
    """Runs everywhere (CI has no ../shared): the reference file's figures, as calibrate_traces.py recorded
    them beside the quantile tables, against 10,000 fresh draws. The file-based test above checks that
    those recorded figures are the files' own."""
    want = load_calibration()["datasets"][name]["reference"]
    got = trace_stats(generate(name, 10_000, 11))
    for side in ("prompt_len", "output_len"):
        for key in ("mean", "p50", "p90", "p99"):
            g, w = getattr(getattr(got, side), key), want[side][key]
            assert within(g, w), f"{name} {side} {key}: {g:.1f} vs reference {w:.1f}"
