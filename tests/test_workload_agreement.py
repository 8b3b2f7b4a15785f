"""`bench` and `search` read a workload through one parser: the same spec, -n and seed give the same requests;
what cannot run is dropped before the run and counted, never failed (CliRunner, CPU)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import nanotune.bench.session as session
from nanotune.bench.backends.inprocess import EngineBackend
from nanotune.bench.testing import FakeEngine
from nanotune.cli import main, options
from workloads import Trace, TraceRequest, save_jsonl, summary_line


@pytest.fixture
def fake_engine(monkeypatch):
    """bench with the real workload path and a fake engine behind it (only the requests matter here)."""
    sent = []

    def make_backend(cfg, lengths):
        sent.extend(lengths)
        return EngineBackend(FakeEngine(max_num_seqs=512, step_s=0.0), name=cfg.engine)

    monkeypatch.setattr(session, "make_backend", make_backend)
    # the fake engine holds no weights: the CLI's check that llama-3-8b's real weights fit this machine's free
    # memory (issue 18) does not apply to it
    monkeypatch.setattr(options, "available_memory_bytes", lambda: None)
    return sent


def bench(tmp_path, *args):
    res = CliRunner().invoke(main, ["bench", "--model", "llama-3-8b", "--device", "cpu", "--peak-tflops", "1",
                                    "--num-warmups", "0", "--results-dir", str(tmp_path), "--no-progress", *args])
    assert res.exit_code == 0, res.output
    [path] = tmp_path.glob("*-bench-*/result.json")
    return res, json.loads(path.read_text())


def test_bench_and_search_report_the_same_sharegpt_requests(tmp_path, fake_engine):
    args = ["--trace", "sharegpt", "-n", "300", "--seed", "5"]
    b_res, b = bench(tmp_path / "bench", *args)
    s_res = CliRunner().invoke(main, ["search", "--model", "llama-3-8b", "--gpu", "h200", *args, "--n-trials", "3",
                                      "--results-dir", str(tmp_path / "search"), "--no-progress"])
    assert s_res.exit_code == 0, s_res.output
    [path] = (tmp_path / "search").glob("*-search-*/result.json")
    s = json.loads(path.read_text())["workload"]["requests"]

    assert b["workload"] == s  # count, mean lengths, filter, drops, max_model_len: one summary, equal
    assert s["workload"] == "sharegpt" and s["filter"] == "vllm" and s["num_requests"] == 300
    assert s["max_model_len"] == 8192 and s["num_dropped"] == 0
    assert b["metrics"]["completed"] == 300 and b["metrics"]["failed"] == 0
    # what bench sent is what it summarized
    assert sum(p for p, _ in fake_engine) / 300 == pytest.approx(b["workload"]["mean_prompt_len"])
    line = summary_line(s)  # both print the same line
    assert line.startswith("workload sharegpt (filter vllm): 300 requests, mean ")
    assert line in " ".join(b_res.output.split()) and line in " ".join(s_res.output.split())


def test_unrunnable_requests_are_dropped_up_front_not_failed(tmp_path, fake_engine):
    rows = [(100, 20), (0, 20), (8000, 193), (30, 0), (7, 7)]
    trace = save_jsonl(Trace([TraceRequest(0.0, p, o) for p, o in rows], {}), tmp_path / "t.jsonl")
    res, result = bench(tmp_path / "out", "--trace", str(trace))
    assert result["metrics"]["completed"] == 2 and result["metrics"]["failed"] == 0
    assert result["workload"]["dropped"] == {"empty_prompt": 1, "empty_output": 1, "over_max_model_len": 1}
    assert result["workload"]["max_model_len"] == 8192 and sorted(fake_engine) == [(7, 7), (100, 20)]
    out = " ".join(res.output.split())
    assert "dropped 3 (1 empty prompt, 1 no output tokens, 1 over max_model_len 8,192)" in out
    assert "Dropped before the run" in out and "3 (1 empty prompt" in out  # the table's row


def test_constant_spec_runs_in_bench(tmp_path, fake_engine):
    _, result = bench(tmp_path, "--trace", "constant:64:8", "-n", "5")
    assert result["workload"]["workload"] == "constant:64:8" and fake_engine == [(64, 8)] * 5
    assert result["metrics"]["completed"] == 5 and result["run_id"].endswith("-bench-constant-64-8-nanoflow")
