"""Issue 18: what a run does with failures, interruptions, infinite rates, odd result folders and the
engine's own time (fake engine, CPU)."""

import json
import math
import os
import signal

import pandas as pd
import pytest
from click.testing import CliRunner

from nanotune.bench.backends.inprocess import EngineBackend
from nanotune.bench.config import BenchConfig
from nanotune.bench.driver import drive
from nanotune.bench.failures import exit_status, failure_reasons, reasons_line
from nanotune.bench.records import BenchRequest
from nanotune.bench.runner import run_bench
from nanotune.bench.session import bench
from nanotune.bench.testing import FakeEngine, fake_trace
from nanotune.bench.view import summary_table
from nanotune.cli import main
from nanotune.errors import UserError
from nanotune.signals import StopSignals


def run(trace, engine, **cfg):
    cfg.setdefault("num_warmups", 0)
    return run_bench(BenchConfig(**cfg), trace, EngineBackend(engine), None)


def test_ttft_includes_the_step_that_ran_when_the_request_arrived():
    """A request arriving during a 60 ms step is handed to the engine after it; its send is stamped at its
    arrival, so that step counts in TTFT, not as client queue time."""
    eng = FakeEngine(step_s=0.06)
    reqs = [BenchRequest(0, 0.0, (1, 2, 3), 2), BenchRequest(1, 0.01, (1, 2, 3), 2)]
    ph = drive(EngineBackend(eng), reqs)
    late = ph.records[1]
    assert late.send_s == pytest.approx(0.01, abs=1e-6) and late.queue_s == pytest.approx(0.0, abs=1e-6)
    assert late.ttft_s > 0.05  # waited for the running step, then its own prefill step


def test_concurrency_wait_stays_queue_time():
    eng = FakeEngine(step_s=0.01)
    reqs = [BenchRequest(i, 0.0, (1, 2), 3) for i in range(3)]
    ph = drive(EngineBackend(eng), reqs, max_concurrency=1)
    r = ph.records
    assert r[1].queue_s == pytest.approx(r[0].end_s, abs=1e-3)  # waited for the first request's slot
    assert r[2].send_s >= r[1].end_s - 1e-6


def test_warmup_interrupted_lists_measured_requests_as_not_sent():
    eng = FakeEngine(interrupt_at_step=1)
    out = run(fake_trace([(8, 4)] * 5), eng, num_warmups=3)
    w = out.result["warmup"]
    assert w["failed"] == 0 and w["interrupted"] == 3
    assert out.result["partial"] and out.result["interrupted"]
    assert [r["status"] for r in out.rows] == ["not_sent"] * 5
    assert all(r["request_id"].startswith("req-") for r in out.rows)


def test_failure_reasons_counted_and_every_failed_run_exits_1():
    out = run(fake_trace([(50, 4)] * 4 + [(60, 4)] * 2), FakeEngine(max_prompt_len=10))
    reasons = out.result["failures"]
    assert reasons == {"ValueError: prompt of 50 tokens exceeds 10": 4,
                       "ValueError: prompt of 60 tokens exceeds 10": 2}
    assert reasons_line(reasons, limit=1) == ("6 requests failed: 4x ValueError: prompt of 50 tokens exceeds 10; "
                                              "and 1 other reason")
    assert exit_status(out.result) == 1
    ok = run(fake_trace([(5, 4)] * 2 + [(50, 4)]), FakeEngine(max_prompt_len=10))
    assert failure_reasons([{"status": "failed", "error": "request req-1: x", "request_id": "req-1"}]) == {"x": 1}
    assert exit_status(ok.result) == 0  # some requests succeeded: the run did its job
    assert exit_status({"error": "RuntimeError: boom"}) == 1
    assert exit_status({"partial": True, "signal": "SIGTERM"}) == 143
    assert exit_status({"partial": True, "signal": "SIGINT"}) == 130


def test_cli_all_failed_exits_1_with_reasons(tmp_path):
    """The real tiny model with a one-block KV cache: every prompt needs more KV than the whole cache holds, so
    every request fails (prompts over the context are dropped before the run, not failed: exit 2)."""
    res = CliRunner().invoke(main, ["bench", "--trace", "constant", "--input-len", "64", "--output-len", "2",
                                    "--num-kv-blocks", "1", "-n", "3", "--num-warmups", "0", "--no-progress",
                                    "--results-dir", str(tmp_path)])
    assert res.exit_code == 1, res.output
    assert "3 requests failed: 3x" in res.output and "every request failed" in res.output
    assert "Traceback" not in res.output


