"""scripts/model_gap.py end to end on the CPU with the tiny model and a synthetic profile of it: the GPU call
that runs it on 800 ShareGPT requests must not trip on a bug (the numbers here mean nothing)."""

import json
import subprocess
import sys
from pathlib import Path

from test_search_helpers import toy_profile_dict, write

ROOT = Path(__file__).resolve().parents[1]


def test_model_gap_runs_validation_for_one_plan(tmp_path):
    profile = write(tmp_path, {**toy_profile_dict(), "model": "tiny-llama-micro"})
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "model_gap.py"), "--model", "tiny-llama-micro",
                           "--profile", str(profile), "--workload", "constant:20:5", "-n", "6",
                           "--max-num-batched-tokens", "64", "--max-num-seqs", "8", "--gpu-memory-gib", "8",
                           "--device", "cpu", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin",
                                                                          "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    r = json.loads((out / "model_gap.json").read_text())
    (row,) = r["validation"]["plans"]
    assert row["label"] == "sequential" and row["measured"]["num_iterations"] >= 5
    assert row["measured"]["total_token_throughput"] > 0 and r["predicted_replay"]["total_token_throughput"] > 0
    assert r["environment"] and "measured" in proc.stdout
    # the bench's in-process passes on one fresh engine, the same requests, every step accounted for
    assert [p["pass"] for p in r["bench_passes"]] == [0, 1]
    for p in r["bench_passes"]:
        assert p["metrics"]["completed"] == 6 and p["metrics"]["total_token_throughput"] > 0
        assert p["steps"]["num_steps"] >= 5 and p["steps"]["intervals_s"] > 0
        assert p["steps"]["num_capture_steps"] == 0  # CPU: no CUDA graphs
