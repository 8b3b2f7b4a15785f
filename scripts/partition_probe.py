"""How to share one GPU between a GEMM pair and decode attention (issue 4: SM partitioning), in one call.

    PYTHONPATH=. python scripts/partition_probe.py --out $OUT/partition-probe.json [--quick]
    PYTHONPATH=. python scripts/partition_probe.py --dry-run     # CPU, tiny model: the code paths only

Measures, on the engine's own ops (llama-3-8b shapes, cold operands via the profiler's LayerRig):
1. per-SM-budget curves: the MLP GEMM pair (gate_up + down) under a cuBLAS SM-count target and inside a CUDA
   green context of N SMs; decode attention over 1 GiB of KV with its persistent grid bounded to N programs,
   and inside a green context of N SMs (with 1, 2 or 3 programs per SM);
2. decode-attention tile configs at a third of the SMs (the issue's 80%-of-copy-bandwidth target);
3. the micro pair (1024-token gate_up + down beside decode attention over 1 GiB of KV): back to back against
   each way of running them together - plain streams, bounded grid, cuBLAS target, stream priority, green
   contexts - as the ratio back_to_back / together.
Writes JSON (with the environment) and a figure of the curves and the pair.
"""

from __future__ import annotations

import argparse
import os
import time
import traceback


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_out = os.path.join(os.environ["OUT"], "partition-probe.json") if os.environ.get("OUT") else None
    ap.add_argument("--out", default=default_out, help="JSON path (figure beside it, same stem)")
    ap.add_argument("--quick", action="store_true", help="fewer budgets and configs")
    ap.add_argument("--dry-run", action="store_true", help="CPU + tiny model: exercise the code paths only")
    ap.add_argument("--power", type=float, default=0.0, metavar="S",
                    help="also run GEMM alone, attention alone, both, and back to back for S seconds each "
                         "under NVML sampling (clocks, power, throttle reasons)")
    ap.add_argument("--blas", choices=("default", "cublaslt"), default="default",
                    help="torch's BLAS for matmuls: torch 2.11 applies the SM carveout only on cuBLASLt paths")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    import torch

    from engine.kernels import decode_attention as da
    from engine.partition import cublas_sm_budget, green_context, has_cublas_carveout, has_green_contexts
    from engine.presets import get_preset
    from nanotune.profile.measure import decode_point_for_kv, runner_for
    from nanotune.profile.ops import shard, shard_config
    from nanotune.profile.rig import LayerRig
    from nanotune.profile.timing import Timer
    from nanotune.results import copy_bandwidth_gbs, environment, write_json_atomic

    dry = args.dry_run or not torch.cuda.is_available()
    if args.blas != "default" and not dry:
        torch.backends.cuda.preferred_blas_library(args.blas)
    dev = torch.device("cpu" if dry else "cuda")
    dtype = torch.float32 if dry else torch.bfloat16
    model = "tiny-llama" if dry else "llama-3-8b"
    cfg = get_preset(model)
    nsm = 8 if dry else torch.cuda.get_device_properties(dev).multi_processor_count
    l2 = 0 if dry else int(getattr(torch.cuda.get_device_properties(dev), "L2_cache_size", 0))
    tokens, kv_bytes, context = (16, 64 << 10, 32) if dry else (1024, 1 << 30, 4096)
    timer = Timer(dev, warmup=1 if dry else 5, repeats=2 if dry else 20)
    rig = LayerRig(shard_config(cfg, shard(cfg, 1), 5), dev, dtype,
                   num_kv_blocks=(2 * kv_bytes) // (16 * 2 * cfg.num_kv_heads * cfg.head_dim * dtype.itemsize) + 64,
                   max_tokens=max(2 * tokens, 256), num_workspaces=3)
    fractions = (1 / 6, 1 / 4, 1 / 3, 1 / 2, 2 / 3, 5 / 6, 1) if not args.quick else (1 / 4, 1 / 3, 1 / 2, 1)
    budgets = sorted({max(1, round(nsm * f)) for f in fractions})
    res = {"kind": "partition_probe", "model": model, "environment": environment(), "num_sms": nsm,
           "blas": args.blas,
           "methods": {"cublas": has_cublas_carveout(), "green": has_green_contexts() and not dry},
           "errors": [], "gemm_curves": [], "decode_curves": [], "decode_configs": [], "micro_pair": {}}
    t0 = time.perf_counter()

    def attempt(label, fn):
        try:
            return fn()
        except Exception as e:  # a method the card or torch build lacks: recorded, the rest goes on
            res["errors"].append(f"{label}: {type(e).__name__}: {str(e)[:300]}")
            traceback.print_exc()
            return None

    # ---- copy bandwidth (read + write), the yardstick for attention ------------------------------------
    copy_gbs = copy_bandwidth_gbs(str(dev), nbytes=(1 << 30) if not dry else 1 << 18)
    res["copy_gb_s"] = round(copy_gbs, 1)

    # ---- the two workloads, as the engine runs them ----------------------------------------------------
    gate_up = runner_for(rig, "gate_up", {"tokens": tokens}, None, l2)
    down = runner_for(rig, "down", {"tokens": tokens}, None, l2, ws_offset=1)
    flops = 2 * tokens * cfg.hidden_size * 3 * cfg.intermediate_size

    def mlp(budget=None):
        def fn(i):
            with cublas_sm_budget(budget, nsm):
                gate_up(i)
                down(i)
        return fn

    point = decode_point_for_kv(kv_bytes, context, rig.kv_bytes_per_token)
    attn_bytes = point["batch"] * point["context"] * rig.kv_bytes_per_token
    attn_fb = rig.decode_batches(point["batch"], point["context"], 2)
    q = torch.randn(point["batch"], cfg.num_heads, cfg.head_dim, device=dev, dtype=dtype)
    out = torch.empty_like(q)
    kc, vc = rig.model.kv[1]
    kernel = rig.model.k.decode_attention

    def attn(max_programs=None, config=None):
        kw = {"config": config} if config is not None else {}

        def fn(i):
            fb = attn_fb[i % 2]
            kernel(q, kc, vc, fb.decode_block_tables, fb.decode_context_lens, cfg.head_dim ** -0.5, out=out,
                   max_programs=max_programs, **kw)
        return fn

    greens = {}

    def green(n):
        if n not in greens:
            greens[n] = green_context(n, dev)
        return greens[n]

    def on(stream, fn):
        def run(i):
            with torch.cuda.stream(stream):
                fn(i)
        return run

    def timed_on(stream, fn):  # one op alone on a stream (green contexts): fork/join through the current one
        main = torch.cuda.current_stream()

        def run(i):
            stream.wait_stream(main)
            with torch.cuda.stream(stream):
                fn(i)
            main.wait_stream(stream)
        return run

    # ---- 1. per-SM-budget curves -----------------------------------------------------------------------
    for b in budgets:
        st = timer.time(mlp(b if b < nsm else None))
        res["gemm_curves"].append({"method": "cublas", "sms": b, "ms": round(st.ms, 4),
                                   "tflop_s": round(flops / st.ms / 1e9, 1)})
        if res["methods"]["green"]:
            st = attempt(f"green gemm {b}", lambda b=b: timer.time(timed_on(green(b).Stream(), mlp())))
            if st:
                res["gemm_curves"].append({"method": "green", "sms": b, "ms": round(st.ms, 4),
                                           "tflop_s": round(flops / st.ms / 1e9, 1)})
        st = timer.time(attn(b))
        res["decode_curves"].append({"method": "grid", "sms": b, "programs": b, "ms": round(st.ms, 4),
                                     "frac_copy_bw": round(attn_bytes / st.ms / 1e6 / copy_gbs, 3)})
        if res["methods"]["green"]:
            for per_sm in (1, 2, 3):
                st = attempt(f"green attn {b}x{per_sm}",
                             lambda b=b, k=per_sm: timer.time(timed_on(green(b).Stream(), attn(k * b))))
                if st:
                    res["decode_curves"].append({"method": "green", "sms": b, "programs": per_sm * b,
                                                 "ms": round(st.ms, 4),
                                                 "frac_copy_bw": round(attn_bytes / st.ms / 1e6 / copy_gbs, 3)})
    print(f"curves done {time.perf_counter() - t0:.0f}s", flush=True)

    # ---- 2. decode tile configs at a third of the SMs --------------------------------------------------
    third = max(1, nsm // 3)
    configs = [(64, 4, 3), (64, 4, 4), (128, 4, 2), (128, 4, 3), (64, 8, 4), (128, 8, 3), (128, 8, 4),
               (256, 8, 2), (256, 8, 3)]
    if args.quick or dry:
        configs = configs[:3] if dry else configs[1:6]
    for bn, nw, ns in configs:
        c = da.DecodeConfig(block_n=bn, num_warps=nw, num_stages=ns)
        st = attempt(f"decode config {c}", lambda c=c: timer.time(attn(third, c)))
        if st:
            res["decode_configs"].append({"programs": third, "block_n": bn, "num_warps": nw, "num_stages": ns,
                                          "ms": round(st.ms, 4),
                                          "frac_copy_bw": round(attn_bytes / st.ms / 1e6 / copy_gbs, 3)})
    best_cfg = max(res["decode_configs"], key=lambda r: r["frac_copy_bw"], default=None)
    print(f"configs done {time.perf_counter() - t0:.0f}s", flush=True)

    # ---- 3. the micro pair ----------------------------------------------------------------------------
    mlp_alone = timer.time(mlp())
    attn_alone = timer.time(attn())

    def b2b(i):
        mlp()(i)
        attn()(i)

    base = timer.time(b2b)
    pair = res["micro_pair"]
    pair.update(tokens=tokens, kv_gib=round(attn_bytes / 2**30, 3), decode_point=point,
                mlp_ms=round(mlp_alone.ms, 4), attn_ms=round(attn_alone.ms, 4), back_to_back_ms=round(base.ms, 4),
                variants=[])
    hi = torch.cuda.Stream(device=dev, priority=-1) if not dry else None
    lo = torch.cuda.Stream(device=dev, priority=0) if not dry else None

    def variant(name, sms_attn, fa, fb, streams=None):
        ps = attempt(f"pair {name}", lambda: timer.pair(fa, fb, streams=streams))
        if ps:
            pair["variants"].append({"variant": name, "attn_sms": sms_attn, "together_ms": round(ps.together.ms, 4),
                                     "mlp_span_ms": round(ps.a.ms, 4), "attn_span_ms": round(ps.b.ms, 4),
                                     "gain_vs_back_to_back": round(base.ms / ps.together.ms, 4)})

    variant("streams", None, mlp(), attn())
    pair_budgets = [b for b in budgets if b <= nsm // 2] or budgets[:1]
    for c in pair_budgets:
        variant("grid", c, mlp(), attn(c))
        variant("cublas", c, mlp(nsm - c), attn(c))
        variant("cublas_attn_first", c, attn(c), mlp(nsm - c))
        if hi is not None:
            variant("cublas_attn_priority", c, mlp(nsm - c), attn(c), streams=(lo, hi))
        if best_cfg and c == third:
            bc = da.DecodeConfig(block_n=best_cfg["block_n"], num_warps=best_cfg["num_warps"],
                                 num_stages=best_cfg["num_stages"])
            variant("cublas_best_config", c, mlp(nsm - c), attn(c, bc))
        if res["methods"]["green"]:
            for per_sm in (1, 2):
                g_mlp, g_attn = attempt("green ctx", lambda c=c: (green(nsm - c), green(c))) or (None, None)
                if g_mlp is not None:
                    variant(f"green_x{per_sm}", c, mlp(), attn(per_sm * c),
                            streams=(g_mlp.Stream(), g_attn.Stream()))
    print(f"pair done {time.perf_counter() - t0:.0f}s", flush=True)
    if args.power > 0 and not dry:
        c = third
        s_gemm, s_attn = torch.cuda.Stream(device=dev), torch.cuda.Stream(device=dev)
        res["power"] = attempt("power", lambda: power_run(torch, args.power, {
            "gemm_alone": mlp(nsm - c), "attn_alone": attn(c), "back_to_back": b2b,
            "together": concurrently(torch, attn(c), mlp(nsm - c), s_attn, s_gemm)}))
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    best = max(pair["variants"], key=lambda v: v["gain_vs_back_to_back"], default=None)
    pair["best"] = best
    if args.out:
        write_json_atomic(args.out, res)
        attempt("plot", lambda: plot(res, os.path.splitext(args.out)[0] + ".png"))
    print(f"copy {res['copy_gb_s']} GB/s; micro pair back to back {pair['back_to_back_ms']} ms; best "
          f"{best and best['variant']} @ {best and best['attn_sms']} SMs: {best and best['gain_vs_back_to_back']}x")
    for v in pair["variants"]:
        print(f"  {v['variant']:24s} sms={v['attn_sms']} {v['together_ms']:.3f} ms  {v['gain_vs_back_to_back']:.3f}x")
    for r in res["decode_configs"]:
        print(f"  decode {r}")
    for r in res["errors"]:
        print("  error:", r)
    for name, r in (res.get("power") or {}).items():
        if isinstance(r, dict):
            nv = r.get("nvml") or {}
            print(f"  power {name:14s} {r['ms_per_call']:.3f} ms/call  sm clock {nv.get('sm_clock_mhz')}  "
                  f"power {nv.get('power_w')}  reasons {nv.get('reasons')}")


def concurrently(torch, fa, fb, sa, sb):
    """fn(i): fa on stream sa, then fb on stream sb, both after and before the current stream's work."""
    def run(i):
        main = torch.cuda.current_stream()
        sa.wait_stream(main)
        sb.wait_stream(main)
        with torch.cuda.stream(sa):
            fa(i)
        with torch.cuda.stream(sb):
            fb(i)
        main.wait_stream(sa)
        main.wait_stream(sb)
    return run


def power_run(torch, seconds: float, fns: dict) -> dict:
    """Each fn repeated for `seconds` under NVML sampling: ms per call, SM clock, power, throttle reasons.
    Tells whether running two kernels at once costs clock speed (a power cap) rather than SMs."""
    from nanotune.profile.nvml import NvmlSampler

    out = {}
    with NvmlSampler(torch.cuda.current_device(), interval_s=0.02) as nv:
        for name, fn in fns.items():
            for i in range(3):
                fn(i)
            torch.cuda.synchronize()
            with nv.section(name):
                t0, calls = time.perf_counter(), 0
                while time.perf_counter() - t0 < seconds:
                    for _ in range(10):
                        fn(calls)
                        calls += 1
                    torch.cuda.synchronize()
                out[name] = {"ms_per_call": round(1e3 * (time.perf_counter() - t0) / calls, 4), "calls": calls}
        summary = nv.summary()
    for name, r in out.items():
        r["nvml"] = summary.get("sections", {}).get(name)
    out["nvml_available"] = summary.get("available")
    return out


def plot(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(16, 4.5))
    for m in sorted({r["method"] for r in res["gemm_curves"]}):
        rows = [r for r in res["gemm_curves"] if r["method"] == m]
        ax[0].plot([r["sms"] for r in rows], [r["tflop_s"] for r in rows], "o-", label=m)
    ax[0].set(xlabel="SMs given", ylabel="TFLOP/s", title="MLP GEMM pair, 1024 tokens")
    for key in sorted({(r["method"], r["programs"] // r["sms"]) for r in res["decode_curves"]}):
        rows = [r for r in res["decode_curves"] if (r["method"], r["programs"] // r["sms"]) == key]
        ax[1].plot([r["sms"] for r in rows], [r["frac_copy_bw"] for r in rows], "o-",
                   label=f"{key[0]} ({key[1]} prog/SM)")
    ax[1].axhline(0.8, color="grey", ls=":", lw=1)
    ax[1].set(xlabel="SMs given", ylabel="fraction of copy bandwidth", title="decode attention, 1 GiB KV")
    v = res["micro_pair"].get("variants", [])
    labels = [f"{x['variant']}@{x['attn_sms'] or 'all'}" for x in v]
    ax[2].barh(labels, [x["gain_vs_back_to_back"] for x in v])
    ax[2].axvline(1.0, color="k", lw=1)
    ax[2].axvline(1.3, color="grey", ls=":", lw=1)
    ax[2].set(xlabel="back to back / together", title="micro pair: gain over back to back")
    ax[2].tick_params(axis="y", labelsize=7)
    for a in ax[:2]:
        a.legend(fontsize=8)
        a.grid(alpha=0.3)
    gpu = res["environment"].get("gpus", [{}])
    fig.suptitle(f"SM partitioning probe - {res['model']} - {(gpu[0] if gpu else {}).get('name', 'cpu')}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
