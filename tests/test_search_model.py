"""The performance model against schedules computed by hand, and its interpolation.

The toy profile (test_search_helpers): two layers; at 50 rows of a 100-token decode batch the ops take
attn_norm .5, qkv 1, rope_kv .5, decode_attn 2, o_proj 1, mlp_norm .5, gate_up 2, silu_mul .5, down 1 ms
(prefill attention 0: no prefill rows), i.e. 18 ms per layer at 100 rows.
"""

import pytest
from test_search_helpers import h200_like_profile_dict, toy_profile, toy_profile_dict, write

from engine.plan import OpInstance, PipelinePlan
from engine.plan_library import nano_batch_plan
from nanotune.errors import UserError
from nanotune.search.interp import curve, interp_budget, interp_loglog
from nanotune.search.perfmodel import GRAPH_GAP_MS, LAUNCH_GAP_MS, BatchShape, predict
from nanotune.search.profiledata import DEFAULT_SLOWDOWN, MAX_SLOWDOWN, load_profile, overlap_slowdowns

DECODE_ONLY = BatchShape(num_decode=100, decode_context=10)


def sim(plan, profile, batch, *args, **kw):
    """The model without launch gaps: the schedules below are computed by hand from kernel times alone."""
    return predict(plan, profile, batch, *args, launch_gap_ms=0.0, **kw)


def test_sequential_plan_is_the_sum_of_op_times_times_layers(tmp_path):
    p = toy_profile(tmp_path)
    pred = sim(PipelinePlan.sequential(), p, DECODE_ONLY)
    assert pred.layers_ms == pytest.approx(2 * 18)
    assert pred.busy_ms()["gate_up"] == pytest.approx(2 * 4)
    assert pred.lm_head_ms > 0 and pred.iteration_ms == pytest.approx(36 + pred.lm_head_ms)


def test_two_streams_without_interference_follow_the_critical_path(tmp_path):
    """Layer 0: stream 0 runs pre(0) [0,2], pre(1) [2,4]; stream 1 attn(0) [2,4], attn(1) [4,6]; post(0)
    waits for attn(0): [4,9]; post(1) [9,14]. Layer 1 (attn_norm waits for down, stream 0 is busy until 14)
    repeats the pattern from 14: 28 ms, against 36 sequential."""
    p = toy_profile(tmp_path, slowdown=1.0)
    pred = sim(nano_batch_plan(2, align=1), p, DECODE_ONLY)
    assert pred.layers_ms == pytest.approx(28)
    attn = sorted((n.start, n.end) for n in pred.nodes if n.op == "decode_attn" and n.layer == 0)
    assert attn == [pytest.approx((2, 4)), pytest.approx((4, 6))]


def test_a_slowdown_of_1_5_stretches_the_overlapped_pairs_by_hand(tmp_path):
    """attn(0) (2 ms) beside attn_norm(1) .5, qkv(1) 1, rope_kv(1) .5, each side at 2/3 speed: norm ends at
    2.75, qkv at 4.25, rope and attn(0) both at 5. attn(1) beside o_proj(0) 1, mlp_norm(0) .5 and part of
    gate_up(0): o_proj ends 6.5, mlp_norm 7.25, attn(1) 8 (gate_up then 1.5 alone: 9.5), silu 10, down 11;
    post(1) 11..16. Layer 1 repeats from 16: 32 ms (ideal overlap 28, sequential 36)."""
    p = toy_profile(tmp_path, slowdown=1.5)
    pred = sim(nano_batch_plan(2, align=1), p, DECODE_ONLY)
    assert pred.layers_ms == pytest.approx(32)
    ends = {(n.op, n.layer, n.index): n.end for n in pred.nodes}
    plan = nano_batch_plan(2, align=1)
    first_qkv_1 = next(k for k, i in enumerate(plan.ops) if i.op == "qkv" and i.lo == 0.5)
    assert ends[("qkv", 0, first_qkv_1)] == pytest.approx(4.25)


def test_an_unmeasured_pair_takes_the_documented_default(tmp_path):
    """Without an interference table every pair runs at 1 / DEFAULT_SLOWDOWN: with 2.0, overlap gains
    nothing, so the two-stream plan takes the sequential plan's 36 ms."""
    assert DEFAULT_SLOWDOWN == 2.0
    p = toy_profile(tmp_path, slowdown=None)
    assert sim(nano_batch_plan(2, align=1), p, DECODE_ONLY).layers_ms == pytest.approx(36)
    assert p.slowdown("qkv", {"tokens": 50}, None, "decode_attn", {"batch": 50, "context": 10}, None) == 2.0


