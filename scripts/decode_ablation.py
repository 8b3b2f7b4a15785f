"""Where does decode attention lose bandwidth on few SMs? The engine kernel's loop with pieces switched off.

    PYTHONPATH=. python scripts/decode_ablation.py --out $OUT/decode-ablation.json     # needs a CUDA GPU

A pure streaming read reaches ~80% of copy bandwidth on a third of an H200's SMs (scripts/stream_probe.py),
the decode kernel ~33%. This times, at several program budgets, the decode loop of
engine/kernels/decode_attention.py (one split, llama-3-8b heads, contexts of 4096 over an identity block
table, and one shuffled one) with constexpr switches: page ids through the register window + tl.gather or
computed; the online softmax or none (p = s); V loaded and multiplied or not (K only). Throughput is bytes
actually read over time, as a fraction of the copy bandwidth measured in the same run. Not engine code: a measurement.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling stream_probe's timing helper


@triton.jit
def _ablate(q_ptr, kc_ptr, vc_ptr, bt_ptr, out_ptr, num_seqs, ctx, pages_per_seq,
            stride_cb, stride_ch, stride_ct, NUM_KV_HEADS: tl.constexpr, GROUP: tl.constexpr,
            G_PAD: tl.constexpr, D: tl.constexpr, BS: tl.constexpr, BLOCK_N: tl.constexpr, WINDOW: tl.constexpr,
            GATHER: tl.constexpr, SOFTMAX: tl.constexpr, USE_V: tl.constexpr, FLAT: tl.constexpr):
    pid = tl.program_id(0)
    g = tl.arange(0, G_PAD)
    d = tl.arange(0, D)
    n = tl.arange(0, BLOCK_N)
    pg = tl.arange(0, WINDOW)
    for w in range(pid, num_seqs * NUM_KV_HEADS, tl.num_programs(0)):
        kvh = w % NUM_KV_HEADS
        seq = w // NUM_KV_HEADS
        heads = kvh * GROUP + g
        q = tl.load(q_ptr + (seq * NUM_KV_HEADS * GROUP + heads)[:, None] * D + d[None, :],
                    mask=(g < GROUP)[:, None], other=0.0)
        m_i = tl.full([G_PAD], float("-inf"), tl.float32)
        l_i = tl.zeros([G_PAD], tl.float32)
        acc = tl.zeros([G_PAD, D], tl.float32)
        sacc = tl.zeros([G_PAD, BLOCK_N], tl.float32)
        # FLAT: one loop over the whole context (addresses computed), so the pipeline never drains mid-item
        for w0 in range(0, ctx, ctx if FLAT else WINDOW * BS):
            page0 = w0 // BS
            pages = tl.load(bt_ptr + seq * pages_per_seq + page0 + pg)
            for t0 in range(w0, w0 + (ctx if FLAT else WINDOW * BS), BLOCK_N):
                tok = t0 + n
                if GATHER:
                    blk = tl.gather(pages, tok // BS - page0, axis=0)
                else:
                    blk = seq * pages_per_seq + tok // BS
                off = blk.to(tl.int64) * stride_cb + kvh * stride_ch + (tok % BS) * stride_ct
                k = tl.load(kc_ptr + off[:, None] + d[None, :])
                s = tl.dot(q, tl.trans(k))  # [G_PAD, BLOCK_N]
                if SOFTMAX:
                    m_new = tl.maximum(m_i, tl.max(s, axis=1))
                    alpha = tl.exp2(m_i - m_new)
                    p = tl.exp2(s - m_new[:, None])
                    l_i = l_i * alpha + tl.sum(p, axis=1)
                    m_i = m_new
                else:
                    alpha = tl.full([G_PAD], 1.0, tl.float32)
                    p = s
                if USE_V:
                    v = tl.load(vc_ptr + off[:, None] + d[None, :])
                    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
                else:
                    sacc += p
        res = acc + tl.sum(sacc, axis=1)[:, None] + l_i[:, None]
        tl.store(out_ptr + (seq * NUM_KV_HEADS * GROUP + heads)[:, None] * D + d[None, :], res,
                 mask=(g < GROUP)[:, None])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_out = os.path.join(os.environ["OUT"], "decode-ablation.json") if os.environ.get("OUT") else None
    ap.add_argument("--out", default=default_out)
    args = ap.parse_args()
    from stream_probe import median_ms as bench

    from nanotune.results import copy_bandwidth_gbs, environment, write_json_atomic

    dev = torch.device("cuda")
    nsm = torch.cuda.get_device_properties(dev).multi_processor_count

    copy_gbs = copy_bandwidth_gbs("cuda")
    seqs, ctx, hkv, group, d, bs = 64, 4096, 8, 4, 128, 16
    pages = ctx // bs
    q = torch.randn(seqs, hkv * group, d, device=dev, dtype=torch.bfloat16)
    kc = torch.randn(seqs * pages, hkv, bs, d, device=dev, dtype=torch.bfloat16)
    vc = torch.randn_like(kc)
    identity = torch.arange(seqs * pages, device=dev, dtype=torch.int32)
    shuffled = torch.randperm(seqs * pages, device=dev, dtype=torch.int32)  # pages as a block manager hands them
    out = torch.empty(seqs, hkv * group, d, device=dev, dtype=torch.float32)
    res = {"kind": "decode_ablation", "environment": environment(), "copy_gb_s": round(copy_gbs, 1), "rows": [],
           "errors": []}
    budgets = sorted({round(nsm / 3), round(nsm * 2 / 3), nsm})
    tiles = [(128, 4, 3), (128, 8, 3), (64, 4, 4)]
    # (gather, softmax, use_v, flat). Gathered page ids with V switched off hit an illegal address on an
    # H200 (triton 3.6; fine under the interpreter), which poisons the CUDA context: those run last.
    cases = [(True, True, True, False), (False, True, True, False), (False, True, True, True),
             (True, False, True, False), (False, False, True, False), (False, False, True, True),
             (False, True, False, False), (False, True, False, True), (False, False, False, True),
             (True, True, True, "shuffled"), (True, True, False, False)]
    for (gather, softmax, use_v, flat), (bn, nw, ns) in itertools.product(cases, tiles):
        bt = shuffled if flat == "shuffled" else identity
        flat = flat is True
        nbytes = (2 if use_v else 1) * kc.numel() * 2
        for p in budgets:
            try:
                ms = bench(_ablate[(p,)], q, kc, vc, bt, out, seqs, ctx, pages, kc.stride(0), kc.stride(1),
                           kc.stride(2), NUM_KV_HEADS=hkv, GROUP=group, G_PAD=16, D=d, BS=bs, BLOCK_N=bn,
                           WINDOW=128, GATHER=gather, SOFTMAX=softmax, USE_V=use_v, FLAT=flat, num_warps=nw,
                           num_stages=ns)
            except Exception as e:
                res["errors"].append(f"{gather, softmax, use_v, flat, bn, nw, ns}: {type(e).__name__}: {e}"[:300])
                break
            row = {"gather": gather, "softmax": softmax, "use_v": use_v, "flat": flat,
                   "pages": "shuffled" if bt is shuffled else "identity", "block_n": bn, "num_warps": nw,
                   "num_stages": ns, "programs": p, "ms": round(ms, 4),
                   "frac_copy_bw": round(nbytes / ms / 1e6 / copy_gbs, 3)}
            res["rows"].append(row)
            print(row, flush=True)
    if args.out:
        write_json_atomic(args.out, res)


if __name__ == "__main__":
    main()
