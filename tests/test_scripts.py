"""scripts/ are thin command lines over the packages: no path hacks, no script importing another, one
environment block; the shared measurement helpers (nanotune.bench.experiments) run on CPU."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "scripts").glob("*.py"))


def test_scripts_have_no_path_hacks_and_import_no_sibling():
    siblings = {p.stem for p in SCRIPTS}
    assert SCRIPTS
    for path in SCRIPTS:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "insert":
                target = ast.unparse(node.func.value)
                assert target != "sys.path", f"{path.name}:{node.lineno}: sys.path.insert"
            if isinstance(node, ast.ImportFrom | ast.Import):
                names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                bad = [n for n in names if n and n.split(".")[0] in siblings]
                assert not bad, f"{path.name}:{node.lineno}: imports the script {bad[0]}"
            if isinstance(node, ast.FunctionDef):
                assert node.name != "environment", f"{path.name}: its own environment(); use nanotune.results"


def test_engine_overlap_runs_on_cpu_through_the_shared_helpers(tmp_path):
    out = tmp_path / "o.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "engine_overlap.py"), "--device", "cpu", "--model", "tiny-llama",
           "--workloads", "c512x512:3", "--plans", "sequential,nb2", "--time-ops-every", "3", "--warmups", "1",
           "--max-num-batched-tokens", "256", "--max-num-seqs", "8", "--gantt-workload", "c512x512",
           "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text())
    runs = res["workloads"]["c512x512"]["plans"]
    assert set(runs) == {"sequential", "nb2"} and res["environment"]["python"]
    for run in runs.values():
        assert run["metrics"]["completed"] == 3 and run["op_profile"]["num_iterations"] > 0  # via the observer
    assert res["ratios"]["c512x512"]["sequential"] == 1.0
    assert set(res["gantt"]["plans"]) == {"sequential", "nb2"}
