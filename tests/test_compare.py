"""`nanotune compare` / `report`: the side-by-side table and the plot files, from real bench results."""

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from nanotune.bench.backends.inprocess import EngineBackend
from nanotune.bench.config import BenchConfig
from nanotune.bench.session import bench
from nanotune.bench.testing import FakeEngine, fake_trace
from nanotune.cli import main
from nanotune.report.anchors import ANCHORS, anchor_rows
from nanotune.report.compare import compare


def make_result(root, engine_name="nanoflow", slots=4, **cfg):
    engine = "sequential" if engine_name == "seq" else "nanoflow"
    cfg = {"num_warmups": 0, "peak_tflops": 0.05, "engine": engine, **cfg}
    backend = EngineBackend(FakeEngine(max_num_seqs=slots, step_s=0.001), name=engine_name)
    _, run_dir = bench(BenchConfig(**cfg), results_dir=root, progress=False, backend=backend,
                       trace=fake_trace([(12, 6)] * 12))
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    a = make_result(root, "seq", slots=2)
    b = make_result(root, "nanoflow", slots=6)
    sweep = make_result(root, "nanoflow", slots=4, sweep_rates=(50.0, 400.0), slos={"ttft": 20.0})
    return root, a, b, sweep


def test_table_rows_ratios_and_plots(runs, tmp_path):
    root, a, b, sweep = runs
    c = compare([a, b / "result.json", sweep], tmp_path / "cmp", anchors=True)
    df = c.frame
    assert list(df["engine"][:3]) == ["seq", "nanoflow", "nanoflow"] and df["is_anchor"].sum() == 2
    assert df["vs_first"].iloc[0] == pytest.approx(1.0)
    assert df["vs_first"].iloc[1] == pytest.approx(df["total_token_throughput"].iloc[1]
                                                   / df["total_token_throughput"].iloc[0])
    assert df["efficiency"].iloc[0] == pytest.approx(df["total_token_throughput"].iloc[0]
                                                     / df["optimal_total_token_throughput"].iloc[0])
    anchors = df[df["is_anchor"]]
    assert anchors["efficiency"].tolist() == [0.785, 0.319] and anchors["vs_first"].isna().all()
    names = {p.name for p in c.files}
    assert names == {"compare.csv", "result.json", "throughput.png", "efficiency.png", "latency_cdf.png",
                     "sweep.png"}
    for p in c.files:
        assert p.stat().st_size > 500
    assert len(pd.read_csv(tmp_path / "cmp" / "compare.csv")) == 5
    saved = json.loads((tmp_path / "cmp" / "result.json").read_text())
    assert saved["kind"] == "compare" and len(saved["rows"]) == 5


def test_anchor_table_is_consistent():
    for a, row in zip(ANCHORS, anchor_rows(), strict=True):
        optimal = a["total_token_throughput"] / a["efficiency"]
        assert row["optimal_total_token_throughput"] == pytest.approx(optimal)
        assert "A100" in row["gpu"] and "OSDI" in row["source"]
    # both published figures describe the same setup: the same optimum within rounding
    o = [r["optimal_total_token_throughput"] for r in anchor_rows()]
    assert o[0] == pytest.approx(o[1], rel=0.002)


def test_compare_cli(runs, tmp_path):
    root, a, b, sweep = runs
    res = CliRunner().invoke(main, ["compare", str(a), str(b), "--anchors", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "% optimal" in res.output and "NanoFlow" in res.output
    assert (tmp_path / "o" / "throughput.png").exists() and (tmp_path / "o" / "latency_cdf.png").exists()


def test_report_cli_finds_bench_results(runs, tmp_path):
    root, *_ = runs
    res = CliRunner().invoke(main, ["report", str(root), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    assert len(pd.read_csv(tmp_path / "rep" / "compare.csv")) == 3
    empty = tmp_path / "empty"
    empty.mkdir()
    res = CliRunner().invoke(main, ["report", str(empty)])
    assert res.exit_code == 2 and "no bench results" in res.output


def test_compare_user_errors(tmp_path):
    res = CliRunner().invoke(main, ["compare"])
    assert res.exit_code == 2 and "result.json" in res.output
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    res = CliRunner().invoke(main, ["compare", str(bad), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "bad.json:1" in res.output
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"kind": "search"}))
    res = CliRunner().invoke(main, ["compare", str(other), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "other.json: not a bench result" in " ".join(res.output.split())
    res = CliRunner().invoke(main, ["compare", str(tmp_path / "missing")])
    assert res.exit_code == 2