def test_pairs_that_did_not_run_concurrently_are_ignored(tmp_path):
    data = toy_profile_dict(slowdown=1.0)
    for e in data["interference"]:
        e["concurrent"] = False  # a CPU profile: the "pair" ran back to back
    p = load_profile(write(tmp_path, data))
    assert p.slowdown("gate_up", {"tokens": 50}, None, "decode_attn", {"batch": 50, "context": 10}, None) == 2.0


def test_kind_fallback_and_nearest_point(tmp_path):
    p = toy_profile(tmp_path, slowdown=1.5)
    # qkv x decode_attn was not measured; gate_up x decode_attn (both gemm x attention) was
    assert p.slowdown("qkv", {"tokens": 50}, None, "decode_attn", {"batch": 50, "context": 10}, None) == 1.5
    # the pair read from b's side
    assert p.slowdown("decode_attn", {"batch": 50, "context": 10}, None, "gate_up", {"tokens": 50}, None) == 1.5
    real = load_profile(write(tmp_path, h200_like_profile_dict(), "h200.json"))
    full = real.slowdown("gate_up", {"tokens": 512}, None, "decode_attn", {"batch": 256, "context": 1024}, None)
    part = real.slowdown("gate_up", {"tokens": 512}, None, "decode_attn", {"batch": 256, "context": 1024}, 44)
    assert full > part > 1  # a budget-confined attention interferes less


def test_pair_spans_become_overlap_rates():
    """Both start together: b (alone .5) ends at .8, so it ran beside a throughout: 1.6. a (alone 1.0) ran
    alone from .8 to 1.2, i.e. .4 of its work; the other .6 took .8 ms beside b: 4/3."""
    e = {"alone_a_ms": 1.0, "alone_b_ms": 0.5, "a_ms": 1.2, "b_ms": 0.8, "slowdown_a": 1.2, "slowdown_b": 1.6}
    assert overlap_slowdowns(e) == pytest.approx((4 / 3, 1.6))
    swapped = {"alone_a_ms": 0.5, "alone_b_ms": 1.0, "a_ms": 0.8, "b_ms": 1.2}
    assert overlap_slowdowns(swapped) == pytest.approx((1.6, 4 / 3))
    serialized = {"alone_a_ms": 1.0, "alone_b_ms": 1.0, "a_ms": 1.0, "b_ms": 2.0}  # b waited for a
    assert overlap_slowdowns(serialized) == (1.0, MAX_SLOWDOWN)


def test_instances_without_rows_of_their_kind_take_no_time(tmp_path):
    """A nano-batch holding only prefill rows runs no decode attention (and vice versa)."""
    p = toy_profile(tmp_path)
    batch = BatchShape(num_decode=50, decode_context=10, num_prefill=50, prefill_context=50.5)
    pred = sim(nano_batch_plan(2, align=1), p, batch, num_layers=1)
    by_range = {(n.op, p_lo): n.end - n.start for n, p_lo in
                zip(pred.nodes, [i.lo for i in nano_batch_plan(2, align=1).ops], strict=True)}
    assert by_range[("decode_attn", 0.5)] == 0 and by_range[("prefill_attn", 0.0)] == 0
    assert by_range[("decode_attn", 0.0)] == pytest.approx(2.0)


def test_tp_collectives_inline_add_to_the_critical_path_overlap_may_hide_them(tmp_path):
    p = load_profile(write(tmp_path, toy_profile_dict(tp=2)))
    seq = PipelinePlan.sequential()
    inline = sim(seq, p, DECODE_ONLY, "inline")
    ar = [n for n in inline.nodes if n.op == "all_reduce"]
    assert len(ar) == 4 and inline.layers_ms == pytest.approx(36 + sum(n.ms for n in ar))
    # one stream of its own changes nothing for a sequential plan (every consumer waits for it) ...
    assert sim(seq, p, DECODE_ONLY, "overlap").layers_ms == pytest.approx(inline.layers_ms)
    # ... but with two nano-batches the all-reduce of one hides behind the other's compute
    nb = nano_batch_plan(2, align=1)
    assert sim(nb, p, DECODE_ONLY, "overlap").layers_ms < sim(nb, p, DECODE_ONLY, "inline").layers_ms