def test_cli_kv_knobs_preempt_and_the_table_shows_it(tmp_path):
    res = CliRunner().invoke(main, ["bench", "--trace", "constant", "--input-len", "32", "--output-len", "48",
                                    "-n", "6", "--num-warmups", "0", "--num-kv-blocks", "8", "--kv-overcommit",
                                    "4", "--threads", "1", "--no-progress", "--results-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    result = json.loads(next(tmp_path.glob("*/result.json")).read_text())
    assert result["config"]["num_kv_blocks"] == 8 and result["config"]["kv_overcommit"] == 4.0
    n = result["points"][0]["runs"][0]["backend"]["num_preemptions"]
    assert n > 0 and result["metrics"]["completed"] == 6
    assert "Preemptions (KV cache full)" in res.output


def test_unwritable_results_dir_found_before_running(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    eng = FakeEngine()
    with pytest.raises(UserError, match="cannot write there"):
        bench(BenchConfig(num_warmups=0), results_dir=str(blocker / "sub"), progress=False,
              backend=EngineBackend(eng), trace=fake_trace([(4, 2)] * 3))
    assert eng.num_steps == 0 and not eng.prompts  # nothing ran


def test_interrupt_before_measuring_leaves_no_empty_run_dir(tmp_path, monkeypatch):
    import nanotune.bench.session as session

    def stop(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(session, "measure_peak", stop)
    with pytest.raises(KeyboardInterrupt):
        bench(BenchConfig(num_warmups=0), results_dir=str(tmp_path), progress=False,
              backend=EngineBackend(FakeEngine()), trace=fake_trace([(4, 2)] * 3))
    assert not any(tmp_path.iterdir())


def test_second_signal_is_ignored_while_stopping():
    seen = []
    with StopSignals(on_repeat=seen.append) as stop:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)  # would lose the run if it raised
        os.kill(os.getpid(), signal.SIGINT)
    assert stop.exit_code == 143 and seen == [signal.SIGINT, signal.SIGINT]


def make(root, **cfg):
    backend = EngineBackend(FakeEngine(max_num_seqs=4, step_s=0.001))
    _, run_dir = bench(BenchConfig(num_warmups=0, peak_tflops=0.05, **cfg), results_dir=root, progress=False,
                       backend=backend, trace=fake_trace([(12, 6)] * 10))
    return run_dir


def test_sweep_with_inf_is_stored_and_read_back(tmp_path):
    run_dir = make(tmp_path, sweep_rates=(50.0, math.inf), slos={"ttft": 1000.0})
    result = json.loads((run_dir / "result.json").read_text())
    assert [p["request_rate"] for p in result["points"]] == [50.0, "inf"]
    assert result["sweep"]["rates"] == [50.0, "inf"] and result["config"]["sweep_rates"] == [50.0, "inf"]
    assert result["sweep"]["best_rate"] == "inf"
    assert "inf *" in "".join(str(c) for c in _sweep_cells(result))
    res = CliRunner().invoke(main, ["compare", str(run_dir), "--out", str(tmp_path / "cmp")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "cmp" / "sweep.png").exists()


def _sweep_cells(result):
    from nanotune.bench.view import sweep_table

    return sweep_table(result).columns[0]._cells


def test_report_skips_an_unreadable_result_with_a_line(tmp_path):
    make(tmp_path)
    bad = tmp_path / "20260101-000000-bench-broken"
    bad.mkdir()
    (bad / "result.json").write_text('{"kind": "bench", "engine": "not an object"}')
    res = CliRunner().invoke(main, ["report", str(tmp_path), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    assert "skipped" in res.output and "broken" in res.output


def test_summary_table_shows_preemptions():
    result = {"metrics": {"completed": 1}, "request_rate": None,
              "points": [{"request_rate": None, "runs": [{"backend": {"num_preemptions": 3}}]}]}
    rows = [c for c in summary_table(result).columns[0]._cells]
    assert "Preemptions (KV cache full)" in rows


def test_cpu_peak_measured_once_per_machine(tmp_path, monkeypatch):
    from nanotune.results import cpu_peak

    monkeypatch.setenv(cpu_peak.CACHE_ENV, str(tmp_path))
    first = cpu_peak.cpu_peak()
    second = cpu_peak.cpu_peak()
    assert first.source == "measured" and second.source == "cached"
    assert second.flops == first.flops and str(tmp_path) in second.label
    assert json.loads((tmp_path / "cpu-peak.json").read_text())


def test_rows_with_inf_rates_match_their_point(tmp_path):
    from nanotune.report.compare import _headline_requests

    df = pd.DataFrame({"request_rate": [2.0, math.inf], "status": ["ok", "ok"]})
    assert len(_headline_requests({"request_rate": "inf"}, df)) == 1
