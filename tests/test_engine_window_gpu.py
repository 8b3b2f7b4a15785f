"""The parity matrix's windowed, biased and gelu checkpoints on a CUDA GPU (pytest -m gpu; excluded in CI):
Triton kernels, CUDA graphs (decode and mixed), fp32 against transformers in fp32 on the same GPU.

Prompts up to 130 tokens and 32 outputs run far past the 8- and 19-token windows, through chunked prefill.
"""

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

STEPS = 32
CASES = [("mistral", "window_8"), ("mistral", "window_19"), ("qwen2", "sliding_upper"), ("qwen2", "sliding_all"),
         ("llama", "attention_bias"), ("llama", "mlp_bias"), ("llama", "gelu_tanh"), ("qwen2", "gelu")]


def _run(path, prompts, **cfg):
    from hf_reference import generate_with_logits

    from engine import EngineConfig, LLMEngine

    eng = LLMEngine(EngineConfig(model=str(path), device="cuda", dtype="float32", keep_logits=True,
                                 poison_kv_cache=True, max_model_len=512, max_num_seqs=16, num_kv_blocks=256,
                                 max_num_batched_tokens=64, **cfg))
    _, toks, logits = generate_with_logits(eng, prompts, STEPS)
    return toks, [[x.float().cpu() for x in steps] for steps in logits]


@pytest.mark.parametrize("arch,name", CASES, ids=[f"{a}-{n}" for a, n in CASES])
def test_fp32_matches_hf_on_gpu_with_graphs(tmp_path, arch, name):
    pytest.importorskip("transformers")
    from hf_reference import hf_greedy
    from test_hf_parity_matrix import BY_NAME, make_checkpoint

    model = make_checkpoint(arch, BY_NAME[name][1], tmp_path).to("cuda", torch.float32)
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, model.config.vocab_size, (n,), generator=g).tolist() for n in (3, 17, 40, 130)]
    refs = [hf_greedy(model, p, STEPS) for p in prompts]
    for graphs in (True, False):
        toks, logits = _run(tmp_path, prompts, use_cuda_graphs=graphs, mixed_cuda_graphs=graphs)
        for (ref_t, ref_l), t, lg in zip(refs, toks, logits, strict=True):
            assert t == ref_t, f"graphs={graphs}"
            for ours, theirs in zip(lg, ref_l, strict=True):
                rel = ((ours - theirs.cpu()).norm() / theirs.norm()).item()
                assert rel <= 1e-4, f"graphs={graphs}: relative logits error {rel:.2e}"