def test_launch_gaps_idle_each_stream_between_kernels(tmp_path):
    """Sequential: 9 kernels per layer (prefill attention launches nothing), 18 in all, 17 gaps between."""
    p = toy_profile(tmp_path)
    seq = PipelinePlan.sequential()
    assert predict(seq, p, DECODE_ONLY, launch_gap_ms=0.5).layers_ms == pytest.approx(44.5)
    # a profile without a launch section: the documented defaults, eager and graph-replayed
    assert predict(seq, p, DECODE_ONLY, graphs=False).layers_ms == pytest.approx(36 + 17 * LAUNCH_GAP_MS)
    assert predict(seq, p, DECODE_ONLY).layers_ms == pytest.approx(36 + 17 * GRAPH_GAP_MS)


def test_launch_gaps_come_from_the_profile_when_it_measured_them(tmp_path):
    """A graph replay: the median of the measured gaps after every kernel (a point without a graph
    measurement, as on CPU, is skipped); a negative gap shortens each kernel instead."""
    d = toy_profile_dict()
    d["launch"] = {"points": [{"batch": 4, "eager_gap_ms": 0.02, "graph_gap_ms": 0.001},
                              {"batch": 64, "eager_gap_ms": 0.01, "graph_gap_ms": 0.003},
                              {"batch": 256, "eager_gap_ms": 0.004, "graph_gap_ms": None}], "method": "test"}
    p = load_profile(write(tmp_path, d))
    seq = PipelinePlan.sequential()
    assert p.launch_gap_ms("eager") == pytest.approx(0.01) and p.launch_gap_ms("graph") == pytest.approx(0.002)
    assert predict(seq, p, DECODE_ONLY).layers_ms == pytest.approx(36 + 17 * 0.002)
    assert p.host_launch_ms() is None  # no eager layer time: eager iterations keep the default gap
    assert predict(seq, p, DECODE_ONLY, graphs=False).layers_ms == pytest.approx(36 + 17 * LAUNCH_GAP_MS)
    d["launch"]["points"] = [{"batch": 4, "eager_gap_ms": 0.01, "graph_gap_ms": -0.01}]
    neg = load_profile(write(tmp_path, d, "neg.json"))
    assert predict(seq, neg, DECODE_ONLY).layers_ms == pytest.approx(36 - 18 * 0.01)  # 18 kernels, each shorter
    d["launch"]["points"] = [{"batch": 4, "eager_gap_ms": "fast"}]
    with pytest.raises(UserError, match=r"launch.points\[0\].eager_gap_ms"):
        load_profile(write(tmp_path, d, "bad.json"))


def test_eager_iterations_wait_for_the_host_to_launch_each_kernel(tmp_path):
    """With the profile's host launch cost c (its smallest eager layer's wall time per op), kernel k cannot
    start before the host has launched it at k * c. Toy kernels at 100 rows take 1-4 ms: with c = 0.1 only
    the first waits (36.1 ms); with c = 3 the host paces all 18 and the last, down (2 ms), ends at 18 * 3 + 2."""
    d = toy_profile_dict()
    seq = PipelinePlan.sequential()
    for c, want in ((0.1, 36.1), (3.0, 56.0)):
        d["launch"] = {"points": [{"batch": 4, "ops": 9, "eager_layer_ms": 9 * c, "eager_gap_ms": 0.0,
                                   "graph_gap_ms": 0.0},
                                  {"batch": 64, "ops": 9, "eager_layer_ms": 100.0, "eager_gap_ms": 0.0,
                                   "graph_gap_ms": 0.0}], "method": "test"}
        p = load_profile(write(tmp_path, d, f"c{c}.json"))
        assert p.host_launch_ms() == pytest.approx(c)  # from the smallest batch's layer
        assert predict(seq, p, DECODE_ONLY, graphs=False).layers_ms == pytest.approx(want)
        assert predict(seq, p, DECODE_ONLY).layers_ms == pytest.approx(36.0)  # a graph replay: no host


