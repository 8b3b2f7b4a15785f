"""`run_bench`: warm-up, then every (rate, repeat) pass of a benchmark, turned into one result dict.

The backend and the peak are made by the caller (the CLI): building a model and measuring a GEMM are
slow and device-specific, and tests pass a FakeEngine-backed backend instead.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from nanotune.bench.backends.base import Backend
from nanotune.bench.config import BenchConfig
from nanotune.bench.driver import Progress, drive
from nanotune.bench.failures import failure_reasons, reasons_line
from nanotune.bench.metrics import compute_metrics
from nanotune.bench.records import FAILED, INTERRUPTED, NOT_SENT, RequestRecord
from nanotune.bench.requests import build_requests, warmup_requests
from nanotune.bench.stats import aggregate_runs
from nanotune.bench.vllm_format import vllm_fields
from nanotune.results.bound import efficiency_metrics
from nanotune.results.peak import PeakFlops
from nanotune.results.rates import rate_json

SCHEMA = "nanotune.bench/1"

DEFINITIONS = {
    "ttft_ms": "send -> first token (client queue time before the send is queue_ms)",
    "tpot_ms": "vLLM: (e2e - ttft) / (output_len - 1) per request; one-token outputs excluded",
    "itl_ms": "gaps between consecutive tokens (endpoint: streamed chunks) of all requests, pooled",
    "e2el_ms": "send -> last token",
    "normalized_latency_ms": "NanoFlow: mean over requests of e2e latency / output tokens",
    "optimal_total_token_throughput": "NanoFlow Eq. 5: peak FLOP/s / (2 * parameters per GPU)",
    "efficiency": "total_token_throughput / optimal_total_token_throughput",
    "bound_total_token_throughput": "the power-aware bound (nanotune.results.bound): the completed requests' "
                                    "GEMM FLOPs at the sustained GEMM rate and KV + element-wise bytes at the "
                                    "sustained HBM read rate, overlapped by at most the measured concurrency",
    "efficiency_vs_bound": "total_token_throughput / bound_total_token_throughput",
    "steady": "window from the first to the last time the decoding count is >= 90% of its time-weighted "
              "median; prompt tokens counted at first token; null if under 5% of the run",
    "request_goodput": "completed requests within every --goodput SLO per second (vLLM)",
    "metrics_ci95": "half-width of the 95% confidence interval of the mean over --repeat runs (Student t)",
}


@dataclass
class BenchOutcome:
    result: dict  # everything for result.json except run_id / environment (the caller adds those)
    rows: list[dict]  # one per request per pass, for requests.csv


def trace_summary(trace, requests) -> dict:
    meta = dict(getattr(trace, "meta", {}) or {})
    return {**meta, "num_requests": len(requests),
            "mean_prompt_len": statistics.fmean(r.prompt_len for r in requests) if requests else None,
            "mean_output_len": statistics.fmean(r.output_len for r in requests) if requests else None}


def best_rate(points: list[dict], slos: dict, attainment: float) -> float | None:
    """Highest swept rate whose requests met every SLO at least `attainment` of the time."""
    if not slos:
        return None
    ok = [p["request_rate"] for p in points
          if not p["partial"] and (p["metrics"].get("slo_attainment") or 0.0) >= attainment]
    return max(ok, default=None)


def run_bench(cfg: BenchConfig, trace, backend: Backend, peak: PeakFlops | None,
              on_progress: Callable[[Progress], None] | None = None,
              on_phase: Callable[[str], None] | None = None, bound=None) -> BenchOutcome:
    """`bound`: a bench.bound.BoundSetup (None: no bound figures)."""
    on_phase = on_phase or (lambda name: None)
    flops = peak.flops if peak else None
    build = lambda mode, rate: build_requests(trace, mode, backend.vocab_size, cfg.seed, rate, cfg.burstiness,
                                              cfg.caps, cfg.num_requests)
    base = build("offline", None)
    error, is_partial, is_interrupted = None, False, False
    warm = warmup_requests(base, cfg.num_warmups)
    warmup = None
    if warm:
        on_phase(f"warm-up ({len(warm)} requests, not counted)")
        ph = drive(backend, warm, on_progress=on_progress)
        # failed = the backend reported an error; a warm-up cut short by a signal did not fail
        warmup = {"num_requests": len(warm), "failed": sum(r.status == FAILED for r in ph.records),
                  "interrupted": sum(r.status in (INTERRUPTED, NOT_SENT) for r in ph.records),
                  "failures": failure_reasons(ph.records), "duration": ph.duration}
        if ph.is_partial:
            is_partial, is_interrupted, error = True, ph.is_interrupted, ph.error
        elif warmup["failed"] == len(warm):  # nothing answered: the measured run would fail the same way
            is_partial = True
            n = len(warm)
            error = reasons_line(warmup["failures"], head=f"every warm-up request failed ({n}/{n}); nothing measured")

    points, rows, measured = [], [], {}
    if is_partial:  # stopped in the warm-up: every measured request is listed, as not sent
        rate = cfg.rates[0]
        rows = [{"request_rate": rate, "repeat": 0, **RequestRecord.for_request(r).to_row()} for r in base]
    for rate in cfg.rates:
        if is_partial:
            break
        mode = cfg.mode_for(rate)
        try:
            requests = base if mode == "offline" else build(mode, rate)
        except KeyboardInterrupt:  # a signal between phases: stop with what is measured
            is_partial = is_interrupted = True
            break
        runs = []
        for rep in range(cfg.repeat):
            what = f"rate {rate:g} req/s" if rate is not None else mode
            on_phase(f"{what}, run {rep + 1}/{cfg.repeat}" if cfg.repeat > 1 else what)
            ph = drive(backend, requests, cfg.max_concurrency, on_progress)
            metrics = compute_metrics(ph.records, ph.duration, backend.num_params, flops, cfg.slos)
            block = bound.block([(r.prompt_len, r.output_len) for r in ph.records
                                 if r.is_ok and r.output_len > 0]) if bound else None
            metrics.update(efficiency_metrics(metrics["total_token_throughput"], block))
            runs.append({"repeat": rep, "partial": ph.is_partial, "error": ph.error, "metrics": metrics,
                         "backend": backend.phase_stats(), "bound": block})
            rows += [{"request_rate": rate, "repeat": rep, **r.to_row()} for r in ph.records]
            measured[len(points)] = ph.records  # the point's last run: its per-request lists for vLLM
            if ph.is_partial:
                is_partial, is_interrupted, error = True, ph.is_interrupted, ph.error
                break
        complete = [r["metrics"] for r in runs if not r["partial"]]
        mean, ci = aggregate_runs(complete or [runs[-1]["metrics"]])
        points.append({"request_rate": rate, "mode": mode, "partial": not complete, "metrics": mean,
                       "metrics_ci95": ci if len(complete) > 1 else None, "runs": runs})

    sweep = None
    headline = points[-1] if points else None
    if cfg.sweep_rates:
        best = best_rate(points, cfg.slos, cfg.slo_attainment)
        sweep = {"rates": list(cfg.sweep_rates), "slos": cfg.slos, "slo_attainment": cfg.slo_attainment,
                 "best_rate": best}
        headline = next((p for p in points if p["request_rate"] == best), headline)
    for p in points:
        p["request_rate"] = rate_json(p["request_rate"])
    if sweep:
        sweep["rates"] = [rate_json(r) for r in sweep["rates"]]
        sweep["best_rate"] = rate_json(sweep["best_rate"])
    engine = backend.describe()
    engine["final_stats"] = backend.stats()
    result = {
        "schema": SCHEMA, "kind": "bench", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "partial": is_partial, "interrupted": is_interrupted, "error": error, "config": cfg.to_dict(),
        "trace": trace_summary(trace, base),
        "engine": engine, "peak": peak.to_dict() if peak else None, "warmup": warmup,
        "metrics": headline["metrics"] if headline else compute_metrics([], 0.0),
        "metrics_ci95": headline["metrics_ci95"] if headline else None,
        "request_rate": headline["request_rate"] if headline else None,
        "failures": failure_reasons(rows),
        "points": points, "sweep": sweep, "definitions": DEFINITIONS,
        "bound": bound.describe() if bound else {"why": "not computed"},  # each run's own: points[].runs[].bound
        "efficiency_note": efficiency_note(peak, backend),
    }
    if headline is not None:  # vLLM's --save-result keys; our request_rate (null = offline) stays ours
        vllm = vllm_fields(result, measured.get(points.index(headline), []))
        result.update({k: v for k, v in vllm.items() if k != "request_rate"})
    return BenchOutcome(result=result, rows=rows)


def efficiency_note(peak: PeakFlops | None, backend: Backend) -> str:
    """What efficiency is measured against, or why it is missing (the table shows "-" then)."""
    model = backend.describe().get("model")
    if peak is None:
        where = "the endpoint's GPU is not on this machine" if backend.name == "endpoint" else "no peak measured"
        return f"no efficiency: {where}; pass --gpu NAME (a committed reference profile) or --peak-tflops"
    if not backend.num_params:
        return f"no efficiency: parameters of '{model}' unknown (not a preset); pass --num-params"
    return f"efficiency against {peak.label}, {backend.num_params / 1e9:.3g} B parameters per GPU"
