"""Turn a workload trace into the requests a benchmark replays: prompt ids, forced output lengths, and
arrival times for the chosen mode.

Modes (DESIGN.md, "Profile -> model -> search -> plan -> bench"):
* offline: every request arrives at t=0; the engine's own queue decides the order.
* online, trace timestamps: arrival = the trace's `arrival_s`, shifted so the first is at 0.
* online, `request_rate`: gaps drawn from a gamma distribution with shape `burstiness` and mean
  1/rate (burstiness 1 = Poisson; < 1 burstier, > 1 more regular), as vLLM's `bench serve`;
  rate = inf sends everything at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nanotune.bench.records import BenchRequest


@dataclass(frozen=True)
class LengthCaps:
    """Upper bounds applied to a trace's lengths (the CPU default run caps ShareGPT's long requests)."""

    max_prompt_len: int | None = None
    max_output_len: int | None = None

    def apply(self, prompt_len: int, output_len: int) -> tuple[int, int]:
        if self.max_prompt_len:
            prompt_len = min(prompt_len, self.max_prompt_len)
        if self.max_output_len:
            output_len = min(output_len, self.max_output_len)
        return prompt_len, output_len  # an empty prompt or output stays empty: `admit` drops it


def admit(trace, caps: LengthCaps | None = None, num_requests: int | None = None,
          max_model_len: int | None = None):
    """The workloads.Trace a benchmark runs: the first `num_requests` of `trace`, lengths capped, and the
    requests that cannot run (empty prompt or output, prompt + output over `max_model_len`) dropped and
    counted in meta["unrunnable"] (workloads.runnable), so none of them fails at run time."""
    from workloads import Trace, TraceRequest, drop_unrunnable

    caps = caps or LengthCaps()
    reqs = list(trace.requests)[:num_requests] if num_requests else list(trace.requests)
    capped = []
    for r in reqs:
        p_len, o_len = caps.apply(int(r.prompt_len), int(r.output_len))
        ids = getattr(r, "prompt_ids", None)
        capped.append(TraceRequest(float(r.arrival_s), p_len, o_len, tuple(ids)[:p_len] if ids else None))
    meta = dict(getattr(trace, "meta", {}) or {})
    return drop_unrunnable(Trace(capped, meta), max_model_len)


def arrival_times(trace_arrivals: list[float], mode: str, request_rate: float | None = None,
                  burstiness: float = 1.0, seed: int = 0) -> list[float]:
    """Arrival time of each request (seconds from t0) for `mode` in {"offline", "online"}."""
    n = len(trace_arrivals)
    if mode == "offline" or (request_rate is not None and math.isinf(request_rate)):
        return [0.0] * n
    if request_rate is None:  # the trace's own timestamps
        first = min(trace_arrivals, default=0.0)
        return [a - first for a in trace_arrivals]
    if request_rate <= 0:
        raise ValueError(f"request rate must be positive, got {request_rate}")
    if burstiness <= 0:
        raise ValueError(f"burstiness must be positive, got {burstiness}")
    rng = np.random.default_rng(seed)
    gaps = rng.gamma(shape=burstiness, scale=1.0 / (request_rate * burstiness), size=n)
    # The first request goes at t0 (as vLLM does: it sends, then sleeps for the next gap).
    return [0.0] + np.cumsum(gaps[:-1]).tolist() if n else []


def prompt_ids_for(prompt_ids, prompt_len: int, vocab_size: int, rng: np.random.Generator) -> tuple[int, ...]:
    """The trace's ids (clipped to the cap and into the vocabulary) or, when it has none, random ids drawn
    uniformly from [0, vocab) with the benchmark's seed: reproducible, and never all one token."""
    if prompt_ids:
        ids = [int(t) % vocab_size for t in list(prompt_ids)[:prompt_len]]
        if len(ids) == prompt_len:
            return tuple(ids)
    return tuple(rng.integers(0, vocab_size, size=prompt_len).tolist())


def build_requests(trace, mode: str, vocab_size: int, seed: int = 0, request_rate: float | None = None,
                   burstiness: float = 1.0, caps: LengthCaps | None = None,
                   num_requests: int | None = None) -> list[BenchRequest]:
    """BenchRequests for the first `num_requests` of `trace` (a workloads.Trace or anything with
    `.requests` of objects with `arrival_s`, `prompt_len`, `output_len`, `prompt_ids`)."""
    caps = caps or LengthCaps()
    reqs = list(trace.requests)[:num_requests] if num_requests else list(trace.requests)
    arrivals = arrival_times([float(r.arrival_s) for r in reqs], mode, request_rate, burstiness, seed)
    rng = np.random.default_rng(seed)
    out = []
    for i, (r, at) in enumerate(zip(reqs, arrivals, strict=True)):
        p_len, o_len = caps.apply(int(r.prompt_len), int(r.output_len))
        ids = prompt_ids_for(getattr(r, "prompt_ids", None), p_len, vocab_size, rng)
        out.append(BenchRequest(index=i, arrival_s=at, prompt_ids=ids, output_len=o_len))
    return out


def warmup_requests(requests: list[BenchRequest], num: int) -> list[BenchRequest]:
    """The first `num` requests again, all at t=0, with their own ids (not counted in any metric): they
    trigger compilation, graph capture and allocator growth before the clock starts."""
    return [BenchRequest(index=-(i + 1), arrival_s=0.0, prompt_ids=r.prompt_ids, output_len=r.output_len)
            for i, r in enumerate(requests[:num])]