def test_sustained_load_scales_each_op_by_the_factor_of_its_bound(tmp_path):
    """A profile's sustained section: each layer's sustained time over the sum of its ops alone is the
    factor of its bound; memory-bound ops (the toy's element-wise ops, decode attention, and GEMMs too small
    to be compute-bound) take the memory factor, compute-bound ones the compute factor."""
    d = toy_profile_dict()
    d["peaks"] = {"bf16_tflops": 800.0, "copy_gb_s": 4000.0}
    d["ops"]["gate_up"]["shape"] = {"n": 28672, "k": 4096}  # ridge: about 200 rows at these peaks
    # a busy card: 1,000 rows of gate_up (40 ms alone, linear toy) took 48 ms; 100 rows of attn_norm 1.05
    d["sustained"] = {"points": [
        {"bound": "compute", "ops": ["gate_up"], "points": [{"tokens": 1000}], "sustained_layer_ms": 48.0},
        {"bound": "memory", "ops": ["attn_norm"], "points": [{"tokens": 100}], "sustained_layer_ms": 1.05}]}
    p = load_profile(write(tmp_path, d))
    assert p.sustained_factors() == pytest.approx({"compute": 1.2, "memory": 1.05})
    assert p.bound("gate_up", {"tokens": 64}) == "memory" and p.bound("gate_up", {"tokens": 1024}) == "compute"
    assert p.bound("decode_attn", {"batch": 512, "context": 4096}) == "memory"
    assert p.bound("prefill_attn", {"tokens": 16}) == "compute"
    assert p.bound("qkv", {"tokens": 4096}) == "memory"  # no shape in the profile: taken as memory-bound
    # 100 decode rows: gate_up (4 ms of the 36) is memory-bound here, like everything else
    assert sim(PipelinePlan.sequential(), p, DECODE_ONLY).layers_ms == pytest.approx(36 * 1.05)
    del d["sustained"]
    assert sim(PipelinePlan.sequential(), load_profile(write(tmp_path, d, "cold.json")), DECODE_ONLY
               ).layers_ms == pytest.approx(36)


def test_graph_padding_follows_the_engines_buckets(tmp_path):
    """Decode-only: the next of engine.graphs' sizes; mixed: engine.mixed_graphs' token rounding (64); too
    large for a graph: as is. Padding rows cost in the token ops only, never in attention."""
    from nanotune.search.perfmodel import graph_padded, instance_point

    assert graph_padded(BatchShape(100, 500), 2048, 512).num_padding == 12  # bucket 112
    assert graph_padded(BatchShape(100, 500, 900, 300), 2048, 512).num_padding == 24  # 1000 -> 1024 tokens
    assert graph_padded(BatchShape(600, 500), 2048, 512).num_padding == 0  # more decodes than max seqs
    assert graph_padded(BatchShape(100, 500, 3000, 300), 2048, 512).num_padding == 0  # beyond the dense batch
    b = graph_padded(BatchShape(100, 500, 900, 300), 2048, 512)
    assert b.num_tokens == 1024
    assert instance_point("prefill_attn", 0, 1024, b)["tokens"] == 900
    assert instance_point("decode_attn", 0, 1024, b)["batch"] == 100
    assert instance_point("gate_up", 0, 1024, b)["tokens"] == 1024
    p = toy_profile(tmp_path)  # linear toy ops: 12 padding rows on 100 add 12% to the token ops' time
    padded = sim(PipelinePlan.sequential(), p, graph_padded(DECODE_ONLY, 2048, 512)).busy_ms()
    plain = sim(PipelinePlan.sequential(), p, DECODE_ONLY).busy_ms()
    assert padded["gate_up"] == pytest.approx(1.12 * plain["gate_up"])
    assert padded["decode_attn"] == pytest.approx(plain["decode_attn"])


def test_interpolation_loglog_and_extrapolation():
    pts = curve([(100, 1.0), (400, 2.0), (100, 3.0)])  # duplicate sizes average
    assert pts == [(100.0, 2.0), (400.0, 2.0)]
    pts = curve([(100, 1.0), (400, 4.0)])
    assert interp_loglog(pts, 200) == pytest.approx(2.0)  # a straight line in log-log
    assert interp_loglog(pts, 50) == 1.0  # the floor below the smallest point
    assert interp_loglog(pts, 800) == pytest.approx(8.0)  # proportional above the largest
    assert interp_loglog(pts, 0) == 0.0


def test_sm_budget_interpolation():
    times = {16: 2.0, 66: 0.5, 0: 0.27}  # 0 = the whole GPU
    assert interp_budget(times, None, 132) == 0.27
    assert interp_budget(times, 66, 132) == 0.5
    assert interp_budget(times, 41, 132) == pytest.approx(1.25)  # linear between measured budgets
    assert interp_budget(times, 8, 132) == pytest.approx(4.0)  # 1 / budget below the smallest
    assert interp_budget(times, 99, 132) == pytest.approx(0.5 + (0.27 - 0.5) * 33 / 66)  # toward the full GPU


