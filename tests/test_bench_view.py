"""The live view and the final tables render (including nulls, CIs, partial runs and sweeps)."""

import io

from rich.console import Console

from nanotune.bench.driver import Progress
from nanotune.bench.metrics import compute_metrics
from nanotune.bench.view import LiveView, summary_table, sweep_table


def render(obj) -> str:
    c = Console(width=120, record=True, file=io.StringIO())
    c.print(obj)
    return c.export_text()


def test_live_view_renders_progress_and_engine_stats():
    view = LiveView(Console(file=io.StringIO()), enabled=True)
    view.phase_name = "offline"
    text = render(view.render(Progress(elapsed_s=2.0, num_done=5, num_failed=1, num_total=20,
                                       num_output_tokens=400, num_total_tokens=1000,
                                       stats={"num_running": 8, "num_waiting": 7, "kv_usage": 0.42,
                                              "num_preemptions": 0})))
    assert "5/20 done, 1 failed" in text and "200.0 output" in text and "KV 42%" in text
    assert "ETA 6 s" in text  # 2 s for 5 requests -> 6 s for the other 15
    empty = render(view.render(Progress(0.0, 0, 0, 3, 0, 0, {})))
    assert "ETA - s" in empty and "KV -%" in empty


def test_live_view_off_when_not_a_terminal():
    view = LiveView(Console(file=io.StringIO(), force_terminal=False), enabled=True)
    with view:
        assert view.live is None


def test_summary_with_nulls_ci_and_partial():
    m = compute_metrics([], 0.0)
    result = {"metrics": m, "metrics_ci95": None, "engine": {"engine": "hf", "model": "m"}, "partial": True}
    text = render(summary_table(result))
    assert "PARTIAL" in text and "Successful requests" in text and "- / - / -" in text
    m = {**m, "completed": 10.0, "total_token_throughput": 1234.5}
    result = {"metrics": m, "metrics_ci95": {"total_token_throughput": 12.25}, "engine": {}}
    assert "1,234.5 ± 12.2" in render(summary_table(result))


def test_sweep_table_marks_best_rate():
    pts = [{"request_rate": r, "metrics": {"request_throughput": r, "total_token_throughput": 10 * r,
                                           "p99_ttft_ms": 5.0, "p99_tpot_ms": 1.0, "slo_attainment": a}}
           for r, a in [(1.0, 1.0), (2.0, 0.95), (4.0, 0.5)]]
    result = {"points": pts, "sweep": {"best_rate": 2.0, "slo_attainment": 0.9, "slos": {"ttft": 10}}}
    text = render(sweep_table(result))
    assert "2 *" in text and "90%" in text
    assert sweep_table({"sweep": None}) is None


def test_live_view_shows_the_engine_s_last_step_from_its_observer_record():
    from engine import EngineConfig, LLMEngine
    from nanotune.bench.backends.inprocess import EngineBackend
    from nanotune.bench.records import BenchRequest, RequestRecord

    eng = LLMEngine(EngineConfig(model="tiny-llama-micro", device="cpu", dtype="float32"))
    backend = EngineBackend(eng)
    backend.begin(0.0)
    assert "step" not in backend.stats() and eng.observers.active  # registered, nothing stepped yet
    req = BenchRequest(0, 0.0, (1, 2, 3, 4, 5), 3)
    backend.submit(req, RequestRecord(req.request_id, 5, 3, 0.0))
    backend.poll(0.0)
    step = backend.stats()["step"]
    assert step["num_tokens"] == 5 and step["num_decode"] == 0 and step["host_ms"] > 0
    view = LiveView(Console(file=io.StringIO()), enabled=True)
    text = render(view.render(Progress(1.0, 0, 0, 1, 0, 0, backend.stats())))
    assert "5 tokens (0 decode)" in text
    backend.close()
    assert not eng.observers.active  # close() unregisters it
