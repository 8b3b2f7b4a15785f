"""The engine against Hugging Face transformers: logits and greedy tokens on tiny checkpoints (CPU, fp32).

Several prompts of different lengths run batched through our loader and engine, with chunked prefill on
and off and with preemption forced by a small cache; each step's logits must match HF's to 1e-4 relative
error and the 32 greedy tokens must be identical.
"""

import pytest
import torch
from hf_reference import VARIANTS, generate_with_logits, hf_greedy, save_tiny_checkpoint

from engine import EngineConfig, LLMEngine, SamplingParams

pytest.importorskip("transformers")

STEPS = 32
PROMPT_LENS = (3, 17, 40, 64)

MODES = {
    "chunked": dict(enable_chunked_prefill=True, max_num_batched_tokens=32),
    "whole_prefill": dict(enable_chunked_prefill=False, max_num_batched_tokens=256),
    # 14 blocks of 8 tokens cannot hold all four requests: over-committed admission forces recompute
    "preempt": dict(
        enable_chunked_prefill=True,
        max_num_batched_tokens=48,
        block_size=8,
        num_kv_blocks=14,
        kv_overcommit=4.0,
    ),
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def checkpoint(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    model = save_tiny_checkpoint(request.param, path)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, model.config.vocab_size, (n,), generator=g).tolist() for n in PROMPT_LENS]
    refs = [hf_greedy(model, p, STEPS) for p in prompts]
    return path, prompts, refs


def run_engine(path, prompts, **mode):
    eng = LLMEngine(
        EngineConfig(
            model=str(path), device="cpu", dtype="float32", keep_logits=True, poison_kv_cache=True,
            max_model_len=256, **mode
        )
    )
    _, tokens, logits = generate_with_logits(eng, prompts, STEPS)
    return eng, tokens, logits


@pytest.mark.parametrize("mode", sorted(MODES))
def test_logits_and_greedy_tokens_match_hf(checkpoint, mode):
    path, prompts, refs = checkpoint
    eng, tokens, logits = run_engine(path, prompts, **MODES[mode])
    if mode == "preempt":
        assert eng.stats()["num_preemptions"] > 0, "the small cache should have forced preemption"
    for (ref_tokens, ref_logits), toks, lgs in zip(refs, tokens, logits, strict=True):
        assert toks == ref_tokens
        # a preempted request keeps its tokens and recomputes their KV: no position is emitted twice
        assert len(lgs) == STEPS
        for ours, theirs in zip(lgs, ref_logits, strict=True):
            rel = (ours - theirs).norm() / theirs.norm()
            assert rel <= 1e-4, f"relative logits error {rel:.2e}"


def test_sharded_checkpoint_with_index_loads_the_same(tmp_path):
    """A checkpoint split over several safetensors files with an index loads to the same model."""
    one, many = tmp_path / "one", tmp_path / "many"
    model = save_tiny_checkpoint("qwen2", one)
    model.save_pretrained(many, max_shard_size="100KB")
    assert (many / "model.safetensors.index.json").exists() and len(list(many.glob("*.safetensors"))) > 1
    prompt = [[5, 7, 11, 13]]
    outs = [LLMEngine(EngineConfig(model=str(p), device="cpu", dtype="float32")).generate(
        prompt, SamplingParams(max_tokens=8, ignore_eos=True)) for p in (one, many)]
    assert outs[0] == outs[1]


def test_bad_checkpoint_directory_is_one_line_error(tmp_path):
    from engine.errors import EngineConfigError

    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(EngineConfigError, match="unsupported 'gpt2'"):
        LLMEngine(EngineConfig(model=str(tmp_path), device="cpu"))
