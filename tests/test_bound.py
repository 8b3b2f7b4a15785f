"""The power-aware bound's arithmetic (nanotune.results.bound) on cases small enough to check by hand."""

import random

import pytest

from nanotune.profile.ops import Shard
from nanotune.results.bound import (
    BoundUnavailable,
    Rates,
    bound_block,
    compute_bound,
    efficiency_metrics,
    rates_from_profile,
    recompute,
    workload_work,
)

# one layer, hidden 4, one head of 4, one KV head, intermediate 8, vocab 10
TOY = Shard(model="toy", tp=1, rank=0, vocab_per_rank=10, hidden=4, heads=1, kv_heads=1, head_dim=4,
            intermediate=8, vocab=10, num_layers=1, params_per_gpu=1)


def test_work_of_one_request_by_hand():
    # prompt 2, output 3: the layers see 2 prompt tokens + 2 fed-back outputs; decode steps read 3 then 4 tokens
    w = workload_work([(2, 3)])
    assert (w.num_requests, w.prompt_tokens, w.output_tokens, w.total_tokens) == (1, 2, 3, 5)
    assert (w.layer_tokens, w.sampled_tokens) == (4, 3)
    assert w.decode_kv_tokens == 3 + 4
    assert w.prefill_pairs == 1 + 2  # causal: query i sees i keys
    assert w.prefill_kv_tokens == 2


def test_work_sums_match_step_by_step():
    rng = random.Random(0)
    lengths = [(rng.randint(1, 300), rng.randint(1, 200)) for _ in range(50)]
    w = workload_work(lengths)
    assert w.decode_kv_tokens == sum(p + j for p, o in lengths for j in range(1, o))
    assert w.prefill_pairs == sum(i for p, _ in lengths for i in range(1, p + 1))
    assert w.layer_tokens == sum(p + o - 1 for p, o in lengths)


def test_bound_by_hand():
    b = compute_bound(workload_work([(2, 3)]), TOY, Rates(1000.0, 1000.0, 1.25, "hand"))
    # GEMM FLOPs, 2 per multiply-add, 4 layer tokens: qkv 12x4, o_proj 4x4, gate_up 16x4, down 4x8 weights
    layer = 2 * 4 * (12 * 4 + 4 * 4 + 16 * 4 + 4 * 8)
    lm_head = 2 * 3 * 10 * 4  # 3 sampled tokens x vocab 10 x hidden 4
    assert b["gemm_flops"] == layer + lm_head == 1520
    assert b["prefill_attention_flops"] == 4 * 1 * 4 * 3  # 4 FLOPs x heads x head_dim x 3 pairs
    kv = 2 * 1 * 4 * 2  # K and V, 1 layer, 1 KV head of 4, bf16
    assert b["decode_kv_bytes"] == 7 * kv and b["prefill_kv_bytes"] == 2 * kv
    # element-wise ops over 4 rows, bf16: two norms (read delta + residual + weight, write 2) 2 x 2 x (4*4*4 + 4),
    # silu-mul (read [4, 16], write [4, 8]) 2 x 3 x 4 x 8, rope + KV store 2 x (2 x 4 x 8 + 4 x 4 x 4) + 4 x (16 + 16)
    assert b["other_bytes"] == 2 * 2 * 68 + 192 + 384 == 848
    compute, memory = (1520 + 48) / 1000, (112 + 32 + 848) / 1000
    assert b["compute_s"] == pytest.approx(compute) and b["memory_s"] == pytest.approx(memory)
    assert b["bound_sequential_total_token_throughput"] == pytest.approx(5 / (compute + memory))
    assert b["bound_total_token_throughput"] == pytest.approx(5 / ((compute + memory) / 1.25))


def test_overlap_never_below_either_side_nor_below_back_to_back():
    w = workload_work([(2, 3)])
    seq = compute_bound(w, TOY, Rates(1000.0, 1000.0, 0.8, "x"))  # together slower than back to back
    assert seq["overlap"] == 1.0
    assert seq["bound_total_token_throughput"] == pytest.approx(seq["bound_sequential_total_token_throughput"])
    perfect = compute_bound(w, TOY, Rates(1000.0, 1000.0, None, "x"))  # not measured: perfect overlap
    assert perfect["bound_s"] == pytest.approx(max(perfect["compute_s"], perfect["memory_s"]))
    huge = compute_bound(w, TOY, Rates(1000.0, 1000.0, 50.0, "x"))  # cannot beat the longer side alone
    assert huge["bound_s"] == pytest.approx(max(huge["compute_s"], huge["memory_s"]))


def test_fp8_kv_halves_the_kv_bytes_only():
    w = workload_work([(100, 50)])
    bf16 = compute_bound(w, TOY, Rates(1e3, 1e3, 1.0, "x"), kv_dtype_bytes=2)
    fp8 = compute_bound(w, TOY, Rates(1e3, 1e3, 1.0, "x"), kv_dtype_bytes=1)
    assert fp8["decode_kv_bytes"] == bf16["decode_kv_bytes"] / 2
    assert fp8["other_bytes"] == bf16["other_bytes"] and fp8["gemm_flops"] == bf16["gemm_flops"]
    assert fp8["bound_total_token_throughput"] > bf16["bound_total_token_throughput"]


def test_stored_block_recomputes_to_the_same_figures():
    block = bound_block(workload_work([(7, 5), (3, 9)]), TOY, Rates(2e3, 5e2, 1.1, "x"), 2)
    again = recompute(block)
    assert again["bound_total_token_throughput"] == pytest.approx(block["bound_total_token_throughput"])


def test_rates_from_a_power_section():
    with pytest.raises(BoundUnavailable, match="no power section"):
        rates_from_profile({"gpu": {"name": "x"}}, "p.json")
    power = {"gemm": {"tflops": 600.0}, "together": [{"sum": 1.04}, {"sum": 1.1}],
             "read": [{"kernel": "torch_sum", "gb_s": 4000.0}, {"kernel": "probe_tma", "gb_s": 4500.0}]}
    r = rates_from_profile({"gpu": {"name": "H"}, "power": power}, "p.json")
    assert (r.gemm_flops_per_s, r.read_bytes_per_s, r.overlap) == (600e12, 4500e9, 1.1)
    assert "p.json" in r.source


def test_efficiency_metrics():
    assert efficiency_metrics(50.0, {"bound_total_token_throughput": 200.0}) == {
        "bound_total_token_throughput": 200.0, "efficiency_vs_bound": 0.25}
    assert efficiency_metrics(50.0, None) == {"bound_total_token_throughput": None, "efficiency_vs_bound": None}
