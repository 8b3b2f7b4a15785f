"""Check and time every decode-attention variant (split, tma; bf16 and fp8 KV) at Llama-3-8B shapes, in one call.

    PYTHONPATH=. python scripts/decode_tma_check.py                 # GPU; JSON to $OUT/decode_tma_check.json
    PYTHONPATH=. python scripts/decode_tma_check.py --smoke --out /tmp/x.json   # CPU, TRITON_INTERPRET=1, tiny

Correctness: each variant and tile config against the torch reference (decode_attention_ref) on fresh random
inputs with ragged lengths and NaN in every unwritten cache slot, and on the timed problem itself.
Timing: triton.testing.do_bench median (L2 flushed between runs) over 1 GiB of paged KV (bf16; the fp8 rows
read the same tokens in half the bytes) in shuffled pages, for each program budget (max_programs; "full" =
one program per work item) and tile/stage config. Effective TB/s = KV bytes the kernel must read / time.
Prints one table (TB/s per variant/config and budget) and writes JSON with the environment block.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

if "--smoke" in sys.argv:  # must precede the first triton import
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

from engine.kernels import decode_attention as da  # noqa: E402
from engine.kernels import decode_attention_tma as dt  # noqa: E402
from engine.kernels.testing import make_paged_kv, max_rel_error  # noqa: E402

FULL = dict(heads=32, kv_heads=8, head_dim=128, block=16, seqs=64, context=4096,  # 64 x 4096 x 4 KB = 1 GiB
            budgets=[22, 33, 44, 66, 132, None],
            # (kv heads per box, warps, stages, min query rows, warp-specialized). min rows 16: mma.sync, K/V
            # through registers; 64: wgmma from shared memory. Warp-specialized last (the newest compiler path:
            # if one fails to compile it is recorded, and the rest has run). Over the card's shared memory:
            # recorded as an error row.
            tma=[(8, 8, 3, 16, False), (8, 4, 3, 16, False), (8, 8, 4, 16, False), (4, 4, 3, 16, False),
                 (4, 4, 4, 16, False),
                 (8, 4, 2, 64, False), (8, 8, 2, 64, False), (8, 4, 3, 64, False), (8, 8, 3, 64, False),
                 (4, 4, 3, 64, False), (4, 4, 4, 64, False), (4, 8, 4, 64, False),
                 (8, 4, 3, 64, True), (8, 4, 2, 64, True)],
            # fp8 boxes are half the bytes: deeper pipelines fit; a short list keeps the run under 3 minutes
            tma_fp8=[(8, 4, 4, 64, False), (8, 8, 4, 64, False), (8, 4, 3, 64, False), (8, 8, 4, 16, False)])
QUICK = dict(FULL, budgets=[44, 132, None], tma=[(8, 4, 3, 64, False), (8, 8, 3, 16, False), (4, 4, 4, 64, False)],
             tma_fp8=[(8, 4, 4, 64, False)])
SMOKE = dict(heads=8, kv_heads=2, head_dim=32, block=16, seqs=3, context=80, budgets=[2, None],
             tma=[(2, 4, 2, 16, False), (1, 4, 3, 64, True)], tma_fp8=[(2, 4, 2, 16, False)])
MAX_REL_ERR = {torch.bfloat16: 2e-2, torch.float32: 1e-4}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_out = os.path.join(os.environ["OUT"], "decode_tma_check.json") if os.environ.get("OUT") else None
    ap.add_argument("--out", default=default_out, help="JSON path (default $OUT/decode_tma_check.json)")
    ap.add_argument("--smoke", action="store_true", help="CPU + TRITON_INTERPRET=1, tiny shapes, untimed")
    ap.add_argument("--quick", action="store_true", help="three TMA configs, budgets 44, 132 and full")
    return ap.parse_args(argv)


def variants(shape, fp8: bool) -> list[tuple[str, dict, object]]:
    """(name, config fields, fn(q, kc, vc, bt, ctx, scale, **kw)) for every kernel and tile config."""
    out = [("split", {}, da.decode_attention), ("tma-default", {}, dt.decode_attention_tma)]
    for hpt, nw, ns, rows, ws in shape["tma_fp8" if fp8 else "tma"]:
        cfg = dt.TmaDecodeConfig(heads_per_tile=hpt, num_warps=nw, num_stages=ns, min_rows=rows, warp_specialize=ws)
        fn = functools.partial(dt.decode_attention_tma, config=cfg)
        out.append((f"tma-h{hpt}-w{nw}-s{ns}-m{rows}" + ("-ws" if ws else ""),
                    {"heads_per_tile": hpt, "num_warps": nw, "num_stages": ns, "min_rows": rows,
                     "warp_specialize": ws}, fn))
    return out


def quantize(cache: torch.Tensor):
    """bf16 cache -> (e4m3 cache, per-kv-head fp32 scales): amax / 448 per head, as a calibration would."""
    amax = cache.float().abs().nan_to_num(0.0).amax(dim=(0, 2, 3)).clamp_min(1e-6)  # [Hkv]
    scale = amax / torch.finfo(torch.float8_e4m3fn).max
    return (cache.float() / scale.view(1, -1, 1, 1)).to(torch.float8_e4m3fn), scale


def check(fn, shape, dtype, dev, fp8: bool, seed: int) -> float:
    """Max relative error against the reference on ragged lengths (1 token, page edges, splits)."""
    torch.manual_seed(seed)
    lens = [1, 15, 16, 17, shape["context"] - 3, 2 * shape["block"] + 5]
    kc, vc, bt, _, _ = make_paged_kv(lens, shape["kv_heads"], shape["head_dim"], shape["block"], dtype, dev)
    q = torch.randn(len(lens), shape["heads"], shape["head_dim"], device=dev).to(dtype)
    ctx = torch.tensor(lens, dtype=torch.int32, device=dev)
    kw = {}
    if fp8:
        (kc, ks), (vc, vs) = quantize(kc), quantize(vc)
        kw = {"k_scale": ks, "v_scale": vs}
    ref = da.decode_attention_ref(q, kc, vc, bt, ctx, shape["head_dim"] ** -0.5, **kw)
    err = 0.0
    for splits, programs in [(None, None), (1, None), (3, 5)]:
        out = torch.full_like(q, float("nan"))
        fn(q, kc, vc, bt, ctx, shape["head_dim"] ** -0.5, out=out, num_splits=splits, max_programs=programs, **kw)
        err = max(err, max_rel_error(out, ref))
    return err


def timed_problem(shape, dtype, dev, seed: int):
    s, c, hkv, bs, d = shape["seqs"], shape["context"], shape["kv_heads"], shape["block"], shape["head_dim"]
    gen = torch.Generator(device=dev).manual_seed(seed)
    pages = c // bs
    kc = torch.randn(s * pages, hkv, bs, d, generator=gen, device=dev).to(dtype)
    vc = torch.randn(s * pages, hkv, bs, d, generator=gen, device=dev).to(dtype)
    bt = torch.randperm(s * pages, generator=gen, device=dev).to(torch.int32).view(s, pages)
    q = torch.randn(s, shape["heads"], d, generator=gen, device=dev).to(dtype)
    ctx = torch.full((s,), c, dtype=torch.int32, device=dev)
    return q, kc, vc, bt, ctx


def main(argv=None) -> dict:
    args = parse_args(argv)
    import triton

    from nanotune.results import copy_bandwidth_gbs, environment, write_json_atomic

    dev = "cpu" if args.smoke else "cuda"
    shape = SMOKE if args.smoke else QUICK if args.quick else FULL
    t_start = time.perf_counter()
    dtype = torch.float32 if args.smoke else torch.bfloat16
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("decode_tma_check: needs a CUDA GPU (or --smoke)")
    res = {"kind": "decode_tma_check", "environment": environment(), "shape": {k: v for k, v in shape.items()
           if not k.startswith("tma")}, "dtype": str(dtype), "copy_gb_s": None, "rows": [], "errors": []}
    if not args.smoke:
        res["copy_gb_s"] = round(copy_bandwidth_gbs("cuda"), 1)
    q, kc, vc, bt, ctx = timed_problem(shape, dtype, dev, seed=1)
    scale = shape["head_dim"] ** -0.5
    (kc8, ks), (vc8, vs) = quantize(kc), quantize(vc)
    refs = {False: da.decode_attention_ref(q, kc, vc, bt, ctx, scale),
            True: da.decode_attention_ref(q, kc8, vc8, bt, ctx, scale, k_scale=ks, v_scale=vs)}
    for fp8 in (False, True):
        k_, v_, kw = (kc8, vc8, {"k_scale": ks, "v_scale": vs}) if fp8 else (kc, vc, {})
        nbytes = k_.numel() * k_.element_size() * 2
        for name, cfg, fn in variants(shape, fp8):
            row = {"variant": name + ("-fp8" if fp8 else ""), "kv_dtype": "fp8_e4m3" if fp8 else str(dtype),
                   **cfg, "kv_bytes": nbytes, "tb_s": {}}
            try:
                row["max_rel_err_ragged"] = check(fn, shape, dtype, dev, fp8, seed=len(res["rows"]) + 2)
                out = fn(q, k_, v_, bt, ctx, scale, **kw)
                row["max_rel_err_timed"] = max_rel_error(out, refs[fp8])
            except Exception as e:  # a config over the card's shared memory, or a kernel bug: record, go on
                res["errors"].append(f"{row['variant']}: {type(e).__name__}: {str(e)[:300]}")
                res["rows"].append(row)
                continue
            row["ok"] = max(row["max_rel_err_ragged"], row["max_rel_err_timed"]) <= MAX_REL_ERR[dtype]
            for p in shape["budgets"]:
                key = str(p) if p else "full"
                if args.smoke:
                    row["tb_s"][key] = None  # the interpreter's time means nothing
                    continue
                try:
                    run = functools.partial(fn, q, k_, v_, bt, ctx, scale, max_programs=p, **kw)
                    ms = triton.testing.do_bench(run, warmup=10, rep=40, return_mode="median")
                    row["tb_s"][key] = round(nbytes / ms / 1e9, 3)
                except Exception as e:
                    res["errors"].append(f"{row['variant']} P={key}: {type(e).__name__}: {str(e)[:200]}")
            row["elapsed_s"] = round(time.perf_counter() - t_start, 1)
            res["rows"].append(row)
            print_row(row, shape)
            if args.out:  # after every row: a crash later (a compiler abort) keeps what ran
                write_json_atomic(args.out, res)
    best = {}
    for row in res["rows"]:
        for key, tbs in row["tb_s"].items():
            if tbs is not None and row.get("ok") and tbs > best.get(f"{row['kv_dtype']} P={key}", (0, ""))[0]:
                best[f"{row['kv_dtype']} P={key}"] = (tbs, row["variant"])
    res["best"] = {k: {"tb_s": v[0], "variant": v[1]} for k, v in best.items()}
    for line in res["errors"]:
        print("error:", line)
    for k, v in res["best"].items():
        print(f"best {k}: {v['tb_s']} TB/s ({v['variant']})")
    if args.out:
        write_json_atomic(args.out, res)
    return res


def print_row(row, shape) -> None:
    keys = [str(p) if p else "full" for p in shape["budgets"]]
    if not hasattr(print_row, "done"):
        print(f"{'variant':<24}{'ok':>4}{'err':>9}" + "".join(f"{'P=' + k:>8}" for k in keys) + "  (TB/s)")
        print_row.done = True
    err = max(row.get("max_rel_err_ragged", 0), row.get("max_rel_err_timed", 0))
    cells = "".join(f"{row['tb_s'].get(k) or '-':>8}" for k in keys)
    print(f"{row['variant']:<24}{'y' if row.get('ok') else 'n':>4}{err:>9.1e}{cells}  {row['elapsed_s']:>6}s",
          flush=True)


if __name__ == "__main__":
    result = main()
    wrong = [r["variant"] for r in result["rows"] if not r.get("ok")]
    if result["errors"] or wrong:  # recorded in the JSON; a failed check or kernel error exits 1
        sys.exit(f"decode_tma_check: {len(result['errors'])} errors, variants off their reference: {wrong}")
