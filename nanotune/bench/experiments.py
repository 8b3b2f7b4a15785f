"""Pieces the measurement scripts share (scripts/engine_throughput.py, engine_overlap.py, step_anatomy.py,
model_check.py): named workloads, and one offline bench run of a warm engine under its current plan.

Scripts stay thin command lines over these; nothing here is a new benchmark of its own: `run_one` is
`nanotune bench`'s runner on an engine the caller already built (the plan switched in place).
"""

from __future__ import annotations

WORKLOADS = {  # short name (used in result keys and name[:count] lists) -> (workload spec, default count)
    "c1024x512": ("constant:1024:512", 1200),
    "c512x512": ("constant:512:512", 1500),
    "c512x1024": ("constant:512:1024", 1000),
    "sharegpt": ("sharegpt", 2000),  # each dataset with its default filter (workloads.spec.DEFAULT_FILTERS)
    "lmsys": ("lmsys", 3000),
    "splitwise": ("splitwise", 1000),
}

RUN_METRICS = ["completed", "failed", "duration", "total_input_tokens", "total_output_tokens",
               "request_throughput", "output_throughput", "total_token_throughput",
               "optimal_total_token_throughput", "efficiency", "mean_ttft_ms", "mean_tpot_ms",
               "normalized_latency_ms", "steady_window_start_s", "steady_window_end_s",
               "steady_total_token_throughput", "steady_efficiency"]


def make_trace(name: str, n: int | None, seed: int):
    """The trace of a short name (WORKLOADS), through the one workload parser bench and search use."""
    from workloads import parse_workload

    if name not in WORKLOADS:
        raise ValueError(f"workload '{name}': choose one of {', '.join(WORKLOADS)}")
    spec, default_n = WORKLOADS[name]
    return parse_workload(spec, n or default_n, seed).load()


def subset(trace, n: int):
    """The first n requests of a trace, its metadata saying so."""
    from workloads.trace import Trace

    return Trace(list(trace.requests)[:n], {**trace.meta, "count": n, "subset_of": trace.meta.get("count")})


def run_one(engine, label: str, trace, peak, warmups: int, device: str, op_profile=None) -> dict:
    """One offline bench run of `trace` on a built engine under its current plan. Per-op timings of the
    engine's op-timed iterations (EngineConfig.time_ops_every) go to `op_profile` (an engine.observe.OpProfile,
    a fresh one if None) through the engine's observer API; its summary is in the result."""
    from engine.observe import OpProfile
    from nanotune.bench.backends.inprocess import EngineBackend
    from nanotune.bench.config import BenchConfig
    from nanotune.bench.requests import admit
    from nanotune.bench.runner import run_bench

    profile = op_profile if op_profile is not None else OpProfile()
    trace = admit(trace, max_model_len=engine.max_model_len)  # what cannot run is dropped and counted, not failed
    cfg = BenchConfig(trace=label, engine="nanoflow", model=engine.model_config.name, device=device,
                      num_warmups=warmups)
    backend = EngineBackend(engine, name=label, info={"plan": engine.runner.plan.to_dict()})
    engine.add_observer(profile)
    try:
        outcome = run_bench(cfg, trace, backend, peak)
    finally:
        engine.remove_observer(profile)
        backend.close()
    m = outcome.result["metrics"]
    steps = outcome.result["points"][-1]["runs"][-1]["backend"]  # the measured phase, warm-up excluded
    return {"metrics": {k: m.get(k) for k in RUN_METRICS}, "op_profile": profile.summary(),
            "host_fraction": steps.get("host_fraction"), "host_ms_per_step": steps.get("host_ms_per_step"),
            "mean_step_tokens": steps.get("mean_tokens_per_step"), "num_steps": steps.get("num_steps"),
            "num_preemptions": engine.stats()["num_preemptions"], "backend": steps}


def run_hf(model: str, trace, peak, seed: int, device: str) -> dict:
    """The Hugging Face transformers peer (continuous batching) on the same trace."""
    from nanotune.bench.backends.hf import load_hf_backend
    from nanotune.bench.config import BenchConfig
    from nanotune.bench.runner import run_bench

    lengths = [(r.prompt_len, r.output_len) for r in trace.requests]
    backend = load_hf_backend(model, device, "bfloat16" if device == "cuda" else "float32", "sdpa", seed,
                              lengths)
    try:
        res = run_bench(BenchConfig(trace="hf", engine="hf", model=model, device=device, num_warmups=2),
                        trace, backend, peak).result
    finally:
        backend.close()
    m = res["metrics"]
    return {"metrics": {k: m.get(k) for k in ("completed", "failed", "duration", "total_token_throughput",
                                              "output_throughput", "efficiency", "mean_tpot_ms")},
            "engine": res["engine"]}
