"""Offline and online runs through the harness with a deterministic fake engine (engine protocol)."""

import json

import pandas as pd
import pytest

from nanotune.bench.backends.inprocess import EngineBackend
from nanotune.bench.config import BenchConfig
from nanotune.bench.records import BenchRequest
from nanotune.bench.requests import LengthCaps, arrival_times, build_requests
from nanotune.bench.runner import run_bench
from nanotune.bench.session import bench
from nanotune.bench.testing import FakeEngine, fake_trace


def run(trace, engine=None, **cfg):
    cfg.setdefault("num_warmups", 0)
    return run_bench(BenchConfig(**cfg), trace, EngineBackend(engine or FakeEngine()), None)


def test_offline_all_at_t0_forced_lengths_and_warmup_not_counted():
    eng = FakeEngine(max_num_seqs=4)
    out = run(fake_trace([(10, 5)] * 12 + [(30, 9)] * 4), eng, num_warmups=3)
    m = out.result["metrics"]
    assert m["completed"] == 16 and m["failed"] == 0 and m["num_short"] == 0
    assert m["total_input_tokens"] == 240 and m["total_output_tokens"] == 96
    assert len(out.rows) == 16 and all(r["request_id"].startswith("req-") for r in out.rows)
    assert {r["arrival_s"] for r in out.rows} == {0.0}
    assert out.result["warmup"]["num_requests"] == 3
    assert len(eng.prompts) == 19  # the 3 warm-up requests did reach the engine
    # the engine's own queue shows up in TTFT: with 4 slots the last requests wait longest
    ttft = [r["ttft_ms"] for r in out.rows]
    assert ttft[-1] > ttft[0]
    assert m["duration"] > 0 and m["total_token_throughput"] == pytest.approx(336 / m["duration"])


def test_online_trace_timestamps():
    out = run(fake_trace([(8, 3)] * 10, gap_s=0.01), mode="online")
    rows = pd.DataFrame(out.rows)
    assert rows["arrival_s"].tolist() == pytest.approx([0.01 * i for i in range(10)])
    assert (rows["send_s"] >= rows["arrival_s"] - 1e-9).all()
    assert (rows["queue_ms"] < 50).all()
    assert out.result["metrics"]["duration"] >= 0.09


def test_online_rate_with_max_concurrency():
    out = run(fake_trace([(8, 6)] * 12), FakeEngine(step_s=0.002), request_rate=1000.0, max_concurrency=2)
    rows = pd.DataFrame(out.rows)
    assert out.result["metrics"]["completed"] == 12
    events = sorted(
        [(s, 1) for s in rows["send_s"]] + [(e, -1) for e in rows["end_s"]], key=lambda x: (x[0], x[1])
    )
    in_flight = peak = 0
    for _, d in events:
        in_flight += d
        peak = max(peak, in_flight)
    assert peak <= 2
    assert rows["queue_ms"].max() > 5  # requests waited for a slot: client queue time, not TTFT


def test_arrival_times():
    assert arrival_times([3.0, 5.0], "offline") == [0.0, 0.0]
    assert arrival_times([3.0, 5.5], "online") == [0.0, 2.5]
    assert arrival_times([0, 0, 0], "online", request_rate=float("inf")) == [0.0] * 3
    a = arrival_times([0.0] * 4001, "online", request_rate=20.0, burstiness=1.0, seed=1)
    assert a[0] == 0.0 and a == arrival_times([0.0] * 4001, "online", 20.0, 1.0, seed=1)
    assert a[-1] / 4000 == pytest.approx(1 / 20, rel=0.05)  # mean gap 1/rate
    gaps = [y - x for x, y in zip(a, a[1:], strict=False)]
    bursty = arrival_times([0.0] * 4001, "online", 20.0, burstiness=0.25, seed=1)
    bgaps = [y - x for x, y in zip(bursty, bursty[1:], strict=False)]
    cv = lambda g: pd.Series(g).std() / pd.Series(g).mean()
    assert cv(gaps) == pytest.approx(1.0, abs=0.1) and cv(bgaps) == pytest.approx(2.0, abs=0.3)


