"""scripts/serve_vs_inprocess.py end to end on the CPU (--smoke): the lead's one GPU call must work first time."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_serve_vs_inprocess_smoke(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "serve_vs_inprocess.py"), "--smoke",
                           "--rates", "inf", "-n", "4", "--out", str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    r = json.loads((tmp_path / "serve_vs_inprocess.json").read_text())
    (a,), (b,) = r["inprocess"], r["endpoint"]
    assert a["completed"] == b["completed"] == 4 and a["rate"] == b["rate"] == "inf"
    assert r["endpoint_over_inprocess"][0]["total_token_throughput"] > 0
    assert r["environment"] and (tmp_path / "serve_vs_inprocess.png").stat().st_size > 0
    assert "nanotune_generation_tokens_total" in (tmp_path / "serve_metrics.txt").read_text()
    assert r["server_engine"] == "process" and "engine process" in (tmp_path / "serve.log").read_text()
