"""Tensor parallelism on CPU: gloo processes (one per rank, spawned by the engine) against TP 1.

TPN must compute TP1's function: fp32 logits within 1e-4 relative error and the same greedy tokens, with
chunked prefill and forced preemption; a nano-batch plan with its all-reduces on their own stream equals the
sequential plan; with more ranks than KV heads the KV heads are replicated.
"""

from __future__ import annotations

import pytest
import torch

from engine import EngineConfig, LLMEngine
from engine.errors import EngineConfigError
from engine.request import SamplingParams
from tests.hf_reference import generate_with_logits, save_tiny_checkpoint, save_tiny_model

STEPS = 6


def _prompts(vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(3)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in (37, 5, 52, 21)]


def run(config: EngineConfig, prompts) -> tuple[list[list[int]], list[list[torch.Tensor]], dict]:
    """Greedy tokens and each step's logits per prompt (rank 0's view), and the engine's stats."""
    eng = LLMEngine(config)
    try:
        _, tokens, logits = generate_with_logits(eng, prompts, STEPS)
        stats = {**eng.stats(), "heads_per_rank": eng.runner.model.cfg.num_heads}
    finally:
        eng.close()
    return tokens, logits, stats


def assert_same(ref, got):
    (t1, l1, _), (t2, l2, _) = ref, got
    assert t1 == t2
    for a_rows, b_rows in zip(l1, l2, strict=True):
        assert len(a_rows) == len(b_rows) == STEPS
        for a, b in zip(a_rows, b_rows, strict=True):
            rel = float((a - b).norm() / a.norm())
            assert rel <= 1e-4, rel


def _cfg(model, **kw) -> EngineConfig:
    base = dict(model=str(model), device="cpu", dtype="float32", keep_logits=True, max_num_batched_tokens=32,
                max_num_seqs=4)
    return EngineConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("tp")
    for v in ("llama3", "qwen2"):
        save_tiny_checkpoint(v, root / v)
    return root


@pytest.mark.parametrize("variant", ["llama3", "qwen2"])
def test_tp2_equals_tp1_with_chunked_prefill_and_preemption(checkpoints, variant):
    path = checkpoints / variant
    prompts = _prompts(384)
    # 14 blocks of 8 tokens cannot hold the four sequences at their peak; over-committed admission preempts
    small = dict(block_size=8, num_kv_blocks=14, kv_overcommit=4.0)
    ref = run(_cfg(path, **small), prompts)
    got = run(_cfg(path, tp=2, **small), prompts)
    assert ref[2]["num_preemptions"] > 0 and got[2]["num_preemptions"] == ref[2]["num_preemptions"]
    assert_same(ref, got)


@pytest.mark.parametrize("variant,plan", [("llama3", None), ("qwen2", None), ("llama3", "nb2-ar")])
def test_allreduce_fused_with_the_next_norm_equals_tp1(checkpoints, variant, plan):
    """fused-rmsnorm: each all-reduce op also does the residual add + RMSNorm after it (the next layer's input
    norm, the MLP's, the final one before the lm_head) and the norm ops are left with nothing to do; on gloo the
    sum goes through the process group first. TP2 so must still compute TP1's function, preemption included."""
    path = checkpoints / variant
    prompts = _prompts(384)
    small = dict(block_size=8, num_kv_blocks=14, kv_overcommit=4.0)
    nb = dict(plan=plan, max_num_batched_tokens=64) if plan else {}
    ref = run(_cfg(path, **small), prompts)
    got = run(_cfg(path, tp=2, allreduce="fused-rmsnorm", **small, **nb), prompts)
    assert got[2]["num_preemptions"] > 0
    assert_same(ref, got)


def test_tp2_nano_batch_plan_equals_sequential(checkpoints):
    path = checkpoints / "llama3"
    prompts = _prompts(384)
    seq = run(_cfg(path, tp=2), prompts)
    nb = run(_cfg(path, tp=2, plan="nb2-ar", max_num_batched_tokens=64), prompts)
    assert_same(seq, nb)


def _save_8_heads(path):
    """Llama-3 shape with 8 query heads and 2 KV heads: TP 4 and TP 8 replicate each KV head."""
    import transformers

    # head_dim 16: the attention kernels take powers of two >= 16 (the checkpoint guard refuses 8)
    cfg = transformers.LlamaConfig(vocab_size=384, hidden_size=128, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=512,
                                   rope_theta=500000.0)
    save_tiny_model(transformers.LlamaForCausalLM, cfg, path, seed=1)


@pytest.mark.parametrize("tp", [4, 8])
def test_kv_heads_replicated_when_tp_exceeds_them(tmp_path, tp):
    _save_8_heads(tmp_path)
    prompts = _prompts(384)[:2]
    assert_same(run(_cfg(tmp_path), prompts), run(_cfg(tmp_path, tp=tp), prompts))


def test_random_weights_tp2_equal_tp1():
    """Random weights: TP1 and TP2 build the same model from one seed (the tokens and logits agree)."""
    prompts = _prompts(512)
    kw = dict(num_kv_blocks=64)
    ref, got = run(_cfg("tiny-llama-micro", **kw), prompts), run(_cfg("tiny-llama-micro", tp=2, **kw), prompts)
    assert (ref[2]["heads_per_rank"], got[2]["heads_per_rank"]) == (4, 2)  # rank 0 holds half the heads
    assert_same(ref, got)


