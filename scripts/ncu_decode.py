"""Launch the engine's decode kernel a few times at a program budget, for Nsight Compute (ncu) to profile.

    ncu -k regex:_decode_kernel --launch-skip 3 --launch-count 1 --section WarpStateStats \
        python scripts/ncu_decode.py --programs 44
"""

from __future__ import annotations

import argparse

import torch

from engine.kernels.decode_attention import decode_attention


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--programs", type=int, default=44)
    args = ap.parse_args()
    dev = torch.device("cuda")
    seqs, ctx, hkv, heads, d, bs = 64, 4096, 8, 32, 128, 16  # ~1 GiB of llama-3-8b KV, one layer
    nblk = seqs * ctx // bs
    q = torch.randn(seqs, heads, d, device=dev, dtype=torch.bfloat16)
    kc = torch.randn(nblk, hkv, bs, d, device=dev, dtype=torch.bfloat16)
    vc = torch.randn_like(kc)
    bt = torch.randperm(nblk, device=dev, dtype=torch.int32).view(seqs, ctx // bs)
    lens = torch.full((seqs,), ctx, device=dev, dtype=torch.int32)
    for _ in range(5):
        decode_attention(q, kc, vc, bt, lens, d ** -0.5, max_programs=args.programs)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
