"""One tensor-parallel rank's weights: sliced from full tensors (random weights) or read as slices from a
Hugging Face checkpoint (safetensors `get_slice`: no rank reads the whole model).

Layout per rank (engine/sizing.py ShardShapes s; nn.Linear out x in, as engine/models/weights.py):
  qkv [Hq_r D + 2 Hkv_r D, h] (column-parallel: this rank's query heads, then its K heads, then its V heads),
  o [h, Hq_r D] and down [h, I_r] (row-parallel: input columns), gate_up [2 I_r, h] (this rank's gate rows,
  then its up rows), embed and lm_head [V_r, h] (vocabulary rows [vocab_lo, vocab_lo + V_r), zero rows past
  the vocabulary), norms whole.

Random weights: every full tensor is drawn in engine.models.weights.random_weights's order from the same
seeded generator and then sliced, so TP1 and TPN hold slices of one and the same model; one full tensor
exists at a time (a 70B layer is about 2 GiB in bf16).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from engine.config import ModelConfig
from engine.errors import EngineConfigError
from engine.models.weights import LayerWeights, ModelWeights, _checkpoint_files
from engine.sizing import ShardShapes


def shard_model_config(cfg: ModelConfig, s: ShardShapes) -> ModelConfig:
    """The ModelConfig the rank's layers run with (its heads and intermediate size; vocab stays whole)."""
    import dataclasses

    return dataclasses.replace(cfg, num_heads=s.heads, num_kv_heads=s.kv_heads, intermediate_size=s.intermediate)


# ---- index ranges of a rank, in a full tensor's row (or column) space -------------------------------------
def qkv_ranges(cfg: ModelConfig, s: ShardShapes) -> list[tuple[int, int]]:
    """Rows of the full merged qkv [q + 2 kv, h] this rank holds: its q heads, K heads, V heads."""
    d, q, kv = cfg.head_dim, cfg.q_size, cfg.kv_size
    q0, k0 = s.rank * s.q_size, s.kv_head_lo * d
    return [(q0, q0 + s.q_size), (q + k0, q + k0 + s.kv_size), (q + kv + k0, q + kv + k0 + s.kv_size)]


def gate_up_ranges(cfg: ModelConfig, s: ShardShapes) -> list[tuple[int, int]]:
    i0, i = s.rank * s.intermediate, cfg.intermediate_size
    return [(i0, i0 + s.intermediate), (i + i0, i + i0 + s.intermediate)]


def _rows(t: torch.Tensor, ranges) -> torch.Tensor:
    return torch.cat([t[a:b] for a, b in ranges]).contiguous()


def _vocab_rows(t: torch.Tensor, cfg: ModelConfig, s: ShardShapes) -> torch.Tensor:
    lo = s.vocab_lo
    part = t[lo: min(lo + s.vocab_per_rank, cfg.vocab_size)]
    if part.shape[0] < s.vocab_per_rank:  # the last rank's padding rows: zero embeddings, zero logits (cut)
        pad = torch.zeros(s.vocab_per_rank - part.shape[0], *t.shape[1:], dtype=t.dtype, device=t.device)
        part = torch.cat([part, pad])
    return part.contiguous()


def shard_layer(cfg: ModelConfig, s: ShardShapes, full: LayerWeights) -> LayerWeights:
    qkv, gu = qkv_ranges(cfg, s), gate_up_ranges(cfg, s)
    q0, i0 = s.rank * s.q_size, s.rank * s.intermediate
    return LayerWeights(
        qkv=_rows(full.qkv, qkv), o=full.o[:, q0:q0 + s.q_size].contiguous(), gate_up=_rows(full.gate_up, gu),
        down=full.down[:, i0:i0 + s.intermediate].contiguous(), attn_norm=full.attn_norm,
        mlp_norm=full.mlp_norm, qkv_bias=None if full.qkv_bias is None else _rows(full.qkv_bias, qkv))


