"""Host (Python) time per engine step against the step's GPU time, on the two shapes issue 14 targets.

    python scripts/host_time.py --out results/reference/h200/issue14/host-time.json
    python scripts/host_time.py --device cpu --model tiny-llama --scale 0.02 --out /tmp/h.json   # the script

Cases (each on a fresh engine, async scheduling, the default plan unless --plan):
- mixed: constant 1024/512 at 512 sequences (--n requests), the throughput shape;
- decode: constant 128/1024 with 256 requests at 256 sequences: after a short prefill ramp every step is
  decode-only with 256 sequences.
--profile-steps N adds a cProfile of N steady steps per case (own time per function). Writes JSON with the
environment (nanotune.profile.host_time does the measuring).
"""

from __future__ import annotations

import argparse
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--plan", default=None, help="plan name or JSON (default: the engine's default plan)")
    ap.add_argument("--cases", default="mixed,decode")
    ap.add_argument("--n", type=int, default=900, help="requests of the mixed case")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply lengths and counts (CPU smoke runs)")
    ap.add_argument("--profile-steps", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=16, help="requests run first on each engine, untimed")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from engine import EngineConfig, LLMEngine
    from nanotune.profile.host_time import run_case
    from nanotune.results import environment, write_json_atomic
    from workloads import generate

    def sc(x: int) -> int:
        return max(1, int(round(x * args.scale)))

    cases = {"mixed": (sc(1024), sc(512), sc(args.n), sc(512)), "decode": (sc(128), sc(1024), sc(256), sc(256))}
    out = {"schema": "nanotune.host-time/1", "command": " ".join(sys.argv), "environment": environment(),
           "model": args.model, "plan": args.plan or "default", "cases": {}}
    for name in args.cases.split(","):
        pin, pout, n, seqs = cases[name]
        engine = LLMEngine(EngineConfig(model=args.model, device=args.device, max_num_seqs=seqs, plan=args.plan))
        warm = generate("constant", args.warmup, 1, input_len=pin, output_len=min(pout, 32))
        engine.generate_trace(list(warm.requests))
        trace = generate("constant", n, 0, input_len=pin, output_len=pout)
        res = run_case(engine, list(trace.requests), profile_steps=args.profile_steps)
        res["shape"] = {"prompt": pin, "output": pout, "max_num_seqs": seqs,
                        "max_num_batched_tokens": engine.config.max_num_batched_tokens,
                        "plan": engine.runner.plan.name}
        out["cases"][name] = res
        st = res["steady"]
        print(f"{name}: steady decode-only {st['decode_only']}\n  mixed {st['mixed']}\n  captures "
              f"{res['num_captures']} ({res['capture_host_ms_total']} ms)", flush=True)
        write_json_atomic(args.out, out)
        del engine, res
        _release()
    print(f"wrote {args.out}")
    return 0


def _release() -> None:
    """Give the engine's GPU memory back before the next case builds its own (cycles hold the runner)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
