"""Check and time the engine's Triton kernels at Llama-3-8B shapes on the local GPU, in one call.

    python scripts/kernel_check.py --out $OUT/kernel_check.json [--quick]
    python scripts/kernel_check.py --dry-run    # CPU, TRITON_INTERPRET=1, tiny shapes

Each kernel: max relative error (max |out - ref| / max |ref|) against its torch reference on fresh random
bf16 inputs, then its median time (triton.testing.do_bench, which flushes L2 before every run; operands are
also larger than L2) and achieved GB/s over the bytes it must move, against the card's copy bandwidth
(a 1 GiB device-to-device copy, read + write) measured in the same run. Decode attention also gets a
per-SM-budget curve (max_programs), a tile-config and a split sweep, and SDPA on the un-paged equivalent
as a peer; prefill attention gets TFLOP/s, a tile sweep and flash SDPA as a peer. Writes JSON with an
environment block and prints a short table last.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import time

SHAPES = {  # Llama-3-8B; --dry-run shrinks everything
    "full": dict(heads=32, kv_heads=8, head_dim=128, hidden=4096, inter=14336, block=16, tokens=16384),
    "dry": dict(heads=8, kv_heads=2, head_dim=32, hidden=64, inter=48, block=16, tokens=8),
}
TOL = 2e-2  # bf16


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_out = os.path.join(os.environ["OUT"], "kernel_check.json") if os.environ.get("OUT") else None
    ap.add_argument("--out", default=default_out, help="JSON path (default $OUT/kernel_check.json)")
    ap.add_argument("--quick", action="store_true", help="fewer decode budgets, configs and cases")
    ap.add_argument("--dry-run", action="store_true", help="CPU + TRITON_INTERPRET=1, tiny shapes")
    return ap.parse_args()


def kernel_environment(torch, dev) -> dict:
    """The one environment block (nanotune.results.environment), plus the device and its L2 size: operands
    larger than L2 are part of what the timings mean."""
    from nanotune.results import environment

    env = {**environment(), "device": str(dev)}
    if dev.type == "cuda":
        env["l2_mib"] = round(getattr(torch.cuda.get_device_properties(dev), "L2_cache_size", 0) / 2**20, 1)
    return env


class Bench:
    """Median ms of fn over repeats (CUDA events via do_bench); on CPU one wall-clock run (meaningless)."""

    def __init__(self, triton, dev, quick, copy_gbs=None):
        self.triton, self.dev, self.quick, self.copy_gbs = triton, dev, quick, copy_gbs

    def ms(self, fn) -> float:
        if self.dev.type != "cuda":
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
        warmup, rep = (5, 25) if self.quick else (10, 50)
        return float(self.triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))

    def row(self, name, fn, nbytes=None, flops=None, **extra) -> dict:
        try:
            ms = self.ms(fn)
        except Exception as e:  # e.g. a tile config that needs more shared memory than the card has
            return {"kernel": name, **extra, "error": f"{type(e).__name__}: {str(e)[:160]}"}
        r = {"kernel": name, **extra, "ms": round(ms, 4)}
        if nbytes is not None:
            r["gb_s"] = round(nbytes / ms / 1e6, 1)
            r["frac_copy_bw"] = round(r["gb_s"] / self.copy_gbs, 3) if self.copy_gbs else None
        if flops is not None:
            r["tflop_s"] = round(flops / ms / 1e9, 1)
        return r


def check(name, out, ref, **extra) -> dict:
    from engine.kernels.testing import max_rel_error

    err = max_rel_error(out, ref)
    return {"kernel": name, **extra, "max_rel_err": err, "ok": err < TOL}


def _elementwise_cases(torch, S, dev, n):
    """-> [(name, triton fn, reference fn, bytes that must move)] on fresh inputs of n tokens."""
    import engine.kernels as K
    from engine.kernels import activation, norm, rope, store_kv

    bf16, H, Hkv, D, bs = torch.bfloat16, S["heads"], S["kv_heads"], S["head_dim"], S["block"]
    rnd = lambda *shape, s=1.0: (torch.randn(*shape, device=dev) * s).to(bf16)  # noqa: E731
    x, r, w, gu = rnd(n, S["hidden"], s=2), rnd(n, S["hidden"], s=2), 1 + rnd(S["hidden"], s=0.1), rnd(
        n, 2 * S["inter"], s=3)
    k, v, q_r, k_r = rnd(n, Hkv, D), rnd(n, Hkv, D), rnd(n, H, D), rnd(n, Hkv, D)
    nblk = 2 * n // bs + 1
    slots = torch.randperm(nblk * bs, device=dev)[:n]
    caches = torch.zeros(4, nblk, Hkv, bs, D, device=dev, dtype=bf16).unbind(0)
    pos = torch.randint(0, 8192, (n,), device=dev)
    llama31 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    cache = K.build_cos_sin_cache(D, 8192, 500000.0, llama31, device=dev)
    qk = lambda: torch.cat([q_r.flatten(), k_r.flatten()])  # noqa: E731

    def rope_ref():  # rope is in place: the reference runs on copies of the same input
        q0, k0 = q_r.clone(), k_r.clone()
        rope.apply_rope_ref(q0, k0, pos, cache)
        return torch.cat([q0.flatten(), k0.flatten()])

    # name, kernel call (what is timed), its output, reference, bytes that must move
    return [
        ("store_kv", lambda: store_kv.store_kv(k, v, caches[0], caches[1], slots), lambda: caches[0],
         lambda: (store_kv.store_kv_ref(k, v, caches[2], caches[3], slots), caches[2])[1], 4 * k.nbytes),
        ("rms_norm", lambda: norm.rms_norm(x, w, 1e-5), None, lambda: norm.rms_norm_ref(x, w, 1e-5),
         2 * x.nbytes),
        ("add_rms_norm", lambda: norm.add_rms_norm(x, r, w, 1e-5)[0], None,
         lambda: norm.add_rms_norm_ref(x, r, w, 1e-5)[0], 4 * x.nbytes),
        ("silu_and_mul", lambda: activation.silu_and_mul(gu), None, lambda: activation.silu_and_mul_ref(gu),
         gu.nbytes * 3 // 2),
        ("apply_rope", lambda: rope.apply_rope(q_r, k_r, pos, cache), qk, rope_ref,
         2 * (q_r.nbytes + k_r.nbytes) + n * D * 4),
    ]


def elementwise(torch, S, dev, bench):
    rows = []
    for name, fn, output, ref_fn, _ in _elementwise_cases(torch, S, dev, min(512, S["tokens"])):
        ref = ref_fn()  # before fn: rope's kernel rewrites its inputs
        out = fn()
        rows.append(check(name, out if output is None else output(), ref, note="check, 512 tokens"))
    for name, fn, _, _, nbytes in _elementwise_cases(torch, S, dev, S["tokens"]):
        rows.append(bench.row(name, fn, nbytes, note=f"{S['tokens']} tokens"))
    return rows


def decode_case(torch, S, dev, ctx_lens, seed):
    from engine.kernels.testing import make_paged_kv

    kc, vc, bt, _, _ = make_paged_kv(ctx_lens, S["kv_heads"], S["head_dim"], S["block"], torch.bfloat16, dev,
                                     spare_blocks=0, seed=seed)
    q = torch.randn(len(ctx_lens), S["heads"], S["head_dim"], device=dev).to(torch.bfloat16)
    ctx = torch.tensor(ctx_lens, dtype=torch.int32, device=dev)
    kv_bytes = sum(ctx_lens) * S["kv_heads"] * S["head_dim"] * 2 * 2  # K and V, bf16
    return dict(args=(q, kc, vc, bt, ctx, S["head_dim"] ** -0.5), nbytes=kv_bytes + 2 * q.nbytes + bt.nbytes,
                desc=f"{len(ctx_lens)} seqs, ctx {min(ctx_lens)}-{max(ctx_lens)}, "
                     f"KV {kv_bytes / 2**30:.2f} GiB")


def decode_section(torch, da, S, dev, bench, quick, dry):
    rng = random.Random(0)
    if dry:
        cases = {"edge": [1, 17, 40, 64], "A": [60] * 4, "B": [rng.randint(1, 90) for _ in range(6)]}
        budgets, configs = [2, 4, None], [da.DecodeConfig(16, 4, 2), da.DecodeConfig(32, 4, 2, 2)]
    else:
        cases = {"edge": [1, 15, 16, 17, 8192] + [rng.randint(1, 8192) for _ in range(11)],
                 "A": [4096] * 64, "B": [rng.randint(512, 4096) for _ in range(256)]}
        budgets = [8, 16, 22, 33, 44, 66, 88, 132, None]
        configs = [da.DecodeConfig(bn, w, st) for bn, w, st in
                   [(64, 4, 3), (64, 4, 4), (128, 4, 3), (128, 8, 3), (64, 8, 4), (32, 4, 4), (128, 4, 2)]]
        if quick:
            cases.pop("B")
            budgets, configs = [16, 33, 44, 66, 132, None], configs[:3]
    checks, summary, curve, sweep = [], [], [], []
    for name, lens in cases.items():
        c = decode_case(torch, S, dev, lens, seed=len(lens))
        ref = da.decode_attention_ref(*c["args"])
        run = functools.partial(da.decode_attention, *c["args"])
        budgets_checked = [None, 44, 8] if name == "edge" else [None, 44]
        variants = [(mp, ns) for mp in budgets_checked for ns in (None, 1, 8)]
        worst = None
        for mp, ns in variants:
            out = torch.full_like(ref, float("nan"))  # poisoned: an unwritten element fails the check
            run(out=out, max_programs=mp, num_splits=ns)
            r = check(f"decode_attention[{name}]", out, ref, max_programs=mp, num_splits=ns)
            checks.append(r)
            worst = r if worst is None or not r["ok"] or r["max_rel_err"] > worst["max_rel_err"] else worst
        summary.append({**worst, "note": f"check {c['desc']}: worst of {len(variants)} (max_programs, "
                        "num_splits) variants"})
        if name == "edge":
            continue
        for mp in budgets:
            curve.append(bench.row("decode", functools.partial(run, max_programs=mp), c["nbytes"], case=name,
                                   desc=c["desc"], max_programs=mp, config="default"))
        if name != "A":
            continue
        for cfg in configs:  # tile sweep at a third of the SMs, all SMs as one program each, and a full grid
            for mp in (44, 132, None):
                fn = functools.partial(run, max_programs=mp, config=cfg)
                try:
                    err = check("decode", fn(), ref)
                except Exception as e:
                    err = {"error": f"{type(e).__name__}: {str(e)[:160]}"}
                sweep.append({**bench.row("decode", fn, c["nbytes"], max_programs=mp, block_n=cfg.block_n,
                                          num_warps=cfg.num_warps, num_stages=cfg.num_stages), **err})
        for ns in (1, 2, 4, 8):
            for mp in (44, None):
                sweep.append(bench.row("decode", functools.partial(run, max_programs=mp, num_splits=ns),
                                       c["nbytes"], max_programs=mp, num_splits=ns))
        if dev.type == "cuda":  # peer: SDPA on the un-paged equivalent (same bytes, contiguous K and V)
            q = c["args"][0]
            B, L, Hkv, D = len(lens), lens[0], S["kv_heads"], S["head_dim"]
            kd, vd = torch.randn(2, B, Hkv, L, D, device=dev, dtype=torch.bfloat16).unbind(0)
            sdpa = functools.partial(torch.nn.functional.scaled_dot_product_attention, q.view(B, -1, 1, D),
                                     kd, vd, enable_gqa=True)
            curve.append(bench.row("sdpa", sdpa, c["nbytes"], case=name, desc="SDPA, un-paged, enable_gqa",
                                   max_programs="sdpa"))
            del kd, vd
    return checks, summary, curve, sweep


def prefill_section(torch, pa, S, dev, bench, quick, dry):
    from engine.kernels.testing import make_paged_kv

    H, D, rows, sweep = S["heads"], S["head_dim"], [], []
    sets = {"fresh 4x2048": [(0, 2048)] * 4, "chunk 4x512 after 4096": [(4096, 512)] * 4}
    configs = [pa.PrefillConfig(r, bn, w, st) for r, bn, w, st in
               [(64, 64, 4, 3), (128, 64, 8, 3), (128, 64, 4, 3), (128, 128, 8, 3), (64, 128, 4, 3),
                (64, 32, 4, 4)]]
    if dry:
        sets = {"fresh": [(0, 20), (0, 5)], "chunked": [(30, 7), (3, 1)]}
        configs = [pa.PrefillConfig(32, 16, 4, 1, 2)] * 2
    for name, chunks in sets.items():
        lens = [p + c for p, c in chunks]
        kc, vc, bt, dk, dv = make_paged_kv(lens, S["kv_heads"], D, S["block"], torch.bfloat16, dev, seed=2)
        q = torch.randn(sum(c for _, c in chunks), H, D, device=dev).to(torch.bfloat16)
        cu = torch.tensor([0] + [sum(c for _, c in chunks[:i + 1]) for i in range(len(chunks))],
                          dtype=torch.int32, device=dev)
        sl = torch.tensor(lens, dtype=torch.int32, device=dev)
        run = functools.partial(pa.prefill_attention, q, kc, vc, bt, sl, cu, D**-0.5, max_seqlen_q=max(lens))
        out = torch.full_like(q, float("nan"))
        run(out=out)
        ref = pa.prefill_attention_ref(q, kc, vc, bt, sl, cu, D**-0.5, max_seqlen_q=max(lens))
        rows.append(check(f"prefill_attention[{name}]", out, ref, note="check"))
        flops = sum(4 * H * D * sum(p + i + 1 for i in range(c)) for p, c in chunks)  # causal: visible keys
        rows.append(bench.row(f"prefill_attention[{name}]", run, flops=flops, note="default config"))
        for cfg in configs[1:] if name.startswith("fresh") and not quick else []:
            sweep.append(bench.row("prefill", functools.partial(run, config=cfg), flops=flops, case=name,
                                   rows=cfg.rows, block_n=cfg.block_n, num_warps=cfg.num_warps,
                                   num_stages=cfg.num_stages))
        if dev.type == "cuda" and all(p == 0 for p, _ in chunks):  # peer: flash SDPA, un-paged, causal
            B, L = len(chunks), chunks[0][1]
            kd, vd = (torch.stack(x).transpose(1, 2).contiguous() for x in (dk, dv))  # [B, Hkv, L, D]
            sdpa = functools.partial(torch.nn.functional.scaled_dot_product_attention,
                                     q.view(B, L, H, D).transpose(1, 2), kd, vd, is_causal=True,
                                     enable_gqa=True)
            rows.append(bench.row(f"sdpa_peer[{name}]", sdpa, flops=flops, note="flash SDPA, un-paged"))
    return rows, sweep


def print_table(result):
    print(f"\n{'kernel':32s} {'rel err':>9s} {'ms':>9s} {'GB/s':>8s} {'%copy':>6s} {'TFLOP/s':>8s}  note")
    for r in result["kernels"]:
        err = "-" if r.get("max_rel_err") is None else f"{r['max_rel_err']:.1e}" + ("" if r["ok"] else "!")
        frac = r.get("frac_copy_bw")
        print(f"{r['kernel']:32s} {err:>9s} {r.get('ms', 0):9.4f} {r.get('gb_s', '-')!s:>8s} "
              f"{'-' if frac is None else f'{100 * frac:.0f}':>6s} {r.get('tflop_s', '-')!s:>8s}  "
              f"{r.get('note', '')}{r.get('error', '')}")
    print(f"\ndecode attention per SM budget (copy bandwidth {result['copy_gb_s']} GB/s):")
    for r in result["decode_curve"]:
        print(f"  [{r['case']}] {r['desc']:42s} max_programs={r['max_programs']!s:>5s} "
              f"{r.get('ms', 0):8.4f} ms"
              f" {r.get('gb_s', '-')!s:>8s} GB/s {r.get('frac_copy_bw', '-')!s:>6s}{r.get('error', '')}")
    for key, best in result["best"].items():
        print(f"best {key}: {json.dumps(best)}")
    bad = [r for r in result["kernels"] if r.get("ok") is False or "error" in r]
    print("CHECKS:", "ALL OK" if not bad else f"{len(bad)} FAILED: " + ", ".join(r["kernel"] for r in bad))


def main():
    args = parse_args()
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
    import torch
    import triton

    from engine.kernels import decode_attention as da
    from engine.kernels import prefill_attention as pa

    dev = torch.device("cpu" if args.dry_run else "cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU: --dry-run runs the code paths on CPU (TRITON_INTERPRET=1)")
    S, t_start = SHAPES["dry" if args.dry_run else "full"], time.time()
    bench = Bench(triton, dev, args.quick)
    result = {"environment": kernel_environment(torch, dev), "shapes": S, "quick": args.quick,
              "timing": "triton.testing.do_bench median, L2 flushed before each run; operands larger than L2",
              "max_rel_err": "max |out - ref| / max |ref| against the torch reference", "tolerance": TOL}
    from nanotune.results import copy_bandwidth_gbs

    copy_gbs = copy_bandwidth_gbs(str(dev), 2**30 if dev.type == "cuda" else 2**20)  # 1 GiB copied, 2 moved
    bench.copy_gbs = result["copy_gb_s"] = round(copy_gbs, 1)
    kernels = elementwise(torch, S, dev, bench)
    checks, summary, curve, dsweep = decode_section(torch, da, S, dev, bench, args.quick, args.dry_run)
    kernels += summary + [{**r, "kernel": f"decode_attention[{r['case']}]", "note": r["desc"] + ", full grid"}
                         for r in curve if r["max_programs"] is None]
    prows, psweep = prefill_section(torch, pa, S, dev, bench, args.quick, args.dry_run)
    result.update(kernels=kernels + prows, decode_checks=checks, decode_curve=curve, decode_sweep=dsweep,
                  prefill_sweep=psweep, best={})
    for mp in (44, 132, None):
        cands = [r for r in dsweep
                 if r["max_programs"] == mp and "block_n" in r and "ms" in r and r.get("ok")]
        if cands:
            result["best"][f"decode config, max_programs={mp}"] = min(cands, key=lambda r: r["ms"])
    if psweep and any("ms" in r for r in psweep):
        result["best"]["prefill config (sweep; default is in the table)"] = min(
            (r for r in psweep if "ms" in r), key=lambda r: r["ms"])
    result["wall_s"] = round(time.time() - t_start, 1)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1, default=str)
        print("wrote", args.out)
    print_table(result)


if __name__ == "__main__":
    main()