def random_shard_weights(cfg: ModelConfig, s: ShardShapes, device, dtype, seed: int) -> ModelWeights:
    """This rank's slices of random_weights(cfg, device, dtype, seed), drawing one full tensor at a time."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)

    def normal(*shape, fan_in):
        return torch.empty(shape, device=device, dtype=dtype).normal_(0.0, 1.0 / math.sqrt(fan_in), generator=gen)

    h, i = cfg.hidden_size, cfg.intermediate_size
    ones = lambda: torch.ones(h, device=device, dtype=dtype)
    layers = []
    for _ in range(cfg.num_layers):  # random_weights's draw order: qkv, o, gate_up, down, then qkv_bias
        qkv = normal(cfg.qkv_size, h, fan_in=h)
        o = normal(h, cfg.q_size, fan_in=cfg.q_size)
        gate_up = normal(2 * i, h, fan_in=h)
        down = normal(h, i, fan_in=i)
        bias = normal(cfg.qkv_size, fan_in=h) if cfg.qkv_bias else None
        layers.append(shard_layer(cfg, s, LayerWeights(qkv, o, gate_up, down, ones(), ones(), bias)))
        del qkv, o, gate_up, down, bias
    embed_full = normal(cfg.vocab_size, h, fan_in=1)
    embed = _vocab_rows(embed_full, cfg, s)
    del embed_full
    lm_head = embed if cfg.tie_word_embeddings else _vocab_rows(normal(cfg.vocab_size, h, fan_in=h), cfg, s)
    return ModelWeights(embed=embed, layers=layers, final_norm=ones(), lm_head=lm_head)


def load_hf_shard(path: str | Path, cfg: ModelConfig, s: ShardShapes, device, dtype) -> ModelWeights:
    """This rank's slices of a local Hugging Face checkpoint, read with safetensors get_slice."""
    from safetensors import safe_open

    path = Path(path)
    where: dict[str, tuple[Path, str]] = {}
    for f in _checkpoint_files(path):
        if not f.exists():
            raise EngineConfigError(f"{f}: listed in the index but missing")
        with safe_open(str(f), framework="pt", device="cpu") as sf:
            for name in sf.keys():
                where[name.removeprefix("model.")] = (f, name)
    handles: dict[Path, object] = {}
    used: set[str] = set()  # every tensor must be taken (check_tensors below), as load_hf_weights does at tp 1

    def sl(name: str):
        if name not in where:
            raise EngineConfigError(f"{path}: checkpoint has no tensor '{name}'")
        used.add(name)
        f, key = where[name]
        if f not in handles:
            handles[f] = safe_open(str(f), framework="pt", device="cpu")
        return handles[f].get_slice(key)

    def rows(name, a=None, b=None) -> torch.Tensor:
        x = sl(name)
        t = x[:] if a is None else x[a:b]
        return t.to(device=device, dtype=dtype)

    def cols(name, a, b) -> torch.Tensor:
        return sl(name)[:, a:b].to(device=device, dtype=dtype).contiguous()

    d = cfg.head_dim
    q0, k0, i0 = s.rank * s.q_size, s.kv_head_lo * d, s.rank * s.intermediate
    q_rows = {"q": (q0, q0 + s.q_size), "k": (k0, k0 + s.kv_size), "v": (k0, k0 + s.kv_size)}
    layers = []
    for n in range(cfg.num_layers):
        p = f"layers.{n}."
        qkv = torch.cat([rows(p + f"self_attn.{x}_proj.weight", *q_rows[x]) for x in "qkv"])
        bias = (torch.cat([rows(p + f"self_attn.{x}_proj.bias", *q_rows[x]) for x in "qkv"])
                if cfg.qkv_bias else None)
        gate_up = torch.cat([rows(p + "mlp.gate_proj.weight", i0, i0 + s.intermediate),
                             rows(p + "mlp.up_proj.weight", i0, i0 + s.intermediate)])
        layers.append(LayerWeights(
            qkv=qkv, o=cols(p + "self_attn.o_proj.weight", q0, q0 + s.q_size), gate_up=gate_up,
            down=cols(p + "mlp.down_proj.weight", i0, i0 + s.intermediate),
            attn_norm=rows(p + "input_layernorm.weight"), mlp_norm=rows(p + "post_attention_layernorm.weight"),
            qkv_bias=bias))
    shape = tuple(sl("embed_tokens.weight").get_shape())
    if shape != (cfg.vocab_size, cfg.hidden_size):
        raise EngineConfigError(f"{path}: embed_tokens.weight has shape {shape}, config says "
                                f"{(cfg.vocab_size, cfg.hidden_size)}")

    def vocab(name):
        hi = min(s.vocab_lo + s.vocab_per_rank, cfg.vocab_size)
        part = rows(name, s.vocab_lo, hi)
        if part.shape[0] < s.vocab_per_rank:
            pad = torch.zeros(s.vocab_per_rank - part.shape[0], cfg.hidden_size, dtype=dtype, device=device)
            part = torch.cat([part, pad])
        return part

    from engine.checkpoint import check_tensors

    embed = vocab("embed_tokens.weight")
    if cfg.tie_word_embeddings:
        lm_head = embed
        if "lm_head.weight" in where and not torch.equal(vocab("lm_head.weight"), embed):
            raise EngineConfigError(f"{path}: tie_word_embeddings is true but lm_head.weight differs from "
                                    "embed_tokens.weight")
    else:
        lm_head = vocab("lm_head.weight")  # an untied model without its lm_head is refused, never tied silently
    weights = ModelWeights(embed=embed, layers=layers, final_norm=rows("norm.weight"), lm_head=lm_head)
    check_tensors(path, {name: key for name, (_, key) in where.items()}, used)
    return weights
