"""Arrival processes: when each request of a trace reaches the server.

- `offline`: everything at t = 0 (NanoFlow's and vLLM's offline throughput setting).
- `poisson` at `rate` requests/s: exponential gaps (coefficient of variation 1).
- `gamma` at `rate` with `burstiness` = the gamma shape k: gaps ~ Gamma(k, 1 / (rate * k)), mean
  1/rate, CV = 1/sqrt(k). k = 1 is Poisson, k < 1 burstier, k > 1 more regular (vLLM's --burstiness).
  A trace's measured CV converts to k = 1/CV^2 (Splitwise's CV 1.09 gives k = 0.84).
- `replay`: the trace's own timestamps, multiplied by `scale` (0.5 replays twice as fast).

`resolve_arrivals` maps command-line style options (a rate that may be "inf" or "measured", a burstiness,
a time scale, offline) onto these, so that every command reads them the same way.

The first request arrives at t = 0 in every process, so a trace of n requests spans n - 1 gaps and its
measured rate is (n - 1) / span. Arrival draws use their own random stream ([seed, 1]), so changing the
rate of a trace never changes its lengths.
"""

from __future__ import annotations

import math

import numpy as np

from workloads.errors import TraceError
from workloads.trace import Trace, TraceRequest

MODES = ("offline", "poisson", "gamma", "replay")


def offline(n: int) -> np.ndarray:
    return np.zeros(n)


def gamma(n: int, rate: float, burstiness: float, rng: np.random.Generator) -> np.ndarray:
    """n arrival times with Gamma(burstiness) gaps of mean 1/rate, the first at 0."""
    _check_positive("rate", rate)
    _check_positive("burstiness", burstiness)
    gaps = rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=max(n - 1, 0))
    return np.concatenate([[0.0], np.cumsum(gaps)])[:n]


def poisson(n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    return gamma(n, rate, 1.0, rng)


def replay(times: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """The given times, shifted to start at 0 and multiplied by scale."""
    _check_positive("time scale", scale)
    times = np.asarray(times, dtype=np.float64)
    return (times - times.min()) * scale if len(times) else times


def arrival_rng(seed: int) -> np.random.Generator:
    """The random stream of arrivals for a seed, separate from the stream of lengths."""
    return np.random.default_rng([seed, 1])


def assign_arrivals(
    trace: Trace,
    mode: str,
    *,
    rate: float | None = None,
    burstiness: float = 1.0,
    scale: float = 1.0,
    seed: int = 0,
) -> Trace:
    """A new trace whose requests arrive by `mode` (see the module docstring); meta["arrivals"] records it."""
    n = len(trace)
    if mode == "offline":
        times, record = offline(n), {"mode": "offline"}
    elif mode in ("poisson", "gamma"):
        if rate is None:
            raise TraceError(f"arrivals '{mode}' need a rate (requests per second)")
        shape = 1.0 if mode == "poisson" else burstiness
        times = gamma(n, rate, shape, arrival_rng(seed))
        record = {
            "mode": "poisson" if shape == 1.0 else "gamma",
            "rate": rate,
            "burstiness": shape,
            "seed": seed,
        }
    elif mode == "replay":
        # Replay sorts by the original times first, so that scaling never reorders requests.
        order = np.argsort(trace.arrivals, kind="stable")
        trace = Trace([trace.requests[i] for i in order], trace.meta)
        times, record = replay(trace.arrivals, scale), {"mode": "replay", "scale": scale}
    else:
        raise TraceError(f"unknown arrival mode '{mode}': expected one of {', '.join(MODES)}")
    requests = [
        TraceRequest(float(t), r.prompt_len, r.output_len, r.prompt_ids)
        for t, r in zip(times, trace.requests, strict=True)
    ]
    return Trace(requests, {**trace.meta, "arrivals": record})


def resolve_arrivals(
    trace: Trace,
    *,
    rate: str | float | None = None,
    burstiness: float | None = None,
    time_scale: float | None = None,
    offline: bool = False,
    seed: int = 0,
    measured: dict | None = None,
) -> Trace:
    """Arrival options as a command line gives them (`nanotune trace`, `bench`), resolved in one place.

    rate: requests/s; "inf" means offline; "measured" means the source's real process, `measured` =
    {"rate", "cv"}, as gamma arrivals with shape 1/cv^2 unless `burstiness` is given. `burstiness`
    alone is meaningless (it shapes a rate). `time_scale` replays the trace's timestamps faster or
    slower. With no option a timed trace keeps its timestamps and an offline one stays offline.
    """
    chosen = [name for name, value in (("rate", rate), ("time_scale", time_scale)) if value is not None]
    if offline:
        chosen.append("offline")
    if len(chosen) > 1:
        raise TraceError(f"arrival options {' and '.join(chosen)} are alternatives: give one")
    if burstiness is not None and rate is None:
        raise TraceError("burstiness shapes a rate: give a rate with it")
    text = str(rate).strip().lower() if rate is not None else None
    if offline or text == "inf":
        return assign_arrivals(trace, "offline")
    if text == "measured":
        if not measured:
            raise TraceError("rate 'measured': this source has no real timestamps to measure; give a number")
        rate = float(measured["rate"])
        burstiness = burstiness_from_cv(float(measured["cv"])) if burstiness is None else burstiness
    if rate is not None:
        try:
            value = float(rate)
        except ValueError:
            raise TraceError(
                f"rate: expected requests per second, 'measured' or 'inf', got {rate!r}"
            ) from None
        shape = 1.0 if burstiness is None else float(burstiness)
        mode = "poisson" if shape == 1.0 else "gamma"
        return assign_arrivals(trace, mode, rate=value, burstiness=shape, seed=seed)
    if time_scale is not None and not trace.is_timed:
        raise TraceError("time scale: this trace has no timestamps to scale (it is offline)")
    if trace.is_timed:
        return assign_arrivals(trace, "replay", scale=1.0 if time_scale is None else time_scale)
    return assign_arrivals(trace, "offline")


def burstiness_from_cv(cv: float) -> float:
    """Gamma shape whose gaps have coefficient of variation cv."""
    _check_positive("inter-arrival CV", cv)
    return 1.0 / (cv * cv)


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise TraceError(f"{name} must be a positive finite number, got {value}")
