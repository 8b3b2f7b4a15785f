"""scripts/power_bound.py end to end on CPU (tiny-llama, a few requests): the lead's one GPU call runs the
same code with bigger numbers."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_power_bound_smoke(tmp_path):
    cmd = [sys.executable, str(ROOT / "scripts" / "power_bound.py"), "--smoke", "--workloads", "c1024x512,sharegpt:2",
           "--plans", "sequential,nb2", "--out", str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads((tmp_path / "power-bound.json").read_text())
    assert out["schema"] == "nanotune.power-bound/1" and out["environment"]["torch"]
    assert (tmp_path / "power-bound.png").exists() and out["figure"] == "power-bound.png"
    bf16 = out["kv"]["bf16"]["workloads"]
    assert set(bf16) == {"c1024x512", "sharegpt"}
    for w, entry in bf16.items():
        assert set(entry["plans"]) == {"sequential", "nb2"}
        for r_ in entry["plans"].values():
            m = r_["metrics"]
            assert m["completed"] == (3 if w == "c1024x512" else 2) and m["failed"] == 0
            assert m["efficiency"] > 0 and m["bound_total_token_throughput"] > 0
            assert m["efficiency_vs_bound"] == m["total_token_throughput"] / m["bound_total_token_throughput"]
            assert r_["bound"]["inputs"]["kv_dtype_bytes"] == 2
        assert entry["best_vs_sequential"]["plan"] == "nb2"
    fp8 = out["kv"]["fp8"]
    assert fp8["available"] or "kv_cache_dtype" in fp8["why"]  # recorded either way, never silently dropped
