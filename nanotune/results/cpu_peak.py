"""The CPU's peak, measured once per machine and kept in a file, so two CPU results are comparable.

A CPU GEMM's rate moves with whatever else the machine runs (0.1-0.3 TFLOP/s between identical runs on a
shared 2-core box): re-measured every run, it made "% of optimal" of two CPU runs incomparable. The first
CPU run measures it and writes it to $NANOTUNE_CACHE (default ~/.cache/nanotune)/cpu-peak.json keyed by CPU
model, torch version and thread count; later runs reuse it and say so in the peak's label. Delete the file
to measure again. GPU peaks are still measured every run (same card, same run: clocks and power matter).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from nanotune.results.peak import PeakFlops, peak_flops

CACHE_ENV = "NANOTUNE_CACHE"


def cache_file() -> Path:
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "nanotune"
    return Path(root) / "cpu-peak.json"


def _key() -> str:
    import torch

    from nanotune.results.environment import environment

    return f"{environment().get('cpu')}|torch {torch.__version__}|{torch.get_num_threads()} threads"


def cpu_peak() -> PeakFlops:
    """The cached peak of this CPU at this thread count, measured and cached when there is none."""
    from nanotune.results.store import write_json_atomic

    path, key = cache_file(), _key()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    entry = cached.get(key) if isinstance(cached, dict) else None
    if isinstance(entry, dict) and isinstance(entry.get("flops"), (int, float)) and entry["flops"] > 0:
        return PeakFlops(flops=float(entry["flops"]), device="cpu", dtype=entry.get("dtype", "float32"),
                         shape=tuple(entry.get("shape", (0, 0, 0))), num_repeats=int(entry.get("num_repeats", 0)),
                         label=f"{entry.get('label', 'CPU GEMM')}; measured {entry.get('measured', '?')}, "
                               f"cached in {path} (delete it to re-measure)", source="cached")
    peak = peak_flops("cpu")
    import time

    entry = {**peak.to_dict(), "measured": time.strftime("%Y-%m-%d %H:%M")}
    try:
        write_json_atomic(path, {**(cached if isinstance(cached, dict) else {}), key: entry})
        where = f"cached in {path}"
    except OSError as e:
        where = f"not cached ({e.strerror or e})"
    return replace(peak, label=f"{peak.label}; {where}")
