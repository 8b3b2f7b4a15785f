"""Tiny Hugging Face checkpoints (random weights, saved with save_pretrained) and HF greedy references."""

from __future__ import annotations

import math

import torch

TINY = dict(
    vocab_size=384,
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=1024,
)

VARIANTS = {
    # Llama-2 shape: no GQA, default rope
    "llama2": ("LlamaConfig", "LlamaForCausalLM", dict(num_key_value_heads=4, rope_theta=10000.0)),
    # Llama-3.1: GQA and llama3 rope scaling (small original length so the scaled band is exercised)
    "llama3": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(
            num_key_value_heads=2,
            rope_theta=500000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        ),
    ),
    "mistral": (
        "MistralConfig",
        "MistralForCausalLM",
        dict(num_key_value_heads=2, rope_theta=1e6, sliding_window=None),
    ),
    # Qwen2: qkv bias, tied embeddings
    "qwen2": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        dict(num_key_value_heads=2, rope_theta=1e6, tie_word_embeddings=True),
    ),
}


def save_tiny_checkpoint(variant: str, path, seed: int = 0):
    """Build a tiny model of `variant` with well-spread random weights; save it; return the HF model."""
    import transformers

    cfg_cls, model_cls, extra = VARIANTS[variant]
    cfg = getattr(transformers, cfg_cls)(**TINY, **extra)
    return save_tiny_model(getattr(transformers, model_cls), cfg, path, seed)


def save_tiny_model(make_model, cfg, path, seed: int = 0):
    """make_model(cfg) -> an HF model (a model class); its weights are redrawn well spread and saved to path."""
    torch.manual_seed(seed)
    model = make_model(cfg).float().eval()
    with torch.no_grad():  # HF's 0.02-std init makes near-uniform logits (argmax ties); spread them
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.2)
            elif "embed" in name:
                p.normal_(0.0, 1.0)
            else:
                p.normal_(0.0, 1.5 / math.sqrt(p.shape[-1]))
    model.save_pretrained(path)
    return model


def generate_with_logits(eng, prompts: list[list[int]], steps: int):
    """Run prompts on an engine built with keep_logits=True, `steps` tokens each (EOS ignored).
    -> (request ids, tokens per prompt, each sampled step's logits per prompt)."""
    from engine import SamplingParams

    ids = [eng.add_request(p, SamplingParams(max_tokens=steps, ignore_eos=True)) for p in prompts]
    tokens = {i: [] for i in ids}
    logits = {i: [] for i in ids}
    while eng.has_unfinished():
        for o in eng.step():
            tokens[o.request_id] += o.new_token_ids
            logits[o.request_id].append(eng.last_logits[o.request_id].clone())
    return ids, [tokens[i] for i in ids], [logits[i] for i in ids]


@torch.no_grad()
def hf_greedy(model, prompt: list[int], steps: int) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy decoding with a full forward per step (no KV cache): the plainest possible reference."""
    ids = list(prompt)
    tokens, logits = [], []
    for _ in range(steps):
        out = model(torch.tensor([ids], device=model.device)).logits[0, -1].float()
        tok = int(out.argmax())
        tokens.append(tok)
        logits.append(out)
        ids.append(tok)
    return tokens, logits


@torch.no_grad()
def hf_teacher_forced(model, prompt: list[int], tokens: list[int]) -> torch.Tensor:
    """Logits [len(tokens), V] (fp32) for each next token after prompt + tokens[:i], one forward."""
    ids = torch.tensor([list(prompt) + list(tokens)], device=model.device)
    return model(ids).logits[0, len(prompt) - 1 : len(prompt) - 1 + len(tokens)].float()
