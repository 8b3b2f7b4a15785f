"""Benchmark metrics against values computed by hand (vLLM `bench serve` definitions)."""

import math

import numpy as np
import pytest

from nanotune.bench.metrics import compute_metrics, meets_slos, parse_goodput
from nanotune.bench.records import FAILED, RequestRecord
from nanotune.bench.steady import steady_state_metrics, steady_window


def rec(rid, prompt, expected, tokens, send=0.0, arrival=0.0, end=None, error=None):
    r = RequestRecord(rid, prompt, expected, arrival_s=arrival)
    r.send_s = send
    if error:
        r.fail(end, error)
        return r
    for t in tokens:
        r.add_tokens(t)
    r.finish(tokens[-1] if end is None else end)
    return r


@pytest.fixture
def records():
    return [
        rec("a", 10, 4, [0.1, 0.2, 0.3, 0.4]),  # ttft 100, e2e 400, tpot 100, itl 100 x3
        rec("b", 20, 2, [0.7, 1.0], send=0.5),  # queued 500 ms; ttft 200, e2e 500, tpot 300, itl 300
        rec("c", 5, 1, [0.05]),  # one token: ttft = e2e = 50, no tpot, no itl
        rec("d", 8, 3, [], send=0.1, end=0.2, error="boom"),  # failed, queued 100 ms
    ]


def test_counts_and_throughput(records):
    m = compute_metrics(records, duration=1.0)
    assert (m["completed"], m["failed"], m["incomplete"], m["num_short"]) == (3, 1, 0, 0)
    assert m["total_input_tokens"] == 35 and m["total_output_tokens"] == 7
    assert m["request_throughput"] == pytest.approx(3.0)
    assert m["output_throughput"] == pytest.approx(7.0)
    assert m["total_token_throughput"] == pytest.approx(42.0)
    assert m["optimal_total_token_throughput"] is None and m["efficiency"] is None


def test_latencies_hand_computed(records):
    m = compute_metrics(records, duration=1.0)
    # TTFT [100, 200, 50]
    assert m["mean_ttft_ms"] == pytest.approx(350 / 3)
    assert m["median_ttft_ms"] == pytest.approx(100)
    assert m["std_ttft_ms"] == pytest.approx(
        math.sqrt(((100 - 350 / 3) ** 2 + (200 - 350 / 3) ** 2 + (50 - 350 / 3) ** 2) / 3)
    )
    assert m["p90_ttft_ms"] == pytest.approx(180) and m["p99_ttft_ms"] == pytest.approx(198)
    # TPOT (vLLM): a (400-100)/3 = 100, b (500-200)/1 = 300, c excluded
    assert m["mean_tpot_ms"] == pytest.approx(200) and m["p99_tpot_ms"] == pytest.approx(298)
    # ITL pooled over requests: [100, 100, 100, 300]
    assert m["mean_itl_ms"] == pytest.approx(150) and m["median_itl_ms"] == pytest.approx(100)
    assert m["p90_itl_ms"] == pytest.approx(240)
    # E2EL [400, 500, 50]; NanoFlow normalized latency mean(400/4, 500/2, 50/1)
    assert m["mean_e2el_ms"] == pytest.approx(950 / 3) and m["median_e2el_ms"] == pytest.approx(400)
    assert m["normalized_latency_ms"] == pytest.approx(400 / 3)
    # client queue time apart from TTFT: [0, 500, 0, 100]
    assert m["mean_queue_ms"] == pytest.approx(150)


def test_percentiles_match_numpy(records):
    m = compute_metrics(records, duration=1.0)
    ttfts = [100, 200, 50]
    for q in (50, 90, 99):
        assert m[f"p{q}_ttft_ms"] == pytest.approx(np.percentile(ttfts, q))
    assert m["std_ttft_ms"] == pytest.approx(np.std(ttfts))


def test_goodput(records):
    m = compute_metrics(records, 1.0, slos={"ttft": 150})
    assert m["request_goodput"] == pytest.approx(2.0)  # a and c
    assert m["slo_attainment"] == pytest.approx(0.5)  # of the 4 sent, failed counts as a miss
    assert compute_metrics(records, 1.0, slos={"tpot": 150})["request_goodput"] == pytest.approx(2.0)
    assert compute_metrics(records, 1.0, slos={"ttft": 150, "e2el": 300})["request_goodput"] == pytest.approx(
        1
    )
    assert "request_goodput" not in compute_metrics(records, 1.0)
    assert meets_slos(records[2], {"tpot": 0.001})  # one-token output: TPOT counts as 0 (vLLM)
    assert not meets_slos(records[3], {"e2el": 1e9})  # a failure never meets an SLO