def test_prompt_ids_seeded_and_capped():
    t = fake_trace([(300, 100), (5, 2)])
    a = build_requests(t, "offline", vocab_size=50, seed=3, caps=LengthCaps(256, 64))
    b = build_requests(t, "offline", vocab_size=50, seed=3, caps=LengthCaps(256, 64))
    assert a == b and a[0].prompt_len == 256 and a[0].output_len == 64
    assert all(0 <= i < 50 for i in a[0].prompt_ids) and len(set(a[0].prompt_ids)) > 10
    assert build_requests(t, "offline", 50, seed=4)[0].prompt_ids != a[0].prompt_ids


def test_repeat_gives_mean_and_ci():
    out = run(fake_trace([(8, 4)] * 8), repeat=3)
    p = out.result["points"][0]
    assert len(p["runs"]) == 3 and p["metrics"]["completed"] == 8
    assert p["metrics_ci95"]["total_token_throughput"] > 0
    assert {r["repeat"] for r in out.rows} == {0, 1, 2}


def test_sweep_reports_highest_rate_meeting_slos():
    # one slot, 5 tokens x 2 ms: ~10 ms a request. At 20 req/s nothing queues; at 2000 req/s they pile up.
    eng = FakeEngine(max_num_seqs=1, step_s=0.002)
    out = run(fake_trace([(4, 5)] * 10), eng, sweep_rates=(20.0, 2000.0), slos={"ttft": 30.0})
    pts = {p["request_rate"]: p["metrics"] for p in out.result["points"]}
    assert pts[20.0]["slo_attainment"] == 1.0 and pts[2000.0]["slo_attainment"] < 0.9
    assert out.result["sweep"]["best_rate"] == 20.0 and out.result["request_rate"] == 20.0


def test_rejected_request_fails_with_its_error_run_goes_on():
    out = run(fake_trace([(10, 3), (500, 3), (10, 3)]), FakeEngine(max_prompt_len=100))
    m = out.result["metrics"]
    assert m["completed"] == 2 and m["failed"] == 1
    bad = [r for r in out.rows if r["status"] == "failed"]
    assert len(bad) == 1 and "exceeds 100" in bad[0]["error"]


def test_engine_crash_fails_inflight_requests_and_marks_partial():
    out = run(fake_trace([(10, 20)] * 6), FakeEngine(max_num_seqs=2, fail_at_step=5))
    r = out.result
    assert r["partial"] and not r["interrupted"] and "fake engine failure" in r["error"]
    statuses = [row["status"] for row in out.rows]
    assert statuses.count("failed") == 6  # all 6 were sent at t=0: every one fails with the error
    assert r["metrics"]["failed"] == 6


def test_ctrl_c_writes_partial_result(tmp_path):
    trace = fake_trace([(10, 30)] * 6 + [(10, 2)] * 2, gap_s=0.002)
    cfg = BenchConfig(mode="online", num_warmups=0, peak_tflops=1.0)
    eng = FakeEngine(max_num_seqs=2, step_s=0.001, interrupt_at_step=12)
    result, run_dir = bench(
        cfg, results_dir=tmp_path, progress=False, backend=EngineBackend(eng), trace=trace
    )
    saved = json.loads((run_dir / "result.json").read_text())
    assert saved["partial"] and saved["interrupted"] and saved["error"] is None
    rows = pd.read_csv(run_dir / "requests.csv")
    assert len(rows) == 8 and set(rows["status"]) <= {"ok", "interrupted", "not_sent"}
    assert (rows["status"] == "interrupted").any()
    assert saved["metrics"]["incomplete"] == (rows["status"] != "ok").sum()
    assert saved["metrics"]["duration"] > 0
    assert saved["environment"]["python"] and saved["peak"]["source"] == "given"


def test_bench_request_ids():
    assert BenchRequest(3, 0.0, (1,), 1).request_id == "req-3"
    assert BenchRequest(-2, 0.0, (1,), 1).request_id == "warmup-2"
