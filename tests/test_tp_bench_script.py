"""scripts/tp_bench.py end to end on CPU (gloo, tiny-llama, TP 1 and 2): what the multi-GPU runs will run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_tp_bench_smoke_writes_every_figure(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "tp_bench.py"), "--smoke", "--out", str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    d = json.loads((tmp_path / "tp-bench.json").read_text())
    assert d["environment"] and d["peak"]["flops"] > 0
    assert len(d["runs"]) == 2 * 2 * 2  # TP x plans x traces
    for r in d["runs"]:
        m = r["result"]["metrics"]
        assert m["completed"] == d["num_requests"] and m["failed"] == 0 and m["efficiency"] > 0
        assert r["result"]["params_per_gpu"] * r["tp"] >= 0.99 * d["runs"][0]["result"]["params_per_gpu"]
    one, two = d["per_tp"]["1"], d["per_tp"]["2"]
    assert one["tokens_digest"] == two["tokens_digest"]  # same model, same greedy tokens at TP 2
    assert all(v["allreduce_share_of_iteration"] < 0.01 for v in one["op_shares"].values())  # no-ops at TP 1
    assert all(0 < v["allreduce_share_of_iteration"] < 1 for v in two["op_shares"].values())
    assert set(d["ratios"]["tp_over_tp1"]) and set(d["ratios"]["plan_over_sequential"])
    assert all(r["result"].get("rank0_send_ms_per_step", 0) > 0 for r in d["runs"] if r["tp"] == 2)
    (ar,) = d["collectives"]
    assert ar["ranks"] == 2 and ar["sizes"][0]["allreduce_ms"] > 0 and ar["sizes"][0]["together_ms"] is None


def _tp_bench():
    import importlib.util

    spec = importlib.util.spec_from_file_location("tp_bench", ROOT / "scripts" / "tp_bench.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_each_allreduce_is_run_and_compared_to_the_first():
    tb = _tp_bench()
    assert tb.engine_configs([1, 2], ["nccl", "copy-engine"]) == [(1, "nccl"), (2, "nccl"), (2, "copy-engine")]
    run = lambda tp, ar, plan, v: {"tp": tp, "allreduce": ar, "plan": plan, "trace": "t",
                                   "result": {"metrics": {"total_token_throughput": v}}}
    r = tb.ratios([run(1, "nccl", "sequential", 100.0), run(2, "nccl", "sequential", 180.0),
                   run(2, "copy-engine", "sequential", 198.0), run(2, "nccl", "nb2-ar", 171.0),
                   run(2, "copy-engine", "nb2-ar", 150.0)])
    assert r["tp_over_tp1"] == {"t/sequential/tp2": 1.8}
    assert r["allreduce_over_nccl"] == {"tp2/t/sequential/copy-engine": 1.1, "tp2/t/nb2-ar/copy-engine": 150 / 171}
    assert r["plan_over_sequential"] == {"tp2/t/nb2-ar": 0.95, "tp2/t/nb2-ar/copy-engine": 150 / 198}
    assert r["best_allreduce"] == {"tp2/t/sequential": "copy-engine", "tp2/t/nb2-ar": "nccl"}
