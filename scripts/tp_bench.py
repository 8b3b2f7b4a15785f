"""Tensor-parallel engine runs: throughput per GPU, efficiency, plans, all-reduce share, memory -> JSON.

What the multi-GPU issues measure, in one run: for each TP degree (--tp 1,2), each plan (the sequential plan
against overlapped ones, e.g. nb2-ar: all-reduces on their own stream) and each trace (constant 1024/512,
ShareGPT with vLLM's filter), offline through the bench's runner: total tokens/s, per GPU, efficiency against
optimal with params per GPU = params / TP (NanoFlow's Eq. 5), the steady-state figures, host time per step
(and rank 0's send time per step: the cost of every rank scheduling on its own); then a short op-timed pass
for each op's share of an iteration (the all-reduces' included); peak memory per GPU; and the ratios
(each plan over sequential, each TP over TP 1 for the same plan and trace). Each TP > 1 runs with every
all-reduce implementation in --allreduce (ratios over the first, the best per TP/plan/trace), and the
implementations in --collectives are timed alone and beside a GEMM first; one that fails is recorded and the
rest go on. Writes tp-bench.json with the environment block into --out (or $OUT).

    python scripts/tp_bench.py --model llama-3-70b --tp 2 --plans sequential,nb2-ar --out results/x \
        --allreduce nccl,symm-mem-one-shot,symm-mem-two-shot,copy-engine
    python scripts/tp_bench.py --model llama-3-8b --tp 1,2 --traces constant:1024:512 -n 900 --out results/x
    python scripts/tp_bench.py --smoke --out /tmp/x     # CPU, gloo, a tiny model: checks the script itself
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import sys
import time
from pathlib import Path

ALLREDUCE_OPS = ("o_allreduce", "down_allreduce")


def make_trace(spec: str, n: int, seed: int, cap: int | None):
    """constant:IN:OUT | sharegpt (vLLM's filter) | any workloads dataset name; lengths capped at `cap`."""
    from workloads import generate
    from workloads.trace import Trace

    if spec.startswith("constant:"):
        _, i, o = spec.split(":")
        trace = generate("constant", n, seed, input_len=int(i), output_len=int(o))
    else:
        trace = generate(spec, n, seed, filter="vllm") if spec == "sharegpt" else generate(spec, n, seed)
    if cap:
        from dataclasses import replace

        reqs = [replace(r, prompt_len=min(r.prompt_len, cap), output_len=min(r.output_len, cap), prompt_ids=None)
                for r in trace.requests]
        trace = Trace(reqs, {**trace.meta, "capped_at": cap})
    return trace


def run_trace(engine, label: str, trace, peak, warmups: int, device: str) -> dict:
    """The bench's offline runner over the engine (warm-up, measured phase, steady window)."""
    from nanotune.bench.backends.inprocess import EngineBackend
    from nanotune.bench.config import BenchConfig
    from nanotune.bench.runner import run_bench

    driver = engine._driver
    if driver is not None:
        driver.send_s, driver.num_sends = 0.0, 0
    cfg = BenchConfig(trace=label, engine="nanoflow", model=engine.model_config.name, device=device,
                      num_warmups=warmups)
    backend = EngineBackend(engine, name=label)
    try:
        outcome = run_bench(cfg, trace, backend, peak)
    finally:
        backend.close()  # its step observer leaves the engine, which the next run reuses
    m = outcome.result["metrics"]
    tp = engine.config.tp
    keep = ["completed", "failed", "duration", "total_token_throughput", "optimal_total_token_throughput",
            "efficiency", "steady_total_token_throughput", "steady_efficiency", "mean_ttft_ms", "mean_tpot_ms"]
    steps = outcome.result["points"][-1]["runs"][-1]["backend"]
    out = {"metrics": {k: m.get(k) for k in keep}, "error": outcome.result.get("error"),
           "total_token_throughput_per_gpu": (m.get("total_token_throughput") or 0) / tp,
           "params_per_gpu": backend.num_params, "host_ms_per_step": steps.get("host_ms_per_step"),
           "mean_step_ms": steps.get("mean_step_ms"), "num_steps": steps.get("num_steps"),
           "num_preemptions": engine.stats()["num_preemptions"]}
    if driver is not None and driver.num_sends:
        out["rank0_send_ms_per_step"] = 1e3 * driver.send_s / driver.num_sends
    return out


def op_shares(engine, trace, num_requests: int) -> dict:
    """A short pass with per-op timings on every step: each op's time per iteration and share of it."""
    import numpy as np

    from engine.observe import OpProfile
    from engine.request import SamplingParams

    profile = OpProfile()  # an observer: it sums the per-op timings of every timed step
    rng = np.random.default_rng(1)
    for r in list(trace.requests)[:num_requests]:
        engine.add_request(rng.integers(0, engine.vocab_size, r.prompt_len).tolist(),
                           SamplingParams(max_tokens=r.output_len, ignore_eos=True))
    engine.add_observer(profile)
    try:
        while engine.has_unfinished():
            engine.step([])
    finally:
        engine.remove_observer(profile)
    s = profile.summary()
    it = s["mean_iteration_ms"] or float("nan")
    ar = sum(s["mean_op_ms"].get(op, 0.0) for op in ALLREDUCE_OPS)
    return {"num_iterations": s["num_iterations"], "mean_iteration_ms": it, "mean_op_ms": s["mean_op_ms"],
            "allreduce_ms_per_iteration": ar, "allreduce_share_of_iteration": ar / it,
            "note": "op-timed iterations run eagerly and synchronously (CUDA events per op)"}


def greedy_tokens_digest(engine, vocab: int, num: int = 8, steps: int = 16) -> str:
    """sha256 of greedy tokens for fixed prompts: the same weights and code give the same digest at any TP
    (up to bf16 near-ties)."""
    import numpy as np

    rng = np.random.default_rng(7)
    prompts = [rng.integers(0, vocab, 32 + 8 * i).tolist() for i in range(num)]
    from engine.request import SamplingParams

    out = engine.generate(prompts, SamplingParams(max_tokens=steps, ignore_eos=True))
    return hashlib.sha256(repr(out).encode()).hexdigest()


def memory_per_gpu(device: str, tp: int) -> dict:
    if not device.startswith("cuda"):
        return {"rank0_max_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    import torch

    out = {"rank0_max_allocated_gib": torch.cuda.max_memory_allocated() / 2**30}
    try:
        import pynvml

        pynvml.nvmlInit()
        out["used_gib_per_gpu"] = [pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).used / 2**30
                                   for i in range(tp)]
    except Exception as e:  # NVML missing: rank 0's allocator figure stands alone
        out["nvml_error"] = f"{type(e).__name__}: {e}"
    return out


def ratios(runs: list[dict]) -> dict:
    """Total tok/s ratios, same trace: each plan over sequential (same TP and all-reduce), each TP over TP 1
    (same plan, the first all-reduce), each all-reduce over the first one given (same TP, plan); and the best
    all-reduce per TP, plan and trace (what the engine's default should be)."""
    by = {(r["tp"], r["allreduce"], r["plan"], r["trace"]): r["result"]["metrics"]["total_token_throughput"] or 0
          for r in runs}
    first = runs[0]["allreduce"] if runs else None
    plan_vs_seq, tp_vs_tp1, ar_vs_first, best = {}, {}, {}, {}
    for (tp, ar, plan, trace), v in by.items():
        tag = "" if ar == first else f"/{ar}"
        seq = by.get((tp, ar, "sequential", trace))
        if plan != "sequential" and seq:
            plan_vs_seq[f"tp{tp}/{trace}/{plan}{tag}"] = v / seq
        one = by.get((1, first, plan, trace))
        if tp != 1 and one and ar == first:
            tp_vs_tp1[f"{trace}/{plan}/tp{tp}"] = v / one
        base = by.get((tp, first, plan, trace))
        if tp != 1 and ar != first and base:
            ar_vs_first[f"tp{tp}/{trace}/{plan}/{ar}"] = v / base
        if tp != 1:
            key = f"tp{tp}/{trace}/{plan}"
            if v > best.get(key, ("", -1.0))[1]:
                best[key] = (ar, v)
    return {"plan_over_sequential": plan_vs_seq, "tp_over_tp1": tp_vs_tp1,
            f"allreduce_over_{first}": ar_vs_first, "best_allreduce": {k: a for k, (a, _) in best.items()}}


def engine_configs(tps: list[int], impls: list[str]) -> list[tuple[int, str]]:
    """(tp, all-reduce) pairs to build engines for: TP 1 once (it has no collectives), every TP > 1 with each
    implementation."""
    return [(tp, impl) for tp in tps for impl in (impls[:1] if tp == 1 else impls)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--tp", default="1", help="comma list of TP degrees, e.g. 1,2")
    ap.add_argument("--plans", default="sequential,nb2-ar", help="comma list of plan names or JSON files")
    ap.add_argument("--traces", default="constant:1024:512,sharegpt")
    ap.add_argument("-n", type=int, default=900, help="requests per trace")
    ap.add_argument("--op-requests", type=int, default=64, help="requests of the op-timed pass (0: skip)")
    ap.add_argument("--warmups", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--allreduce", default="nccl",
                    help="comma list of the engine's all-reduce implementations (engine/parallel/comm.py); each TP "
                         "> 1 runs with each, the first is the baseline of the ratios")
    ap.add_argument("--collectives", default="nccl,nccl-channels:8,symm-mem-one-shot,symm-mem-two-shot,copy-engine",
                    help="all-reduce implementations to time alone and beside a GEMM at the largest TP ('' skips)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--max-len", type=int, default=None, help="cap prompt and output lengths")
    ap.add_argument("--smoke", action="store_true", help="CPU, gloo, tiny-llama, TP 1 and 2, a few requests")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    args = ap.parse_args()
    if not args.out:
        ap.error("give --out DIR (or set $OUT)")
    extra = {}
    if args.smoke:
        args.model, args.device, args.tp, args.n, args.warmups = "tiny-llama", "cpu", "1,2", 6, 1
        args.max_len, args.op_requests = args.max_len or 48, min(args.op_requests, 3)
        args.collectives = args.allreduce = "nccl"  # gloo on CPU
        extra = {"dtype": "float32", "max_num_batched_tokens": 128, "max_num_seqs": 8}

    from engine import EngineConfig, LLMEngine
    from engine.plan_library import resolve_plan
    from nanotune.results import environment, write_json_atomic
    from nanotune.results.peak import peak_flops

    t_start = time.time()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    peak = peak_flops(args.device)
    traces = {spec: make_trace(spec, args.n, args.seed, args.max_len) for spec in args.traces.split(",")}
    out = {"schema": "nanotune.tp-bench/1", "command": " ".join(sys.argv), "model": args.model,
           "peak": peak.to_dict(), "allreduce": args.allreduce.split(","), "num_requests": args.n, "runs": [],
           "per_tp": {}, "environment": environment()}
    save = lambda: write_json_atomic(out_dir / "tp-bench.json", {**out, "wall_s": time.time() - t_start})
    top = max(int(t) for t in args.tp.split(","))
    if args.collectives and top > 1:  # before the engines: the GPUs are empty
        from nanotune.profile.collectives import measure_allreduce

        sizes = (1,) if args.smoke else (1, 8, 32, 128)
        out["collectives"] = []
        for impl in args.collectives.split(","):
            try:
                c = measure_allreduce(top, impl, args.device.split(":")[0], sizes)
            except Exception as e:  # one implementation that cannot run here must not lose the others
                c = {"impl": impl, "ranks": top, "error": f"{type(e).__name__}: {str(e).strip().splitlines()[-1:]}"}
                print(f"all-reduce {impl} x{top}: failed: {c['error']}", flush=True)
            else:
                print(f"all-reduce {c['impl']} x{top}: " + ", ".join(
                    f"{r['size_mib']} MiB {r['bus_gb_s']:.1f} GB/s" + (f" (with GEMM {r['overlap_work']:.2f}x)"
                                                                     if r["overlap_work"] else "")
                    for r in c["sizes"]), flush=True)
            out["collectives"].append(c)
        save()
    impls = args.allreduce.split(",")
    out["engine_errors"] = []
    for tp, impl in engine_configs([int(t) for t in args.tp.split(",")], impls):
        key = str(tp) if impl == impls[0] else f"{tp}:{impl}"
        try:
            engine = LLMEngine(EngineConfig(model=args.model, device=args.device, seed=args.seed, tp=tp,
                                            allreduce=impl, **extra))
        except Exception as e:  # an all-reduce that cannot run here: recorded, the others still run
            if impl == impls[0]:
                raise
            out["engine_errors"].append({"tp": tp, "allreduce": impl, "error": f"{type(e).__name__}: {e}"})
            print(f"tp {tp} {impl}: engine failed to build: {e}", flush=True)
            save()
            continue
        try:
            info = {"allreduce": impl, "num_kv_blocks": engine.runner.cache_info.num_blocks,
                    "weights_gib_per_gpu": engine.runner.weights.num_bytes / 2**30,
                    "tokens_digest": greedy_tokens_digest(engine, engine.vocab_size), "op_shares": {}}
            out["per_tp"][key] = info
            for plan_name in args.plans.split(","):
                engine.set_plan(resolve_plan(plan_name, engine.runner.num_sms))
                for spec, trace in traces.items():
                    res = run_trace(engine, spec, trace, peak, args.warmups, args.device)
                    out["runs"].append({"tp": tp, "allreduce": impl, "plan": plan_name, "trace": spec,
                                        "result": res})
                    print(f"tp {tp} {impl} {plan_name} {spec}: {res['metrics']['total_token_throughput']:,.0f} "
                          f"tok/s ({res['total_token_throughput_per_gpu']:,.0f} per GPU), efficiency "
                          f"{res['metrics']['efficiency']:.3f}", flush=True)
                    save()
                if args.op_requests:
                    first = next(iter(traces.values()))
                    info["op_shares"][plan_name] = op_shares(engine, first, args.op_requests)
            info["memory"] = memory_per_gpu(args.device, tp)
        finally:
            engine.close()
            del engine
        out["ratios"] = ratios(out["runs"])
        save()
    print(f"wrote {out_dir / 'tp-bench.json'}")
    bad = [f"tp {r['tp']} {r['allreduce']} {r['plan']} {r['trace']}: {r['result']['error'] or 'requests failed'}"
           for r in out["runs"] if r["result"]["error"] or r["result"]["metrics"].get("failed")]
    if bad:  # recorded in the JSON; the script exits 1 so a wrapper sees it
        raise SystemExit("tp_bench: " + "; ".join(bad))


if __name__ == "__main__":
    main()
