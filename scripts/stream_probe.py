"""How many SMs does reading KV at full bandwidth take? Streaming reads and decode attention per SM budget.

    PYTHONPATH=. python scripts/stream_probe.py --out $OUT/stream-probe.json     # needs a CUDA GPU (Hopper for TMA)

Issue 4 asks for decode attention at >= 80% of copy bandwidth on a third of the SMs. This measures the
ceiling under that: a persistent Triton kernel that only reads 1 GiB of bf16 rows (tiles of ROWS x 128,
summed so nothing is optimized away), with P programs, loading either through pointers (cp.async, what the
decode kernel does today) or through a TMA tensor descriptor, over tiles in order (dense) or in a shuffled
page order read from an index array (paged, like a block table). Then the engine's decode kernel at KV page
sizes 16, 64 and 128 tokens (bigger pages = longer contiguous runs per load) at the same budgets.
Each figure is the fraction of the card's copy bandwidth (1 GiB device copy, read + write) measured now.
"""

from __future__ import annotations

import argparse
import os
import traceback

import torch
import triton
import triton.language as tl


@triton.jit
def _read_ptr(x_ptr, idx_ptr, out_ptr, num_tiles, PAGED: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr,
              STAGES: tl.constexpr):
    pid = tl.program_id(0)
    r = tl.arange(0, ROWS)
    c = tl.arange(0, COLS)
    acc = tl.zeros([ROWS, COLS], tl.float32)
    for t in tl.range(pid, num_tiles, tl.num_programs(0), num_stages=STAGES):
        tile = tl.load(idx_ptr + t) if PAGED else t
        acc += tl.load(x_ptr + (tile.to(tl.int64) * ROWS + r)[:, None] * COLS + c[None, :]).to(tl.float32)
    tl.store(out_ptr + pid * COLS + c, tl.sum(acc, 0))


@triton.jit
def _read_tma(desc, idx_ptr, out_ptr, num_tiles, PAGED: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr,
              STAGES: tl.constexpr):
    pid = tl.program_id(0)
    c = tl.arange(0, COLS)
    acc = tl.zeros([ROWS, COLS], tl.float32)
    for t in tl.range(pid, num_tiles, tl.num_programs(0), num_stages=STAGES):
        tile = tl.load(idx_ptr + t) if PAGED else t
        acc += desc.load([tile * ROWS, 0]).to(tl.float32)
    tl.store(out_ptr + pid * COLS + c, tl.sum(acc, 0))


