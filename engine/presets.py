"""Model presets by name, with the real shapes of the published checkpoints (from their config.json)."""

from __future__ import annotations

from engine.config import ModelConfig
from engine.errors import EngineConfigError

_LLAMA31_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def _m(name, v, h, i, layers, heads, kv, **kw) -> ModelConfig:
    return ModelConfig(name=name, vocab_size=v, hidden_size=h, intermediate_size=i, num_layers=layers,
                       num_heads=heads, num_kv_heads=kv, head_dim=kw.pop("head_dim", h // heads), **kw)


PRESETS: dict[str, ModelConfig] = {p.name: p for p in [
    _m("llama-2-7b", 32000, 4096, 11008, 32, 32, 32, max_position=4096, eos_token_ids=(2,)),
    _m("llama-2-13b", 32000, 5120, 13824, 40, 40, 40, max_position=4096, eos_token_ids=(2,)),
    _m("llama-2-70b", 32000, 8192, 28672, 80, 64, 8, max_position=4096, eos_token_ids=(2,)),
    _m("llama-3-8b", 128256, 4096, 14336, 32, 32, 8, rope_theta=500000.0, max_position=8192,
       eos_token_ids=(128001, 128009)),
    _m("llama-3-70b", 128256, 8192, 28672, 80, 64, 8, rope_theta=500000.0, max_position=8192,
       eos_token_ids=(128001, 128009)),
    _m("llama-3.1-8b", 128256, 4096, 14336, 32, 32, 8, rope_theta=500000.0, max_position=131072,
       rope_scaling=_LLAMA31_SCALING, eos_token_ids=(128001, 128008, 128009)),
    _m("llama-3.1-70b", 128256, 8192, 28672, 80, 64, 8, rope_theta=500000.0, max_position=131072,
       rope_scaling=_LLAMA31_SCALING, eos_token_ids=(128001, 128008, 128009)),
    _m("qwen2-7b", 152064, 3584, 18944, 28, 28, 4, rms_norm_eps=1e-6, rope_theta=1000000.0,
       max_position=32768, qkv_bias=True, eos_token_ids=(151643,), model_type="qwen2"),
    _m("qwen2-72b", 152064, 8192, 29568, 80, 64, 8, rms_norm_eps=1e-6, rope_theta=1000000.0,
       max_position=32768, qkv_bias=True, eos_token_ids=(151643,), model_type="qwen2"),
    # Mistral-7B v0.3 (v0.2+ have no sliding window).
    _m("mistral-7b", 32768, 4096, 14336, 32, 32, 8, rope_theta=1000000.0, max_position=32768,
       eos_token_ids=(2,), model_type="mistral"),
    # Mistral-7B v0.1: a 4096-token sliding window on every layer (attention kernels apply it).
    _m("mistral-7b-v0.1", 32000, 4096, 14336, 32, 32, 8, rope_theta=10000.0, max_position=32768,
       eos_token_ids=(2,), model_type="mistral", sliding_window=4096),
    # Tiny models for tests and for the CPU default run: real Llama-3 structure (GQA), small shapes.
    _m("tiny-llama", 2048, 256, 512, 4, 8, 4, head_dim=32, rope_theta=500000.0, max_position=4096,
       eos_token_ids=(1,)),
    _m("tiny-llama-micro", 512, 64, 128, 2, 4, 2, head_dim=16, max_position=1024, eos_token_ids=(1,)),
]}

# Short names people type; each resolves to one preset (the newest family of that size).
ALIASES = {
    "llama-7b": "llama-2-7b", "llama-13b": "llama-2-13b", "llama-8b": "llama-3-8b",
    "llama-70b": "llama-3-70b", "llama3-8b": "llama-3-8b", "llama3-70b": "llama-3-70b",
    "qwen-7b": "qwen2-7b", "qwen-72b": "qwen2-72b", "mistral": "mistral-7b", "tiny": "tiny-llama",
}


def resolve_name(name: str) -> str:
    key = name.lower()
    return ALIASES.get(key, key)


def get_preset(name: str) -> ModelConfig:
    key = resolve_name(name)
    if key not in PRESETS:
        raise EngineConfigError(f"unknown model '{name}' (presets: {', '.join(sorted(PRESETS))}; "
                                "or give a local Hugging Face checkpoint directory)")
    return PRESETS[key]
