"""Arrival processes: measured rate and inter-arrival CV within tolerance, replay, and option resolution."""

from __future__ import annotations

import math

import numpy as np
import pytest

from workloads import (
    Trace,
    TraceError,
    TraceRequest,
    arrival_stats,
    assign_arrivals,
    burstiness_from_cv,
    generate,
    resolve_arrivals,
)
from workloads.arrivals import gamma, poisson, replay

N = 20_000  # gaps: the rate's relative standard error is about CV / sqrt(N), under 1.5% for CV 2


def test_poisson_rate_and_cv():
    times = poisson(N, 8.0, np.random.default_rng(0))
    rate, cv = arrival_stats(times)
    assert times[0] == 0 and np.all(np.diff(times) >= 0)
    assert rate == pytest.approx(8.0, rel=0.03)
    assert cv == pytest.approx(1.0, rel=0.03)


@pytest.mark.parametrize("burstiness", [0.25, 0.5, 2.0, 4.0])
def test_gamma_rate_and_cv_follow_burstiness(burstiness):
    rate, cv = arrival_stats(gamma(N, 3.0, burstiness, np.random.default_rng(1)))
    assert rate == pytest.approx(3.0, rel=0.05)
    assert cv == pytest.approx(1 / math.sqrt(burstiness), rel=0.05)


def test_burstiness_from_cv_round_trips():
    assert burstiness_from_cv(2.0) == pytest.approx(0.25)
    _, cv = arrival_stats(gamma(N, 1.0, burstiness_from_cv(1.1), np.random.default_rng(2)))
    assert cv == pytest.approx(1.1, rel=0.05)


def test_replay_scales_relative_to_first():
    assert replay(np.array([10.0, 12.0, 11.0]), 0.5).tolist() == [0.0, 1.0, 0.5]


def timed_trace() -> Trace:
    return Trace([TraceRequest(t, 10 + i, 5) for i, t in enumerate([0.0, 2.0, 3.0, 7.0])], {"source": "unit"})


def test_assign_arrivals_keeps_lengths_and_records_meta():
    trace = generate("lmsys", 3000, 5)
    timed = assign_arrivals(trace, "gamma", rate=10.0, burstiness=0.5, seed=5)
    assert timed.prompt_lens.tolist() == trace.prompt_lens.tolist()
    assert timed.output_lens.tolist() == trace.output_lens.tolist()
    assert timed.meta["arrivals"] == {"mode": "gamma", "rate": 10.0, "burstiness": 0.5, "seed": 5}
    assert trace.meta["arrivals"] == {"mode": "offline"} and not trace.is_timed  # the input is untouched
    again = assign_arrivals(trace, "gamma", rate=10.0, burstiness=0.5, seed=5)
    assert again.arrivals.tolist() == timed.arrivals.tolist()  # seeded
    other = assign_arrivals(trace, "gamma", rate=10.0, burstiness=0.5, seed=6)
    assert other.arrivals.tolist() != timed.arrivals.tolist()
    assert assign_arrivals(timed, "offline").arrivals.tolist() == [0.0] * len(trace)


def test_replay_mode_scales_file_timestamps():
    scaled = assign_arrivals(timed_trace(), "replay", scale=2.0)
    assert scaled.arrivals.tolist() == [0.0, 4.0, 6.0, 14.0]
    assert scaled.meta["arrivals"] == {"mode": "replay", "scale": 2.0}


def test_unknown_mode_and_bad_rate():
    with pytest.raises(TraceError, match="unknown arrival mode 'burst'"):
        assign_arrivals(timed_trace(), "burst")
    with pytest.raises(TraceError, match="rate must be a positive finite number, got -1"):
        assign_arrivals(timed_trace(), "poisson", rate=-1)
    with pytest.raises(TraceError, match="arrivals 'poisson' need a rate"):
        assign_arrivals(timed_trace(), "poisson")


def test_resolve_defaults_keep_timestamps_or_offline():
    assert resolve_arrivals(timed_trace()).arrivals.tolist() == [0.0, 2.0, 3.0, 7.0]
    offline = generate("constant", 4, 0)
    assert not resolve_arrivals(offline).is_timed
    assert resolve_arrivals(timed_trace(), time_scale=0.5).arrivals.tolist() == [0.0, 1.0, 1.5, 3.5]
    assert not resolve_arrivals(timed_trace(), offline=True).is_timed
    assert not resolve_arrivals(timed_trace(), rate="inf").is_timed


def test_resolve_rate_numbers_and_measured():
    trace = generate("splitwise", N, 0)
    poisson_trace = resolve_arrivals(trace, rate="4", seed=1)
    assert poisson_trace.meta["arrivals"]["mode"] == "poisson"
    measured = {"rate": 5.5, "cv": 1.1}
    real_like = resolve_arrivals(trace, rate="measured", measured=measured, seed=1)
    rate, cv = arrival_stats(real_like.arrivals)
    assert rate == pytest.approx(5.5, rel=0.05) and cv == pytest.approx(1.1, rel=0.05)
    assert real_like.meta["arrivals"]["burstiness"] == pytest.approx(burstiness_from_cv(1.1))
    regular = resolve_arrivals(trace, rate="measured", burstiness=4.0, measured=measured, seed=1)
    assert arrival_stats(regular.arrivals)[1] == pytest.approx(0.5, rel=0.05)  # burstiness given wins


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rate": 2.0, "offline": True}, "arrival options rate and offline are alternatives"),
        ({"rate": 2.0, "time_scale": 2.0}, "arrival options rate and time_scale are alternatives"),
        ({"burstiness": 0.5}, "burstiness shapes a rate"),
        ({"rate": "measured"}, "rate 'measured': this source has no real timestamps"),
        ({"rate": "fast"}, "rate: expected requests per second, 'measured' or 'inf', got 'fast'"),
        ({"rate": "0"}, "rate must be a positive finite number"),
        ({"rate": 2.0, "burstiness": 0.0}, "burstiness must be a positive finite number"),
    ],
)
def test_resolve_rejects_contradictions(options, message):
    with pytest.raises(TraceError, match=message.replace("(", r"\(")):
        resolve_arrivals(generate("constant", 10, 0), **options)


def test_time_scale_needs_timestamps():
    with pytest.raises(TraceError, match="no timestamps to scale"):
        resolve_arrivals(generate("constant", 10, 0), time_scale=2.0)


def test_arrival_stats_undefined_cases():
    assert arrival_stats(np.zeros(5)) == (None, None)
    assert arrival_stats(np.array([1.0])) == (None, None)
    assert arrival_stats(np.array([0.0, 2.0])) == (0.5, None)