def median_ms(fn, *a, **kw) -> float:
    """Median ms of fn(*a, **kw) (triton's do_bench: L2 flushed between runs)."""
    return float(triton.testing.do_bench(lambda: fn(*a, **kw), warmup=10, rep=40, return_mode="median"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_out = os.path.join(os.environ["OUT"], "stream-probe.json") if os.environ.get("OUT") else None
    ap.add_argument("--out", default=default_out)
    ap.add_argument("--only-variants", action="store_true", help="skip the reads and page sizes")
    args = ap.parse_args()
    from engine.kernels.decode_attention import decode_attention
    from nanotune.results import copy_bandwidth_gbs, environment, write_json_atomic

    dev = torch.device("cuda")
    nsm = torch.cuda.get_device_properties(dev).multi_processor_count
    res = {"kind": "stream_probe", "environment": environment(), "num_sms": nsm, "reads": [], "decode": [],
           "errors": []}
    bench = median_ms
    copy_gbs = copy_bandwidth_gbs("cuda")
    res["copy_gb_s"] = round(copy_gbs, 1)
    cols, nbytes = 128, 1 << 30
    budgets = sorted({max(1, round(nsm * f)) for f in (1 / 6, 1 / 4, 1 / 3, 1 / 2, 2 / 3, 1)})
    if not args.only_variants:
        measure_reads_and_pages(res, bench, budgets, copy_gbs, nsm, cols, nbytes, dev, decode_attention)
    res["variants"] = decode_variants(bench, budgets, copy_gbs, res["errors"])
    if args.out:
        write_json_atomic(args.out, res)


def measure_reads_and_pages(res, bench, budgets, copy_gbs, nsm, cols, nbytes, dev, decode_attention) -> None:
    x = torch.randn(nbytes // 2 // cols, cols, device=dev, dtype=torch.bfloat16)
    out = torch.empty(4 * nsm, cols, device=dev)
    for rows in (64, 128):
        tiles = x.shape[0] // rows
        perm = torch.randperm(tiles, device=dev, dtype=torch.int32)
        try:
            from triton.tools.tensor_descriptor import TensorDescriptor

            desc = TensorDescriptor.from_tensor(x, [rows, cols])
        except Exception as e:
            desc = None
            res["errors"].append(f"TMA descriptor: {type(e).__name__}: {e}"[:300])
        for how in ("ptr", "tma"):
            for paged in (False, True):
                for stages in (3, 4):
                    for p in budgets:
                        if how == "tma" and desc is None:
                            continue
                        kernel, first = (_read_ptr, x) if how == "ptr" else (_read_tma, desc)
                        try:
                            ms = bench(kernel[(p,)], first, perm, out, tiles, PAGED=paged, ROWS=rows, COLS=cols,
                                       STAGES=stages, num_warps=4)
                        except Exception as e:
                            res["errors"].append(f"{how} rows={rows} stages={stages}: {type(e).__name__}: {e}"[:300])
                            traceback.print_exc()
                            break
                        res["reads"].append({"load": how, "paged": paged, "rows": rows, "stages": stages,
                                             "programs": p, "ms": round(ms, 4),
                                             "frac_copy_bw": round(nbytes / ms / 1e6 / copy_gbs, 3)})
                        print(res["reads"][-1], flush=True)
    del x
    # the engine's decode kernel over ~1 GiB of KV (llama-3-8b: 8 KV heads x 128), pages of 16/64/128 tokens
    seqs, ctx, hkv, heads, d = 64, 4096, 8, 32, 128
    q = torch.randn(seqs, heads, d, device=dev, dtype=torch.bfloat16)
    for block in (16, 64, 128):
        nblk = seqs * ctx // block
        kc = torch.randn(nblk, hkv, block, d, device=dev, dtype=torch.bfloat16)
        vc = torch.randn_like(kc)
        bt = torch.randperm(nblk, device=dev, dtype=torch.int32).view(seqs, ctx // block)
        lens = torch.full((seqs,), ctx, device=dev, dtype=torch.int32)
        kv_bytes = 2 * kc.numel() * 2
        for p in budgets:
            try:
                ms = bench(decode_attention, q, kc, vc, bt, lens, d ** -0.5, max_programs=p)
            except Exception as e:
                res["errors"].append(f"decode block={block} programs={p}: {type(e).__name__}: {e}"[:300])
                continue
            res["decode"].append({"block_size": block, "programs": p, "ms": round(ms, 4),
                                  "frac_copy_bw": round(kv_bytes / ms / 1e6 / copy_gbs, 3)})
            print(res["decode"][-1], flush=True)
        del kc, vc


def decode_variants(bench, budgets, copy_gbs, errors) -> list[dict]:
    """The decode kernel as shipped (and the committed one, when the caller put it beside the working copy as
    engine/kernels/decode_attention_old.py), each checked against the torch reference first, over tile configs
    and program budgets (~1 GiB of KV). A token-major variant (tensor cores reading K/V from shared memory) was
    measured here too (commit 751c813) and removed: 0.355 of copy bandwidth at 44 programs against 0.369 for the
    unmasked-tile kernel (results/reference/h200/decode-variants-after-unmasked-tiles.json)."""
    from engine.kernels.decode_attention import DecodeConfig, decode_attention, decode_attention_ref
    from engine.kernels.testing import max_rel_error

    dev = torch.device("cuda")
    seqs, ctx, hkv, heads, d, block = 64, 4096, 8, 32, 128, 16
    nblk = seqs * ctx // block
    q = torch.randn(seqs, heads, d, device=dev, dtype=torch.bfloat16)
    kc = torch.randn(nblk, hkv, block, d, device=dev, dtype=torch.bfloat16)
    vc = torch.randn_like(kc)
    bt = torch.randperm(nblk, device=dev, dtype=torch.int32).view(seqs, ctx // block)
    lens = torch.randint(ctx // 2, ctx + 1, (seqs,), device=dev, dtype=torch.int32)
    kv_bytes = 2 * 2 * hkv * d * int(lens.sum())
    ref = decode_attention_ref(q[:8], kc, vc, bt[:8], lens[:8], d ** -0.5)
    rows = []
    kernels = [("rowmajor", decode_attention)]
    try:  # the committed kernel, when the caller put it beside the working one: same-run before/after
        from engine.kernels.decode_attention_old import decode_attention as old

        kernels.insert(0, ("rowmajor_old", old))
    except ImportError:
        pass
    for name, fn in kernels:
        for bn, nw, ns in ((64, 4, 2), (64, 4, 3), (64, 4, 4), (128, 4, 2), (128, 4, 3), (128, 8, 2), (128, 8, 3)):
            cfg = DecodeConfig(block_n=bn, num_warps=nw, num_stages=ns)
            try:
                err = max_rel_error(fn(q[:8], kc, vc, bt[:8], lens[:8], d ** -0.5, config=cfg, max_programs=44), ref)
            except Exception as e:
                errors.append(f"{name} {cfg}: {type(e).__name__}: {e}"[:300])
                continue
            for p in budgets:
                ms = bench(fn, q, kc, vc, bt, lens, d ** -0.5, config=cfg, max_programs=p)
                rows.append({"kernel": name, "block_n": bn, "num_warps": nw, "num_stages": ns, "programs": p,
                             "max_rel_err": err, "ms": round(ms, 4),
                             "frac_copy_bw": round(kv_bytes / ms / 1e6 / copy_gbs, 3)})
                print(rows[-1], flush=True)
    return rows


if __name__ == "__main__":
    main()
