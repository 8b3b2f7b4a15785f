"""Issue 18: compare/report tables and plots say what they show; trace plots too."""

import struct

import pandas as pd
from click.testing import CliRunner

from nanotune.bench.backends.inprocess import EngineBackend
from nanotune.bench.config import BenchConfig
from nanotune.bench.session import bench
from nanotune.bench.testing import FakeEngine, fake_trace
from nanotune.cli import main
from nanotune.cli.trace import plot_title
from nanotune.report.plots import _label, efficiency_title
from nanotune.report.table import hardware_note, rich_table, run_legend, to_frame


def make(root, name):
    backend = EngineBackend(FakeEngine(max_num_seqs=4), name=name)
    _, run_dir = bench(BenchConfig(num_warmups=0, peak_tflops=0.05, engine="nanoflow", trace="constant"),
                       results_dir=root, progress=False, backend=backend, trace=fake_trace([(12, 6)] * 6))
    return run_dir


def test_compare_at_80_columns_distinct_headers_and_whole_run_ids(tmp_path):
    a, b = make(tmp_path, "nanoflow"), make(tmp_path, "nanoflow")
    res = CliRunner(env={"COLUMNS": "80"}).invoke(main, ["compare", str(a), str(b), "--out", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    assert "#1 nanoflow" in res.output and "#2 nanoflow" in res.output
    assert f"#1  {a.name}" in res.output and f"#2  {b.name}" in res.output  # whole, one per line


def rows(*hws):
    return [{"run": f"r{i}", "engine": "e", "model": "m", "gpu": hw, "trace": "sharegpt", "is_anchor": False,
             "partial": False, "total_token_throughput": v} for i, (hw, v) in enumerate(hws)]


def test_runs_on_different_hardware_are_never_divided():
    df = to_frame(rows(("NVIDIA H200", 20000.0), ("CPU: x", 100.0), ("NVIDIA H200", 10000.0), ("CPU: x", 50.0)))
    assert df["vs_first"].tolist() == [1.0, 1.0, 0.5, 0.5]
    assert "2 kinds of hardware" in hardware_note(df)
    assert hardware_note(to_frame(rows(("H200", 1.0), ("H200", 2.0)))) is None
    headers = [c.header for c in rich_table(df).columns[1:]]
    assert len(set(headers)) == len(headers)
    assert run_legend(df)[1] == "#2  r1"


def test_bars_name_the_trace_and_hatching_only_with_anchors():
    r = rows(("H200", 1.0))[0]
    assert "sharegpt" in _label(r)
    assert efficiency_title([r]) == "efficiency"
    assert "hatched: published" in efficiency_title([r, {**r, "is_anchor": True}])


def test_trace_plot_title_says_unfiltered_only_when_unfiltered():
    source = "synthetic, calibrated to sharegpt.csv: ShareGPT conversations (unfiltered)"
    assert plot_title({"source": source}) == source
    filtered = plot_title({"source": source, "filter": {"spec": "vllm", "dropped": 8}})
    assert "(unfiltered)" not in filtered and "filter vllm" in filtered and "8 dropped" in filtered


def png_width(path):
    with open(path, "rb") as f:
        head = f.read(24)
    return struct.unpack(">I", head[16:20])[0]


def test_trace_plot_draws_arrivals_for_a_timed_trace(tmp_path):
    offline, timed = tmp_path / "offline.png", tmp_path / "timed.png"
    r1 = CliRunner().invoke(main, ["trace", "--dataset", "sharegpt", "-n", "200", "--plot", str(offline)])
    r2 = CliRunner().invoke(main, ["trace", "--dataset", "sharegpt", "-n", "200", "--rate", "4", "--burstiness",
                                   "0.5", "--plot", str(timed)])
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output + r2.output
    assert png_width(timed) > 1.4 * png_width(offline)  # a third panel: arrivals per second


def test_frame_roundtrip_keeps_vs_first_column():
    df = to_frame(rows(("H200", 2.0)))
    assert isinstance(df, pd.DataFrame) and df["vs_first"].iloc[0] == 1.0
