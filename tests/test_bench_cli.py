"""`nanotune bench` through click's CliRunner: defaults, files written, Ctrl-C, user errors, the real
tiny engine when it is importable."""

import json

import pandas as pd
import pytest
from click.testing import CliRunner

import nanotune.bench.session as session
from nanotune.bench.backends.inprocess import EngineBackend
from nanotune.bench.testing import FakeEngine, fake_trace
from nanotune.cli import main


@pytest.fixture
def fake(monkeypatch):
    """The CLI with a fake trace and a fake engine behind it; `engines` collects what was built."""
    state = {"engine_kw": {}, "trace": fake_trace([(20, 6)] * 10), "configs": []}

    def load_trace(spec, n, seed, **params):
        state["trace_args"] = (spec, n, seed, params)
        return state["trace"]

    def make_backend(cfg, lengths):
        state["configs"].append(cfg)
        return EngineBackend(FakeEngine(**state["engine_kw"]), name=cfg.engine)

    monkeypatch.setattr(session, "load_trace", load_trace)
    monkeypatch.setattr(session, "make_backend", make_backend)
    return state


def invoke(*args):
    return CliRunner().invoke(main, ["bench", *args])


def test_default_cpu_run_prints_table_and_writes_files(fake, tmp_path):
    res = invoke("--results-dir", str(tmp_path), "--no-progress")
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "Total token throughput (tok/s)" in out and "Efficiency (of optimal)" in out
    cfg = fake["configs"][0]
    assert (cfg.model, cfg.device, cfg.engine, cfg.num_requests) == ("tiny-llama", "cpu", "nanoflow", 64)
    assert (cfg.caps.max_prompt_len, cfg.caps.max_output_len) == (256, 64)
    assert fake["trace_args"][:3] == ("sharegpt", 64, 0)
    (run_dir,) = tmp_path.iterdir()
    assert run_dir.name.endswith("-bench-sharegpt-nanoflow")
    result = json.loads((run_dir / "result.json").read_text())
    assert result["partial"] is False and result["metrics"]["completed"] == 10
    assert result["peak"]["device"] == "cpu" and result["metrics"]["efficiency"] > 0
    assert result["environment"]["python"] and result["config"]["engine"] == "nanoflow"
    assert len(pd.read_csv(run_dir / "requests.csv")) == 10


def test_options_reach_the_config(fake, tmp_path):
    res = invoke("--results-dir", str(tmp_path), "--no-progress", "--peak-tflops", "1", "-n", "5",
                 "--seed", "3", "--trace", "constant", "--input-len", "64", "--output-len", "8",
                 "--request-rate", "500",
                 "--burstiness", "0.5", "--max-concurrency", "3", "--goodput", "ttft:100 tpot:50",
                 "--num-warmups", "1", "--max-prompt-len", "0", "--engine", "sequential")
    assert res.exit_code == 0, res.output
    cfg = fake["configs"][0]
    assert cfg.request_rate == 500 and cfg.burstiness == 0.5 and cfg.max_concurrency == 3
    assert cfg.slos == {"ttft": 100, "tpot": 50} and cfg.caps.max_prompt_len is None
    assert cfg.engine == "sequential" and cfg.num_requests == 5
    assert fake["trace_args"] == ("constant", 5, 3, {"input_len": 64, "output_len": 8})
    result = json.loads(next(tmp_path.iterdir()).joinpath("result.json").read_text())
    assert result["metrics"]["completed"] == 5 and "request_goodput" in result["metrics"]


def test_sweep_prints_curve(fake, tmp_path):
    res = invoke("--results-dir", str(tmp_path), "--no-progress", "--peak-tflops", "1",
                 "--sweep-rate", "400,20", "--goodput", "e2el:1000", "--num-warmups", "0")
    assert res.exit_code == 0, res.output
    assert "request-rate sweep" in res.output
    result = json.loads(next(tmp_path.iterdir()).joinpath("result.json").read_text())
    assert [p["request_rate"] for p in result["points"]] == [20.0, 400.0]
    assert result["sweep"]["best_rate"] == 400.0


def test_ctrl_c_exits_130_with_partial_result(fake, tmp_path):
    fake["engine_kw"] = {"interrupt_at_step": 8, "max_num_seqs": 2}
    res = invoke("--results-dir", str(tmp_path), "--no-progress", "--peak-tflops", "1", "--num-warmups", "0")
    assert res.exit_code == 130, res.output
    result = json.loads(next(tmp_path.iterdir()).joinpath("result.json").read_text())
    assert result["partial"] and result["interrupted"] and 0 < result["metrics"]["completed"] < 10
    assert "PARTIAL" in res.output


