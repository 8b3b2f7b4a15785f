"""The peak of a GPU that is not on this machine (an endpoint's), from a committed reference profile:
`nanotune bench --endpoint URL --gpu h200` takes the bf16 GEMM peak that `nanotune profile` measured on that
kind of card (results/reference/<gpu>/profile-*.json, `peaks.bf16_tflops`)."""

from __future__ import annotations

import json
from pathlib import Path

from nanotune.errors import UserError
from nanotune.results.peak import PeakFlops
from nanotune.search.resolve import gpu_slug


def reference_profiles(gpu: str, results_dir: str | None = None) -> list[Path]:
    """Profiles committed for this kind of GPU, in every reference folder (search.reference.reference_dirs:
    the results root in use, this checkout's, the installed package's)."""
    from nanotune.search.reference import reference_dirs

    seen, out = set(), []
    for root in reference_dirs(results_dir):
        for p in sorted((root / gpu_slug(gpu)).glob("profile-*.json")):
            if p.resolve() not in seen:
                seen.add(p.resolve())
                out.append(p)
    return out


def reference_peak(gpu: str, model: str | None = None, results_dir: str | None = None) -> PeakFlops:
    """The GEMM peak of the newest reference profile for `gpu` (one of `model` first, if there is one)."""
    cands = []
    for p in reference_profiles(gpu, results_dir):
        try:
            d = json.loads(p.read_text())
            tflops = float(d["peaks"]["bf16_tflops"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        cands.append((d.get("model") == model, str(d.get("created") or ""), p, tflops, d["peaks"].get("gemm")))
    if not cands:
        from nanotune.search.reference import list_references

        known = sorted({r.gpu for r in list_references(results_dir)})
        raise UserError(f"--gpu {gpu}: no reference profile with a GEMM peak under results/reference/"
                        f"{gpu_slug(gpu)}/ (profiles exist for: {', '.join(known) or 'none'}); "
                        "pass --peak-tflops instead")
    _, _, path, tflops, what = max(cands)
    return PeakFlops(flops=tflops * 1e12, device=gpu_slug(gpu), dtype="bfloat16", shape=(0, 0, 0), num_repeats=0,
                     label=f"reference profile {path.name} ({gpu_slug(gpu)}): {what or 'bf16 GEMM'} = "
                           f"{tflops:g} TFLOP/s (--gpu)", source="reference")