def test_optimal_and_efficiency(records):
    m = compute_metrics(records, 1.0, num_params=10**9, peak_flops=1e12)
    assert m["optimal_total_token_throughput"] == pytest.approx(500.0)  # 1e12 / (2 * 1e9)
    assert m["efficiency"] == pytest.approx(42 / 500)


def test_short_output_is_flagged():
    r = rec("s", 4, 10, [0.1, 0.2])
    assert r.is_short
    m = compute_metrics([r], 1.0)
    assert m["num_short"] == 1 and m["completed"] == 1


def test_empty_latency_lists_are_null_not_zero():
    m = compute_metrics([rec("d", 8, 3, [], end=0.2, error="x")], 1.0)
    assert m["completed"] == 0 and m["mean_ttft_ms"] is None and m["p99_e2el_ms"] is None


def test_parse_goodput():
    assert parse_goodput(["ttft:200 tpot:50", "e2el:1000"]) == {"ttft": 200, "tpot": 50, "e2el": 1000}
    assert parse_goodput(["ttft:1.5,tpot:2"]) == {"ttft": 1.5, "tpot": 2}
    for bad in ["ttft", "foo:3", "ttft:x", "ttft:-1"]:
        with pytest.raises(ValueError, match="--goodput"):
            parse_goodput([bad])


def steady_records():
    # decoding count: [0,1): 1, [1,2): 2, [2,6): 4, [6,8): 3, [8,9): 1 (ramp-up, plateau, drain).
    # Time-weighted median over [0, 9] is 3 -> threshold 2.7 -> window [2, 8].
    return [rec("1", 10, 9, [0, 1, 2, 3, 4, 5, 6, 7, 8]), rec("2", 20, 9, [1, 2, 3, 4, 5, 6, 7, 8, 9]),
            rec("3", 30, 7, [2, 3, 4, 5, 6, 7, 8]), rec("4", 40, 3, [2, 4, 6])]


def test_steady_window_rule():
    assert steady_window(steady_records(), duration=9) == (2, 8)
    s = steady_state_metrics(steady_records(), duration=9)
    # outputs in [2, 8]: 7 + 7 + 7 + 3 = 24; prompts whose first token is inside: 30 + 40
    assert s["steady_output_throughput"] == pytest.approx(24 / 6)
    assert s["steady_total_token_throughput"] == pytest.approx(94 / 6)


def test_steady_window_counts_chunk_tokens():
    rs = steady_records()
    rs[0].output_len = 18  # an endpoint whose 9 chunks carried 18 tokens: 2 per chunk
    s = steady_state_metrics(rs, duration=9)
    assert s["steady_output_throughput"] == pytest.approx(31 / 6)


def test_steady_window_ignores_a_spike_and_keeps_dips():
    # level 2 most of the time, one short spike to 5, one short dip to 1: window still [0, 10]
    rs = [rec("a", 1, 3, [0, 5, 10]), rec("b", 1, 2, [0, 4]), rec("c", 1, 2, [4.5, 10]),
          rec("s1", 1, 2, [6, 6.1]), rec("s2", 1, 2, [6, 6.1]), rec("s3", 1, 2, [6, 6.1])]
    assert steady_window(rs, duration=10) == (0, 10)


def test_no_steady_state_for_a_blip_in_a_long_run():
    rs = [rec("a", 10, 3, [0.0, 0.5, 1.0]), rec("b", 10, 3, [0.0, 0.5, 1.0])]
    assert steady_window(rs, duration=100.0) is None
    assert steady_state_metrics(rs, 100.0)["steady_total_token_throughput"] is None
    assert steady_window(rs[:1], duration=1.0) is None  # one request: no batch to speak of


def test_failed_status():
    r = rec("d", 8, 3, [], end=0.2, error="boom")
    assert r.status == FAILED and r.error == "boom" and not r.is_short