def test_engine_crash_exits_1_and_keeps_errors(fake, tmp_path):
    fake["engine_kw"] = {"fail_at_step": 3}
    res = invoke("--results-dir", str(tmp_path), "--no-progress", "--peak-tflops", "1", "--num-warmups", "0")
    assert res.exit_code == 1
    rows = pd.read_csv(next(tmp_path.iterdir()) / "requests.csv")
    assert (rows["status"] == "failed").all() and rows["error"].str.contains("fake engine failure").all()


@pytest.mark.parametrize("args, message", [
    (["--sweep-rate", "1,x"], "--sweep-rate"),
    (["--sweep-rate", "1,-2"], "positive"),
    (["--goodput", "latency:3"], "--goodput"),
    (["--repeat", "0"], "repeat"),
    (["--endpoint", "ftp://host"], "--endpoint"),
    (["--request-rate", "2", "--sweep-rate", "1,2"], "not both"),
    (["--mode", "online"], "no arrival times"),
])
def test_user_errors_exit_2(fake, tmp_path, args, message):
    res = invoke("--results-dir", str(tmp_path), "--no-progress", "--peak-tflops", "1", *args)
    assert res.exit_code == 2 and message in " ".join(res.output.split()), res.output


def test_sequential_with_plan_is_a_user_error(fake, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text("{}")
    res = invoke("--engine", "sequential", "--plan", str(plan), "--results-dir", str(tmp_path))
    assert res.exit_code == 2 and "sequential" in res.output


def test_trace_file_with_generator_options_is_a_user_error(tmp_path):
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"meta": {}}\n{"arrival_s": 0, "prompt_len": 4, "output_len": 2}\n')
    res = invoke("--trace", str(trace), "--input-len", "5", "--results-dir", str(tmp_path))
    assert res.exit_code == 2 and "--input-len" in res.output


def test_real_tiny_engine_end_to_end(tmp_path):
    pytest.importorskip("engine.engine")
    pytest.importorskip("workloads")
    res = invoke("--model", "tiny-llama-micro", "--device", "cpu", "-n", "8", "--max-output-len", "6",
                 "--max-prompt-len", "48", "--num-warmups", "1", "--results-dir", str(tmp_path),
                 "--no-progress")
    assert res.exit_code == 0, res.output
    result = json.loads(next(tmp_path.iterdir()).joinpath("result.json").read_text())
    m = result["metrics"]
    assert m["completed"] == 8 and m["failed"] == 0 and m["num_short"] == 0
    rows = pd.read_csv(next(tmp_path.iterdir()) / "requests.csv")
    assert m["total_output_tokens"] == rows["expected_output_len"].sum()
    assert rows["expected_output_len"].max() <= 6
    assert result["engine"]["model"] == "tiny-llama-micro" and result["engine"]["num_params"] > 0
    assert m["efficiency"] is not None and result["trace"]["generator"] == "sharegpt"


def test_real_tiny_engine_online_with_real_trace():
    pytest.importorskip("engine.engine")
    workloads = pytest.importorskip("workloads")
    from nanotune.bench.backends.inprocess import load_engine_backend
    from nanotune.bench.config import BenchConfig
    from nanotune.bench.requests import LengthCaps
    from nanotune.bench.runner import run_bench

    trace = workloads.generate("lmsys", 6, seed=1)
    backend = load_engine_backend("nanoflow", "tiny-llama-micro", "cpu", None, None, 0)
    cfg = BenchConfig(request_rate=50.0, num_warmups=0, caps=LengthCaps(32, 5))
    out = run_bench(cfg, trace, backend, None)
    m = out.result["metrics"]
    assert m["completed"] == 6 and m["mean_ttft_ms"] > 0 and out.result["points"][0]["mode"] == "online"
    assert all(r["send_s"] >= r["arrival_s"] - 1e-6 for r in out.rows)


@pytest.mark.parametrize("plan, ok", [("nb2-pf0-rev", True), ("nb9-fast", False), ("missing.json", False)])
def test_real_tiny_engine_takes_plan_names(tmp_path, plan, ok):
    pytest.importorskip("engine.engine")
    res = invoke("--model", "tiny-llama-micro", "--device", "cpu", "-n", "4", "--max-output-len", "4",
                 "--max-prompt-len", "32", "--num-warmups", "0", "--results-dir", str(tmp_path), "--no-progress",
                 "--plan", plan)
    if ok:
        assert res.exit_code == 0, res.output
        result = json.loads(next(tmp_path.iterdir()).joinpath("result.json").read_text())
        assert result["metrics"]["completed"] == 4
    else:
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert res.exit_code == 2 and len(lines) == 1 and plan in lines[0], res.output