def test_abort_reaches_every_rank():
    """A request aborted on rank 0 (a client went away) is dropped on every rank before the next step: the
    other requests then get TP1's tokens, and the ranks keep stepping together."""
    def tokens_after_abort(cfg):
        eng = LLMEngine(cfg)
        try:
            ids = [eng.add_request(p, SamplingParams(max_tokens=STEPS, ignore_eos=True)) for p in _prompts(512)]
            out = {i: [] for i in ids}
            for k in range(200):
                if k == 3:
                    assert eng.abort(ids[1])
                if not eng.has_unfinished():
                    break
                for o in eng.step():
                    out[o.request_id] += o.new_token_ids
            return [out[i] for i in ids if i != ids[1]], eng.stats()["num_running"]
        finally:
            eng.close()

    kw = dict(num_kv_blocks=64)
    ref = tokens_after_abort(_cfg("tiny-llama-micro", **kw))
    got = tokens_after_abort(_cfg("tiny-llama-micro", tp=2, **kw))
    assert got == ref and all(len(t) == STEPS for t in ref[0])


def test_dead_worker_ends_the_run_naming_its_rank():
    from engine.parallel.launch import TPWorkerError

    eng = LLMEngine(_cfg("tiny-llama-micro", tp=2, num_kv_blocks=64))
    try:
        eng.add_request(_prompts(512)[0], SamplingParams(max_tokens=50, ignore_eos=True))
        eng.step()
        worker = eng._driver.workers.procs[1]
        worker.kill()
        worker.join()
        with pytest.raises(TPWorkerError, match=r"^rank 1: killed by SIGKILL"):
            while eng.has_unfinished():
                eng.step()
    finally:
        eng.close()
    assert not worker.is_alive()


def test_bad_tp_is_refused_before_loading():
    with pytest.raises(EngineConfigError, match="attention heads 4 do not divide over tp 3"):
        LLMEngine(_cfg("tiny-llama-micro", tp=3))
    with pytest.raises(EngineConfigError, match=r"^allreduce 'symm-mem-one-shot': needs CUDA GPUs"):
        LLMEngine(_cfg("tiny-llama-micro", tp=2, allreduce="symm-mem-one-shot"))
    with pytest.raises(EngineConfigError, match="unknown"):
        LLMEngine(_cfg("tiny-llama-micro", tp=2, allreduce="ring"))


def test_symmetric_memory_allreduce_needs_its_collectives_on_one_stream():
    """One symmetric buffer serves every call: a plan whose collectives could overlap on two streams is refused
    for those implementations (NCCL orders its own), the library's nb2-ar (collectives on one stream) is not."""
    from engine.parallel.comm import ONE_BUFFER, check_plan_streams
    from engine.plan import OpInstance, PipelinePlan
    from engine.plan_library import resolve_plan

    nb2 = resolve_plan("nb2-ar", 132).with_collectives()
    two = PipelinePlan("split", tuple(OpInstance(i.op, i.lo, i.hi, 1 if i.op == "down_allreduce" else i.stream)
                                      for i in nb2.ops), num_streams=max(2, nb2.num_streams))
    for impl in ONE_BUFFER:
        check_plan_streams(impl, nb2)
        with pytest.raises(EngineConfigError, match=rf"^split: allreduce '{impl}' needs every collective op on one"):
            check_plan_streams(impl, two, two.name)
    check_plan_streams("nccl", two)


@pytest.mark.parametrize("name", ["tiny-llama-micro", "qwen2-7b"])
def test_shard_loader_at_tp1_is_random_weights(name):
    """random_shard_weights draws in random_weights's order: at TP 1 it is the same model, tensor for tensor
    (a change of draw order in either breaks TP1 = TPN for random weights; this catches it)."""
    import dataclasses

    from engine.models.sharding import random_shard_weights
    from engine.models.weights import random_weights
    from engine.presets import get_preset
    from engine.sizing import shard_shapes

    cfg = get_preset(name)
    if name == "qwen2-7b":  # qkv bias and Qwen2's vocabulary, at a size a CPU test can hold
        cfg = dataclasses.replace(cfg, vocab_size=1000, hidden_size=64, intermediate_size=96, num_layers=2,
                                  num_heads=4, num_kv_heads=2, head_dim=16)
    full = random_weights(cfg, torch.device("cpu"), torch.float32, 5)
    shard = random_shard_weights(cfg, shard_shapes(cfg, 1), torch.device("cpu"), torch.float32, 5)
    for a, b in zip(full._tensors(), shard._tensors(), strict=True):
        assert torch.equal(a, b)



def test_a_failed_build_leaves_no_process_behind():
    import multiprocessing

    with pytest.raises(EngineConfigError, match="no memory left for the KV cache"):
        LLMEngine(_cfg("tiny-llama-micro", tp=2, num_kv_blocks=0))
    assert not multiprocessing.active_children()
    import os

    assert "RANK" not in os.environ  # a later engine in this process starts afresh