def test_realistic_profile_orders_of_magnitude(tmp_path):
    """llama-3-8b on the H200-like profile at the measured sequential run's mean batch (c1024x512: 739
    tokens, 243 decode): the model's per-iteration layer time is of the measured 36.7 ms's order."""
    p = load_profile(write(tmp_path, h200_like_profile_dict()))
    batch = BatchShape(243, 1280, 496, 600)
    seq = sim(PipelinePlan.sequential(), p, batch).layers_ms
    assert 25 < seq < 45
    # with plain-stream slowdowns of 1.9 / 1.7 the full-grid overlap plan loses, as it did on the GPU
    assert sim(nano_batch_plan(2), p, batch).layers_ms > seq


def test_plan_with_budget_on_other_ops_and_three_streams_simulates(tmp_path):
    """Any valid plan simulates (three streams, decode attention alone on its own stream)."""
    p = toy_profile(tmp_path, slowdown=1.2)
    ops = [OpInstance(o) for o in ("attn_norm", "qkv", "rope_kv")] + [
        OpInstance("decode_attn", stream=1, sm_budget=30), OpInstance("prefill_attn", stream=2)] + [
        OpInstance(o) for o in ("o_proj", "mlp_norm", "gate_up", "silu_mul", "down")]
    plan = PipelinePlan("three", tuple(ops), num_streams=3)
    plan.validate(num_sms=100)
    pred = sim(plan, p, DECODE_ONLY)
    assert pred.layers_ms > 36  # a 30-program budget slows the lone attention (no partner to overlap)


def test_tp_allreduce_from_the_profiles_measured_points(tmp_path):
    """A profile that timed the all-reduce over real ranks: its times interpolated by message bytes replace the
    ring estimate, and its all-reduce x GEMM point gives the collective's slowdown beside other kernels."""
    from nanotune.search.perfmodel import allreduce_ms
    from nanotune.search.profiledata import DEFAULT_COMM_SLOWDOWN

    d = toy_profile_dict(tp=2)
    ring = load_profile(write(tmp_path, d, "ring.json"))
    row = 2 * 64  # bytes per token: bf16 rows of hidden 64
    # 64 and 6,400 tokens: 0.05 ms and 0.2 ms; beside a 1 ms GEMM they took 1.02 and 1.1 ms together
    d["collectives"]["all_reduce"].update(measured=True, impl="nccl", gemm_n=1024, points=[
        {"bytes": 64 * row, "ms": 0.05, "gemm_ms": 1.0, "together_ms": 1.02, "overlap_work": 1.05 / 1.02},
        {"bytes": 6400 * row, "ms": 0.2, "gemm_ms": 1.0, "together_ms": 1.1, "overlap_work": 1.2 / 1.1}])
    meas = load_profile(write(tmp_path, d, "measured.json"))
    assert allreduce_ms(meas, 64) == pytest.approx(0.05) and allreduce_ms(meas, 6400) == pytest.approx(0.2)
    assert allreduce_ms(meas, 640) == pytest.approx(interp_loglog([(64 * row, 0.05), (6400 * row, 0.2)], 640 * row))
    assert allreduce_ms(meas, 32) == pytest.approx(0.05)  # below the smallest: its latency
    assert allreduce_ms(meas, 12800) == pytest.approx(0.4)  # above the largest: at its bandwidth
    assert allreduce_ms(ring, 64) != pytest.approx(allreduce_ms(meas, 64))
    # beside the collective: s = (T - A + B) / B with A the longer alone time, B the shorter
    near_small = meas.slowdown("all_reduce", {"tokens": 50}, None, "gate_up", {"tokens": 50}, None)
    near_large = meas.slowdown("gate_up", {"tokens": 50}, None, "all_reduce", {"tokens": 5000}, None)
    assert near_small == pytest.approx((1.02 - 1.0 + 0.05) / 0.05)
    assert near_large == pytest.approx((1.1 - 1.0 + 0.2) / 0.2)
    assert ring.slowdown("all_reduce", {"tokens": 50}, None, "gate_up", {"tokens": 50}, None) == DEFAULT_COMM_SLOWDOWN
    nb = nano_batch_plan(2, align=1)
    with_ring = sim(nb, ring, DECODE_ONLY, "overlap").layers_ms
    assert sim(nb, meas, DECODE_ONLY, "overlap").layers_ms != pytest.approx(with_ring)
