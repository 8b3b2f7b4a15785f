"""nanotune.profile.ops: shard shapes under TP, the layer's ops, FLOPs and bytes against hand-computed values."""

import pytest

from engine.plan import LAYER_OPS
from engine.presets import get_preset
from nanotune.profile.ops import (
    COLLECTIVES_NOT_MEASURED,
    collectives,
    decode_cost,
    gemm_cost,
    layer_ops,
    memory_cost,
    op_cost,
    op_shape,
    prefill_cost,
    shard,
    shard_config,
)


@pytest.mark.parametrize("model, tp, heads, kv_heads, inter", [
    ("llama-3-70b", 4, 16, 2, 7168),
    ("llama-2-70b", 8, 8, 1, 3584),
    ("llama-3-8b", 1, 32, 8, 14336),
    ("llama-3-8b", 16, 2, 1, 896),  # fewer KV heads than GPUs: one replicated KV head each
    ("qwen2-72b", 8, 8, 1, 3696),
])
def test_shard_shapes(model, tp, heads, kv_heads, inter):
    s = shard(get_preset(model), tp)
    assert (s.heads, s.kv_heads, s.intermediate) == (heads, kv_heads, inter)
    cfg = get_preset(model)
    assert (s.hidden, s.vocab, s.num_layers, s.head_dim) == (cfg.hidden_size, cfg.vocab_size, cfg.num_layers,
                                                              cfg.head_dim)


def test_params_per_gpu():
    cfg = get_preset("llama-3-8b")
    assert shard(cfg, 1).params_per_gpu == cfg.num_params  # 8.03 B
    assert round(shard(cfg, 1).params_per_gpu / 1e9, 2) == 8.03
    s70 = shard(get_preset("llama-3-70b"), 4)
    assert 0.24 < s70.params_per_gpu / get_preset("llama-3-70b").num_params < 0.26


def test_shard_errors_name_what_does_not_divide():
    with pytest.raises(ValueError, match="attention heads 28 do not divide over --tp 8"):
        shard(get_preset("qwen2-7b"), 8)
    with pytest.raises(ValueError, match=">= 1"):
        shard(get_preset("llama-3-8b"), 0)


def test_shard_config_is_an_engine_config_of_the_shard():
    cfg = get_preset("llama-3-70b")
    sc = shard_config(cfg, shard(cfg, 4), num_layers=3)
    assert (sc.num_layers, sc.num_heads, sc.num_kv_heads, sc.intermediate_size) == (3, 16, 2, 7168)
    assert sc.qkv_size == (16 + 2 * 2) * 128 and sc.hidden_size == 8192


def test_layer_ops_follow_the_engine_and_have_kinds():
    ops = layer_ops()
    assert [op for op, _ in ops] == list(LAYER_OPS)
    kinds = dict(ops)
    assert {op for op, k in kinds.items() if k == "gemm"} == {"qkv", "o_proj", "gate_up", "down"}
    assert {op for op, k in kinds.items() if k == "attention"} == {"decode_attn", "prefill_attn"}
    assert {op for op, k in kinds.items() if k == "memory"} == {"attn_norm", "mlp_norm", "rope_kv", "silu_mul"}


def test_gemm_shapes_and_cost():
    s = shard(get_preset("llama-3-8b"), 1)
    assert s.gemm_nk("qkv") == (6144, 4096) and s.gemm_nk("o_proj") == (4096, 4096)
    assert s.gemm_nk("gate_up") == (28672, 4096) and s.gemm_nk("down") == (4096, 14336)
    flops, nbytes = gemm_cost(1024, 28672, 4096)
    assert flops == 2 * 1024 * 28672 * 4096  # 240.5 GFLOP
    assert nbytes == 2 * (1024 * 4096 + 28672 * 4096 + 1024 * 28672)
    assert op_shape(s, "down") == {"n": 4096, "k": 14336}
    assert op_cost(s, "gate_up", {"tokens": 1024}) == (flops, nbytes)


def test_decode_cost_by_hand():
    s = shard(get_preset("llama-3-8b"), 1)
    flops, nbytes = decode_cost(s, batch=64, context=4096)
    assert flops == 4 * 32 * 128 * 64 * 4096
    kv = 2 * 64 * 4096 * 8 * 128 * 2  # K and V, bf16: exactly 1 GiB
    assert kv == 2**30
    assert nbytes == kv + 2 * (2 * 64 * 32 * 128) + 4 * 64 * (4096 // 16 + 1)
    assert op_cost(s, "decode_attn", {"batch": 64, "context": 4096}) == (flops, nbytes)


def test_prefill_cost_by_hand():
    s = shard(get_preset("llama-2-70b"), 8)  # 8 heads, 1 KV head, D 128
    flops, nbytes = prefill_cost(s, tokens=4, context=10, seqs=2)
    # each of 2 sequences: a chunk of 2 after 10 cached: queries see 11 and 12 keys
    assert flops == 4 * 8 * 128 * 2 * (11 + 12)
    assert nbytes == 2 * (2 * 4 * 8 * 128 + 2 * 2 * 12 * 128) + 4 * 2 * (1 + 2)
    fresh, _ = prefill_cost(s, tokens=512, context=0, seqs=1)
    assert fresh == 4 * 8 * 128 * 512 * 513 / 2


def test_memory_costs_by_hand():
    s = shard(get_preset("llama-3-8b"), 1)
    assert memory_cost(s, "attn_norm", 10)[1] == 2 * (4 * 10 * 4096 + 4096)
    assert memory_cost(s, "silu_mul", 10)[1] == 2 * 3 * 10 * 14336
    rot = 10 * (4096 + 1024)
    assert memory_cost(s, "rope_kv", 10)[1] == 2 * (2 * rot + 4 * 10 * 1024) + 10 * (4 * 128 + 16)
    assert op_shape(s, "rope_kv") == {"width": 5120} and op_shape(s, "decode_attn")["kv_heads"] == 8
    with pytest.raises(KeyError):
        memory_cost(s, "qkv", 10)


def test_collectives_listed_not_measured():
    assert collectives(shard(get_preset("llama-3-8b"), 1)) == {}
    c = collectives(shard(get_preset("llama-3-70b"), 4))["all_reduce"]
    assert c["after"] == ["o_proj", "down"] and c["measured"] is False and c["ranks"] == 4
    assert c["bytes_per_token"] == 2 * 8192 and c["why"] == COLLECTIVES_NOT_MEASURED
