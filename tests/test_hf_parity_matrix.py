"""Parity matrix: tiny Hugging Face checkpoints made by varying one config field (or one feature's fields) at
a time around each supported architecture, each either computed exactly like transformers or refused.

Match: the engine's logits are within 1e-4 relative error of transformers' (fp32, CPU) at every one of 32
greedy steps and the tokens are identical; prompts and outputs run past every sliding window (windows are
a few tokens here), through chunked prefill and paged blocks smaller than the window.
Refusal: loading fails with one EngineConfigError line that names the field (or tensor).
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from hf_reference import TINY, generate_with_logits, hf_greedy, save_tiny_model

from engine import EngineConfig, LLMEngine, SamplingParams
from engine.errors import EngineConfigError

transformers = pytest.importorskip("transformers")

STEPS = 32
PROMPT_LENS = (5, 21)  # with the 32 outputs: contexts of 37 and 53 tokens, past every window below
BASES = {  # architecture -> (config class, model class, fields of the base point)
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(num_key_value_heads=2)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(num_key_value_heads=2, sliding_window=None)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(num_key_value_heads=2)),
}
ALL = tuple(BASES)
MATCH = None
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}

# (name, fields changed from the base, architectures it applies to, MATCH or a regex of the refusal)
VARIATIONS = [
    ("base", {}, ALL, MATCH),
    # activations (transformers' ACT2FN names): the implemented ones match, the rest are refused
    ("gelu", {"hidden_act": "gelu"}, ALL, MATCH),
    ("gelu_tanh", {"hidden_act": "gelu_pytorch_tanh"}, ALL, MATCH),
    ("swish", {"hidden_act": "swish"}, ("llama",), MATCH),
    ("relu2", {"hidden_act": "relu2"}, ALL, r"field 'hidden_act' = \"relu2\""),
    ("gelu_new", {"hidden_act": "gelu_new"}, ("llama",), r"field 'hidden_act' = \"gelu_new\""),
    # shapes
    ("mqa", {"num_key_value_heads": 1}, ALL, MATCH),
    ("mha", {"num_key_value_heads": 4}, ("mistral",), MATCH),
    ("head_dim_32", {"head_dim": 32}, ("llama", "mistral"), MATCH),  # head_dim != hidden / heads
    ("head_dim_24", {"head_dim": 24}, ("llama",), r"field 'head_dim' = 24"),
    ("tied", {"tie_word_embeddings": True}, ("llama", "mistral"), MATCH),
    ("untied", {"tie_word_embeddings": False}, ("qwen2",), MATCH),
    ("eps", {"rms_norm_eps": 1e-3}, ("llama",), MATCH),
    # rotary embedding
    ("rope_llama3", {"rope_parameters": LLAMA3_ROPE}, ALL, MATCH),
    ("rope_linear", {"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}},
     ALL, MATCH),
    ("rope_yarn", {"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                       "original_max_position_embeddings": 64}}, ("llama",),
     r"field 'rope_parameters' = .*rope_type 'yarn'"),
    ("partial_rotary", {"partial_rotary_factor": 0.5}, ("llama",), r"partial_rotary_factor"),
    # biases (Llama's attention_bias: q, k, v and o; mlp_bias: gate, up, down)
    ("attention_bias", {"attention_bias": True}, ("llama",), MATCH),
    ("mlp_bias", {"mlp_bias": True}, ("llama",), MATCH),
    # sliding windows, smaller than the contexts and than a KV block pair
    ("window_8", {"sliding_window": 8}, ("mistral",), MATCH),
    ("window_1", {"sliding_window": 1}, ("mistral",), MATCH),
    ("window_19", {"sliding_window": 19}, ("mistral",), MATCH),
    ("sliding_upper", {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1}, ("qwen2",),
     MATCH),
    ("sliding_all", {"use_sliding_window": True, "sliding_window": 6, "max_window_layers": 0}, ("qwen2",),
     MATCH),
    ("sliding_off", {"use_sliding_window": False, "sliding_window": 4}, ("qwen2",), MATCH),
    # fields the engine does not know: refused by name, never assumed harmless
    ("moe", {"num_local_experts": 4, "num_experts_per_tok": 2}, ALL, r"field 'num_(local_experts|experts_per_tok)'"),
    ("norm_type", {"norm_type": "layernorm"}, ("llama",), r"field 'norm_type' = \"layernorm\""),
    ("arch", {"architectures": ["GemmaForCausalLM"]}, ALL, r"field 'architectures' = \[\"GemmaForCausalLM\"\]"),
    ("mistral_bias", {"attention_bias": True}, ("mistral",), r"field 'attention_bias'"),
]
CASES = [(arch, name) for name, _, archs, _ in VARIATIONS for arch in archs]
BY_NAME = {v[0]: v for v in VARIATIONS}


WRITTEN_BY_SAVE = ("architectures",)  # save_pretrained overwrites these: set them in config.json afterwards


def make_checkpoint(arch: str, fields: dict, path, seed: int = 0):
    cfg_cls, model_cls, base = BASES[arch]
    later = {k: v for k, v in fields.items() if k in WRITTEN_BY_SAVE}
    cfg = getattr(transformers, cfg_cls)(**{**TINY, **base, **{k: v for k, v in fields.items() if k not in later}})
    model = save_tiny_model(getattr(transformers, model_cls), cfg, path, seed)
    if later:
        _rewrite_config(path, **later)
    return model


def run_engine(path, prompts):
    # blocks of 8 and 16-token chunks: windows straddle pages, prefill chunks cross window edges; a small
    # cache (512 tokens) keeps each case's engine start (and NaN poisoning of the cache) quick
    eng = LLMEngine(EngineConfig(model=str(path), device="cpu", dtype="float32", keep_logits=True,
                                 poison_kv_cache=True, max_model_len=128, block_size=8,
                                 enable_chunked_prefill=True, max_num_batched_tokens=16, num_kv_blocks=64))
    _, tokens, logits = generate_with_logits(eng, prompts, STEPS)
    return eng, tokens, logits


def one_line_refusal(path) -> str:
    with pytest.raises(EngineConfigError) as err:
        LLMEngine(EngineConfig(model=str(path), device="cpu", dtype="float32"))
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    return msg


@pytest.mark.parametrize("arch,name", CASES, ids=[f"{a}-{n}" for a, n in CASES])
def test_matrix(arch, name, tmp_path):
    _, fields, _, refusal = BY_NAME[name]
    model = make_checkpoint(arch, fields, tmp_path)
    if refusal is not None:
        assert re.search(refusal, one_line_refusal(tmp_path)), one_line_refusal(tmp_path)
        return
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, TINY["vocab_size"], (n,), generator=g).tolist() for n in PROMPT_LENS]
    eng, tokens, logits = run_engine(tmp_path, prompts)
    for prompt, toks, lgs in zip(prompts, tokens, logits, strict=True):
        ref_tokens, ref_logits = hf_greedy(model, prompt, STEPS)
        assert toks == ref_tokens
        assert len(lgs) == STEPS
        for step, (ours, theirs) in enumerate(zip(lgs, ref_logits, strict=True)):
            rel = float((ours - theirs).norm() / theirs.norm())
            assert rel <= 1e-4, f"step {step}: relative logits error {rel:.2e}"


def test_windows_and_biases_reach_the_model_config(tmp_path):
    """The matrix's window and bias cases are not vacuous: the engine's config carries what HF applies."""
    from engine.config import model_config_from_hf

    cases = {
        ("mistral", "window_8"): lambda c: c.sliding_window == 8 and c.window_layers is None,
        ("qwen2", "sliding_upper"): lambda c: c.sliding_window == 8 and c.window_layers == (1,),
        ("qwen2", "sliding_all"): lambda c: c.layer_window(0) == c.layer_window(1) == 6,
        ("qwen2", "sliding_off"): lambda c: c.sliding_window is None and c.layer_window(1) == 0,
        ("llama", "attention_bias"): lambda c: c.qkv_bias and c.o_bias and not c.mlp_bias,
        ("llama", "mlp_bias"): lambda c: c.mlp_bias and not c.o_bias,
        ("llama", "gelu_tanh"): lambda c: c.hidden_act == "gelu_pytorch_tanh",
    }
    for (arch, name), ok in cases.items():
        path = tmp_path / f"{arch}-{name}"
        make_checkpoint(arch, BY_NAME[name][1], path)
        assert ok(model_config_from_hf(path)), (arch, name)


def test_num_params_counts_biases(tmp_path):
    from engine.config import model_config_from_hf

    for name in ("base", "attention_bias", "mlp_bias"):
        model = make_checkpoint("llama", BY_NAME[name][1], tmp_path / name)
        assert model_config_from_hf(tmp_path / name).num_params == sum(p.numel() for p in model.parameters())


# ---- tensors: every one in the checkpoint is used, or the load is refused naming it ----


def _rewrite_config(path, **fields):
    cfg_file = path / "config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), **fields}))


def _add_tensors(path, **tensors):
    from safetensors.torch import load_file, save_file

    f = path / "model.safetensors"
    save_file({**load_file(f), **tensors}, f, metadata={"format": "pt"})


def test_unused_tensor_is_refused_by_name(tmp_path):
    # biases in the checkpoint that config.json says are absent: the model would silently drop them
    make_checkpoint("llama", {"mlp_bias": True}, tmp_path)
    _rewrite_config(tmp_path, mlp_bias=False)
    assert re.search(r"tensor 'model\.layers\.0\.mlp\.down_proj\.bias' is not used", one_line_refusal(tmp_path))


def test_extra_unknown_tensor_is_refused_by_name(tmp_path):
    make_checkpoint("qwen2", {}, tmp_path)
    _add_tensors(tmp_path, **{"model.layers.1.self_attn.q_norm.weight": torch.ones(16)})
    assert "tensor 'model.layers.1.self_attn.q_norm.weight'" in one_line_refusal(tmp_path)


def test_missing_lm_head_of_untied_model_is_refused(tmp_path):
    make_checkpoint("llama", {"tie_word_embeddings": True}, tmp_path)
    _rewrite_config(tmp_path, tie_word_embeddings=False)
    assert "no tensor 'lm_head.weight'" in one_line_refusal(tmp_path)


def test_rotary_inv_freq_buffers_are_ignored_on_purpose(tmp_path):
    """transformers 4.x saved rotary inv_freq buffers; the engine recomputes them, so they load silently."""
    make_checkpoint("llama", {}, tmp_path)
    _add_tensors(tmp_path, **{"model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(8)})
    eng = LLMEngine(EngineConfig(model=str(tmp_path), device="cpu", dtype="float32"))
    assert eng.generate([[1, 2, 3]], SamplingParams(max_tokens=2, ignore_eos=True))


def test_cli_refusal_is_one_line_exit_2(tmp_path):
    from click.testing import CliRunner

    from nanotune.cli import main

    make_checkpoint("llama", {"hidden_act": "relu2"}, tmp_path / "ckpt")
    res = CliRunner().invoke(main, ["bench", "--model", str(tmp_path / "ckpt"), "--device", "cpu", "-n", "2",
                                    "--results-dir", str(tmp_path / "out"), "--no-progress"])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "hidden_act" in lines[0], res.output
