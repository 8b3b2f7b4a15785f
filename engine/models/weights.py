"""Model weights: created at random on the target device (seeded), or loaded from a Hugging Face checkpoint.

Layout (nn.Linear convention, out x in), merged the way the engine's GEMMs run:
  embed [V, h]; per layer: qkv [q + 2 kv, h] (+ qkv_bias [q + 2 kv]), o [h, q], gate_up [2 I, h] (gate
  rows first), down [h, I], attn_norm [h], mlp_norm [h]; final_norm [h]; lm_head [V, h] (the embedding
  itself when tied). Optional biases (Llama attention_bias / mlp_bias): o_bias [h], gate_up_bias [2 I],
  down_bias [h].
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.config import ModelConfig
from engine.errors import EngineConfigError


@dataclass
class LayerWeights:
    qkv: torch.Tensor
    o: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor
    attn_norm: torch.Tensor
    mlp_norm: torch.Tensor
    qkv_bias: torch.Tensor | None = None
    o_bias: torch.Tensor | None = None
    gate_up_bias: torch.Tensor | None = None
    down_bias: torch.Tensor | None = None


@dataclass
class ModelWeights:
    embed: torch.Tensor
    layers: list[LayerWeights] = field(default_factory=list)
    final_norm: torch.Tensor | None = None
    lm_head: torch.Tensor | None = None

    @property
    def num_bytes(self) -> int:
        seen, total = set(), 0
        for t in self._tensors():
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
        return total

    def _tensors(self):
        yield self.embed
        yield self.final_norm
        yield self.lm_head
        for lw in self.layers:
            yield from (t for t in vars(lw).values() if t is not None)


def random_weights(cfg: ModelConfig, device: torch.device, dtype: torch.dtype, seed: int) -> ModelWeights:
    """Seeded random weights made directly on `device` (an 8B model in seconds, no host copy).

    Linear weights ~ N(0, 1/fan_in) keep activations O(1) through the layers, so timings run on
    realistic, non-degenerate values; norms are 1 like a fresh model.
    """
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)

    def normal(*shape, fan_in):
        return torch.empty(shape, device=device, dtype=dtype).normal_(0.0, 1.0 / math.sqrt(fan_in),
                                                                      generator=gen)

    h, i = cfg.hidden_size, cfg.intermediate_size
    ones = lambda: torch.ones(h, device=device, dtype=dtype)
    layers = [
        LayerWeights(
            qkv=normal(cfg.qkv_size, h, fan_in=h), o=normal(h, cfg.q_size, fan_in=cfg.q_size),
            gate_up=normal(2 * i, h, fan_in=h), down=normal(h, i, fan_in=i),
            attn_norm=ones(), mlp_norm=ones(),
            qkv_bias=normal(cfg.qkv_size, fan_in=h) if cfg.qkv_bias else None,
            o_bias=normal(h, fan_in=cfg.q_size) if cfg.o_bias else None,
            gate_up_bias=normal(2 * i, fan_in=h) if cfg.mlp_bias else None,
            down_bias=normal(h, fan_in=i) if cfg.mlp_bias else None,
        )
        for _ in range(cfg.num_layers)
    ]
    embed = normal(cfg.vocab_size, h, fan_in=1)
    lm_head = embed if cfg.tie_word_embeddings else normal(cfg.vocab_size, h, fan_in=h)
    return ModelWeights(embed=embed, layers=layers, final_norm=ones(), lm_head=lm_head)


def _checkpoint_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError) as e:
            raise EngineConfigError(f"{index}: malformed safetensors index ({e})") from None
        return [path / n for n in names]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise EngineConfigError(f"{path}: no *.safetensors files (only safetensors checkpoints are supported)")
    return files


def load_hf_weights(path: str | Path, cfg: ModelConfig, device: torch.device,
                    dtype: torch.dtype) -> ModelWeights:
    """Load a local Hugging Face Llama/Mistral/Qwen2 checkpoint (one or many safetensors files)."""
    from safetensors import safe_open

    from engine.checkpoint import check_tensors

    path = Path(path)
    raw: dict[str, torch.Tensor] = {}
    file_names: dict[str, str] = {}  # loader name -> the name in the checkpoint (with its "model." prefix)
    for f in _checkpoint_files(path):
        if not f.exists():
            raise EngineConfigError(f"{f}: listed in the index but missing")
        with safe_open(str(f), framework="pt", device="cpu") as sf:
            for name in sf.keys():
                raw[name.removeprefix("model.")] = sf.get_tensor(name)
                file_names[name.removeprefix("model.")] = name
    used: set[str] = set()  # every tensor must be taken (check_tensors below)

    def take(name: str) -> torch.Tensor:
        if name not in raw:
            raise EngineConfigError(f"{path}: checkpoint has no tensor '{name}'")
        used.add(name)
        return raw[name].to(device=device, dtype=dtype)

    def take_cat(names: list[str], on: bool) -> torch.Tensor | None:
        return torch.cat([take(n) for n in names]) if on else None

    layers = []
    for n in range(cfg.num_layers):
        p = f"layers.{n}."
        qkv = torch.cat([take(p + f"self_attn.{x}_proj.weight") for x in "qkv"])
        bias = take_cat([p + f"self_attn.{x}_proj.bias" for x in "qkv"], cfg.qkv_bias)
        gate_up = torch.cat([take(p + "mlp.gate_proj.weight"), take(p + "mlp.up_proj.weight")])
        layers.append(LayerWeights(
            qkv=qkv, o=take(p + "self_attn.o_proj.weight"), gate_up=gate_up,
            down=take(p + "mlp.down_proj.weight"), attn_norm=take(p + "input_layernorm.weight"),
            mlp_norm=take(p + "post_attention_layernorm.weight"), qkv_bias=bias,
            o_bias=take_cat([p + "self_attn.o_proj.bias"], cfg.o_bias),
            gate_up_bias=take_cat([p + "mlp.gate_proj.bias", p + "mlp.up_proj.bias"], cfg.mlp_bias),
            down_bias=take_cat([p + "mlp.down_proj.bias"], cfg.mlp_bias)))
    embed = take("embed_tokens.weight")
    if not cfg.tie_word_embeddings:
        lm_head = take("lm_head.weight")  # an untied model without one is refused, never silently tied
    else:
        lm_head = embed
        # transformers ties lm_head to the embedding and ignores a saved copy: accept one only if it is that
        if "lm_head.weight" in raw and torch.equal(raw["lm_head.weight"], raw["embed_tokens.weight"]):
            used.add("lm_head.weight")
    final_norm = take("norm.weight")
    check_tensors(path, file_names, used)
    want = (cfg.vocab_size, cfg.hidden_size)
    if tuple(embed.shape) != want:
        raise EngineConfigError(f"{path}: embed_tokens.weight has shape {tuple(embed.shape)}, config says {want}")
    return ModelWeights(embed=embed, layers=layers, final_norm=final_norm, lm_head=lm_head)
