"""Issue 18: `nanotune search` as a new user meets it (CPU, committed reference profiles)."""

import shlex
from pathlib import Path

import pytest
import tomllib
import torch
from click.testing import CliRunner

from nanotune.cli import main
from nanotune.search.reference import PACKAGE_REFERENCE, list_references, pick_reference

ROOT = Path(__file__).resolve().parents[1]


def search(tmp_path, *args, columns=None):
    env = {"COLUMNS": str(columns)} if columns else None
    return CliRunner(env=env).invoke(main, ["search", "--n-trials", "4", "-n", "100", "--no-progress",
                                            "--results-dir", str(tmp_path), *args])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-GPU path")
def test_search_llama_70b_as_typed_runs_without_a_gpu(tmp_path):
    res = search(tmp_path, "--model", "llama-70b", columns=200)
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("no GPU here: using the reference profile")]
    # the smallest committed TP whose shard fits one H200 (TP 2 since its profile was committed; TP 4 before)
    tp = pick_reference("llama-3-70b", None).tp
    assert len(lines) == 1 and f"llama-3-70b at TP {tp} on h200" in lines[0]
    assert f"note: TP {tp}" in res.output  # modelled, not run: said on screen
    assert f"tok/s (all {tp} GPUs)" in res.output


def test_pick_reference_prefers_fitting_smallest_tp():
    assert pick_reference("llama-3-70b", None).tp == 2  # 140 GB of weights need more than one H200; 70 GB fit
    assert pick_reference("llama-3-70b", 8).tp == 8
    assert pick_reference("llama-3-8b", None).tp == 1
    assert pick_reference("qwen2-72b", None) is None


def test_reference_profiles_ship_as_package_data():
    names = {p.name for p in (PACKAGE_REFERENCE / "h200").glob("profile-*.json")}
    assert "profile-llama-3-8b-tp1.json" in names
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["nanotune"]
    assert "data/reference/*/profile-*.json" in data
    assert {(r.gpu, r.model, r.tp) for r in list_references()} >= {("h200", "llama-3-8b", 1)}


def test_missing_reference_lists_the_profiles_there_are(tmp_path):
    res = search(tmp_path, "--gpu", "h100", "--model", "llama-3-8b")
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "h200/llama-3-8b TP 1" in res.output.replace("\n", "")


def test_table_at_80_columns_resume_command_and_front(tmp_path):
    res = search(tmp_path, "--gpu", "h200", "--model", "llama-3-8b", "--study", "s1", "--objective", "both",
                 columns=80)
    assert res.exit_code == 0, res.output
    out = res.output
    assert "│ sequential " in out and "tok/s (1" in out  # whole plan names; throughput says per how many GPUs
    assert "Pareto front:" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("continue it with: "))
    args = shlex.split(line.removeprefix("continue it with: "))
    assert args[:2] == ["nanotune", "search"] and "--gpu" in args and "--objective" in args
    res2 = CliRunner().invoke(main, [*args[1:], "--n-trials", "2", "--no-progress", "-n", "100"])
    assert res2.exit_code == 0, res2.output  # the printed command resumes as it is


def test_failed_search_leaves_no_study_file(tmp_path):
    res = search(tmp_path, "--gpu", "h200", "--model", "llama-3-8b", "--tpot-limit", "0.001")
    assert res.exit_code == 2 and "no feasible plan" in res.output
    assert not list(tmp_path.rglob("*.db"))
