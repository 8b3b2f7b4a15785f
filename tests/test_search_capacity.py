"""KV capacity against the engine's sizing, the steady state against hand computation, and the replay."""

import pytest
from test_search_helpers import LLAMA_70B_SHAPES

from engine.presets import get_preset
from nanotune.profile.ops import Shard
from nanotune.search.capacity import WorkloadStats, gpu_memory_gib, kv_capacity, steady_state
from nanotune.search.replay import replay

LLAMA_8B = {"hidden": 4096, "heads": 32, "kv_heads": 8, "head_dim": 128, "intermediate": 14336, "vocab": 128256,
            "num_layers": 32, "params_per_gpu": get_preset("llama-3-8b").num_params}


def test_kv_capacity_matches_the_engine_on_an_h200():
    """results/reference/h200/engine-sequential.json: 55,243 blocks for llama-3-8b, 2048-token dense batch,
    512 seqs, gpu_memory_fraction 0.9, 139.8 GiB."""
    cap = kv_capacity(Shard.of(LLAMA_8B), gpu_memory_gib("NVIDIA H200"), 0.9, 2048, 512, 16)
    assert cap.num_blocks == pytest.approx(55_243, rel=0.005)
    assert cap.weights_bytes / 2**30 == pytest.approx(14.96, abs=0.01)
    assert cap.num_tokens == cap.num_blocks * 16


def test_kv_capacity_under_tp_and_when_the_model_does_not_fit():
    tp8 = {**LLAMA_70B_SHAPES, "heads": 8, "kv_heads": 1, "intermediate": 3584,
           "params_per_gpu": get_preset("llama-3-70b").num_params // 8}
    s = Shard.of(tp8)
    assert s.kv_bytes_per_token() == 2 * 80 * 1 * 128 * 2  # one KV head per GPU at TP 8
    assert kv_capacity(s, gpu_memory_gib("H100"), 0.9).num_tokens > 1_000_000
    whole = {**LLAMA_70B_SHAPES, "params_per_gpu": get_preset("llama-3-70b").num_params}
    assert kv_capacity(Shard.of(whole), gpu_memory_gib("NVIDIA H100 80GB HBM3")).num_blocks < 0


def test_gpu_memory_from_profile_name_or_error():
    assert gpu_memory_gib("whatever", {"memory_gib": 42.0}) == 42.0
    assert gpu_memory_gib("NVIDIA H100 NVL") == 93.1
    with pytest.raises(Exception, match="--gpu-memory-gib"):
        gpu_memory_gib("Mystery Accelerator")


def test_workload_stats_by_hand():
    s = WorkloadStats.of([100, 300], [11, 1])
    assert (s.mean_prompt, s.mean_output, s.mean_decode_steps) == (200, 6, 5)
    # only the first decodes (10 steps, contexts 101..110): mean 105.5
    assert s.decode_context == pytest.approx(105.5)
    # prompt tokens attend their position: (100 * 101 / 2 + 300 * 301 / 2) / 400
    assert s.prefill_attended == pytest.approx((5050 + 45150) / 400)


def test_steady_state_limits_by_hand():
    s = WorkloadStats.of([1024] * 4, [513] * 4)  # 512 decode steps each
    ratio = 1024 / 512
    # the dense batch limits: d = T / (1 + prompt / steps)
    ss = steady_state(s, 1536, 10_000, 10**9)
    assert ss.limit == "tokens" and ss.batch.num_decode == pytest.approx(512)
    assert ss.batch.num_prefill == pytest.approx(512 * ratio) and ss.batch.num_tokens == 1536
    # max_num_seqs limits
    ss = steady_state(s, 8192, 300, 10**9)
    assert ss.limit == "seqs" and ss.batch.num_decode == 300 and ss.batch.num_prefill == pytest.approx(600)
    # the KV cache limits: each holds its mean context (1024 + 256.5) + half a block
    ss = steady_state(s, 8192, 10_000, 100_000)
    assert ss.limit == "kv" and ss.batch.num_decode == pytest.approx(100_000 / (1280.5 + 8))
    # throughput: completions per iteration x (prompt + output) per second
    ss = steady_state(s, 1536, 10_000, 10**9)
    assert ss.total_tokens_per_s(s, 50.0) == pytest.approx(512 / 512 * (1024 + 513) * 20)


def test_replay_runs_the_real_scheduler():
    """Four 64-in / 9-out requests, 128-token dense batch: two prompts fill iteration 0; iteration 1 is the
    first two's decode tokens first, then 126 prefill tokens (the third prompt and 62 of the fourth), with no
    decode-row alignment; with the GPU engine's (the default), the 2 decode rows pad to 32 and the prefill
    budget is 96."""
    aligned = replay([(64, 9)] * 4, 128, 8, num_blocks=100)
    assert [(round(b.num_decode), round(b.num_prefill)) for b in aligned.batches[:2]] == [(0, 128), (2, 96)]
    r = replay([(64, 9)] * 4, 128, 8, num_blocks=100, decode_row_align=1)
    assert [(round(b.num_decode), round(b.num_prefill)) for b in r.batches[:3]] == [(0, 128), (2, 126), (3, 2)]
    assert r.batches[1].decode_context == 65  # 64 prompt tokens + the new one
    assert sum(b.num_decode for b in r.batches) == 4 * 8
    assert r.total_tokens == 4 * 73 and r.num_preemptions == 0
    assert sum(n for _, n in r.buckets()) == len(r.batches)
