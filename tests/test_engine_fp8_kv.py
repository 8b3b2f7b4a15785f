"""FP8 KV cache end to end: the engine with an e4m3 cache against the same engine with a full-precision cache.

CPU: tiny Hugging Face checkpoints, fp32 model, fp8 KV against fp32 KV. GPU (marked): Llama-3-8B shapes with
random bf16 weights, fp8 KV against bf16 KV. Reported: the relative logit error of the first sampled token
(prefill; max |a - b| / max |b|), of every step while the greedy tokens still agree, and the share of the
greedy tokens that agree before the first divergence (once one differs, the contexts differ).
"""

import pytest
import torch
from hf_reference import VARIANTS, generate_with_logits, save_tiny_checkpoint

from engine import EngineConfig, LLMEngine
from engine.errors import EngineConfigError

pytest.importorskip("transformers")

STEPS = 24


def run(model, prompts, max_model_len=256, **kw):
    eng = LLMEngine(EngineConfig(model=model, keep_logits=True, max_model_len=max_model_len, **kw))
    _, tokens, logits = generate_with_logits(eng, prompts, STEPS)
    return eng, tokens, [[x.float().cpu() for x in steps] for steps in logits]


def compare(base, fp8) -> dict:
    """First-token and agreeing-steps logit error, greedy agreement (prefix before divergence / steps)."""
    (_, tok_a, log_a), (_, tok_b, log_b) = base, fp8
    first, during, agree = 0.0, 0.0, []
    for ta, tb, la, lb in zip(tok_a, tok_b, log_a, log_b, strict=True):
        rels = [float((b - a).abs().max() / a.abs().max()) for a, b in zip(la, lb, strict=True)]
        first = max(first, rels[0])
        n = next((i for i, (x, y) in enumerate(zip(ta, tb, strict=True)) if x != y), len(ta))
        during = max([during] + rels[:n + 1])
        agree.append(n / len(ta))
    return {"first_token_rel_err": first, "max_rel_err_while_agreeing": during, "greedy_agreement": min(agree),
            "mean_greedy_agreement": sum(agree) / len(agree)}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_fp8_kv_against_fp32_kv_tiny_checkpoints(variant, tmp_path):
    model = save_tiny_checkpoint(variant, tmp_path)
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, model.config.vocab_size, (n,), generator=g).tolist() for n in (5, 33, 70)]
    kw = dict(device="cpu", dtype="float32", poison_kv_cache=True, max_num_batched_tokens=48)
    base = run(str(tmp_path), prompts, **kw)
    fp8 = run(str(tmp_path), prompts, kv_cache_dtype="fp8", **kw)
    bf16 = run(str(tmp_path), prompts, kv_cache_dtype="bfloat16", **kw)  # the control: 8 mantissa bits, not 3
    assert fp8[0].runner.kv_cache.dtype == torch.float8_e4m3fn
    assert fp8[0].runner.cache_info.bytes_per_block * 4 == base[0].runner.cache_info.bytes_per_block  # fp32 -> 1 B
    m, control = compare(base, fp8), compare(base, bf16)
    print(variant, "fp8", m, "bf16", control)
    # measured on these checkpoints (seeded): first-token error 0.05-0.11 (bf16 KV: 0.004-0.006), mean greedy
    # agreement 0.36-0.69 (bf16: 1.0). These tiny random models amplify any KV rounding alike (e4m3's half
    # ulp is 2^5 x bf16's). A dropped or misplaced scale gives errors of order 1; a read of an unwritten
    # (NaN-poisoned) slot gives NaN.
    assert 0 < control["first_token_rel_err"] < 0.02 and control["mean_greedy_agreement"] >= 0.9
    assert 0 < m["first_token_rel_err"] < 0.2
    assert m["first_token_rel_err"] < 40 * control["first_token_rel_err"]
    assert m["max_rel_err_while_agreeing"] < 0.3
    assert m["mean_greedy_agreement"] >= 0.25


def test_kv_cache_dtype_rejects_unknown():
    with pytest.raises(EngineConfigError, match="kv_cache_dtype 'int4'"):
        LLMEngine(EngineConfig(model="tiny-llama", device="cpu", kv_cache_dtype="int4"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("decode_kernel", ["split", "tma"])
def test_fp8_kv_llama3_8b_shapes_gpu(decode_kernel):
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 128256, (n,), generator=g).tolist() for n in (17, 200, 1000, 2048)]
    # decode steps replay CUDA graphs (TMA descriptors captured too); mixed-step graphs off to keep it short
    kw = dict(device="cuda", num_kv_blocks=1024, max_num_seqs=8, decode_kernel=decode_kernel, max_model_len=4096,
              mixed_cuda_graphs=False)
    base = run("llama-3-8b", prompts, **kw)
    fp8 = run("llama-3-8b", prompts, kv_cache_dtype="fp8", **kw)
    m = compare(base, fp8)
    print("llama-3-8b", decode_kernel, m)
    assert 0 < m["first_token_rel_err"] < 0.1
    assert m["mean_greedy_agreement"] >= 0.25


def test_kv_cache_dtype_bytes_matches_the_runner():
    from engine.config import KV_CACHE_DTYPES, kv_cache_dtype_bytes
    from engine.runner import resolve_kv_cache_dtype

    for name in KV_CACHE_DTYPES:
        torch_dtype = resolve_kv_cache_dtype(name, torch.float32, torch.device("cpu"))
        assert kv_cache_dtype_bytes(name, 4) == torch_dtype.itemsize
    with pytest.raises(EngineConfigError, match="kv_cache_dtype 'int4'"):
        kv_cache_dtype_bytes("int4", 2)
