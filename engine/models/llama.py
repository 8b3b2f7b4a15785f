"""One Llama-family decoder (Llama-2/3/3.1, Mistral, Qwen2), written as the ops a PipelinePlan schedules.

Each op works on a row range [a, b) of the dense batch and reads/writes shared workspace buffers, so a
plan can run any op on any slice, on any stream, and the model never changes when the plan does.
"""

from __future__ import annotations

import torch

from engine.config import ModelConfig
from engine.kernels import KernelOps
from engine.models.forward import ForwardBatch
from engine.models.weights import ModelWeights


def _linear(x, weight, bias, out):
    """out = x @ weight^T (+ bias): x [T, in], weight [out, in], bias [out] or None, like nn.Linear."""
    if bias is None:
        torch.mm(x, weight.t(), out=out)
    else:
        torch.addmm(bias, x, weight.t(), out=out)


class Workspace:
    """Activation buffers for up to max_tokens rows, reused by every layer.

    Reuse across layers is safe under any valid plan: an op of layer l+1 on rows R runs only after
    every op of layer l that touched rows R (the plan's row-overlap dependencies are transitive).
    """

    def __init__(self, cfg: ModelConfig, max_tokens: int, device, dtype):
        e = lambda n: torch.empty(max_tokens, n, device=device, dtype=dtype)
        self.max_tokens = max_tokens
        self.residual = e(cfg.hidden_size)  # [T, h] the residual stream
        self.normed = e(cfg.hidden_size)  # [T, h] norm output, GEMM input
        self.qkv = e(cfg.qkv_size)  # [T, (H + 2 Hkv) D]
        self.attn = e(cfg.q_size)  # [T, H D] attention output
        self.delta = e(cfg.hidden_size)  # [T, h] o_proj / down output, added to the residual next
        self.gate_up = e(2 * cfg.intermediate_size)  # [T, 2 I]
        self.act = e(cfg.intermediate_size)  # [T, I]

    @property
    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in vars(self).values() if isinstance(t, torch.Tensor))


class LlamaModel:
    def __init__(self, cfg: ModelConfig, weights: ModelWeights, kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
                 kernels: KernelOps, cos_sin: torch.Tensor):
        self.cfg = cfg
        self.w = weights
        self.kv = kv_caches  # per layer (k_cache, v_cache), each [num_blocks, Hkv, block_size, D]
        self.kv_scales = None  # fp8 cache: per layer {"k_scale", "v_scale"} fp32 [Hkv] (set by the runner)
        self.k = kernels
        self.cos_sin = cos_sin  # [max_position, D] fp32: cos | sin
        self.scale = cfg.head_dim ** -0.5
        self.ws: Workspace | None = None
        self.ops = {
            "attn_norm": self.attn_norm, "qkv": self.qkv, "rope_kv": self.rope_kv,
            "decode_attn": self.decode_attn, "prefill_attn": self.prefill_attn, "o_proj": self.o_proj,
            "mlp_norm": self.mlp_norm, "gate_up": self.gate_up, "silu_mul": self.silu_mul, "down": self.down,
        }

    def ensure_workspace(self, max_tokens: int) -> Workspace:
        if self.ws is None or self.ws.max_tokens < max_tokens:
            self.ws = Workspace(self.cfg, max_tokens, self.w.embed.device, self.w.embed.dtype)
        return self.ws

    # ---- ops: (layer, rows a:b, batch, sm_budget) ------------------------------------------------------
    def attn_norm(self, layer, a, b, fb: ForwardBatch, budget=None):
        ws, w = self.ws, self.w.layers[layer]
        if layer == 0:  # the residual stream starts as the embeddings
            torch.index_select(self.w.embed, 0, fb.input_ids[a:b], out=ws.residual[a:b])
            self.k.rms_norm(ws.residual[a:b], w.attn_norm, self.cfg.rms_norm_eps, out=ws.normed[a:b])
        else:
            self.k.add_rms_norm(ws.delta[a:b], ws.residual[a:b], w.attn_norm, self.cfg.rms_norm_eps,
                                out=ws.normed[a:b], residual_out=ws.residual[a:b])

    def qkv(self, layer, a, b, fb, budget=None):
        w = self.w.layers[layer]
        if w.qkv_bias is not None:
            torch.addmm(w.qkv_bias, self.ws.normed[a:b], w.qkv.t(), out=self.ws.qkv[a:b])
        else:
            torch.mm(self.ws.normed[a:b], w.qkv.t(), out=self.ws.qkv[a:b])

    def _split_qkv(self, a, b):
        c, qkv = self.cfg, self.ws.qkv[a:b]
        q = qkv[:, : c.q_size].view(b - a, c.num_heads, c.head_dim)
        k = qkv[:, c.q_size : c.q_size + c.kv_size].view(b - a, c.num_kv_heads, c.head_dim)
        v = qkv[:, c.q_size + c.kv_size :].view(b - a, c.num_kv_heads, c.head_dim)
        return q, k, v

    def _scales(self, layer) -> dict:
        return self.kv_scales[layer] if self.kv_scales is not None else {}

    def rope_kv(self, layer, a, b, fb, budget=None):
        q, k, v = self._split_qkv(a, b)
        self.k.apply_rope(q, k, fb.positions[a:b], self.cos_sin)
        k_cache, v_cache = self.kv[layer]
        self.k.store_kv(k, v, k_cache, v_cache, fb.slot_mapping[a:b], **self._scales(layer))

    def decode_attn(self, layer, a, b, fb, budget=None):
        a, b = a, min(b, fb.num_decode)
        if a >= b:
            return
        q, _, _ = self._split_qkv(a, b)
        c = self.cfg
        out = self.ws.attn[a:b].view(b - a, c.num_heads, c.head_dim)
        k_cache, v_cache = self.kv[layer]
        self.k.decode_attention(q, k_cache, v_cache, fb.decode_block_tables[a:b], fb.decode_context_lens[a:b],
                                self.scale, out=out, max_programs=budget, num_splits=fb.decode_num_splits,
                                window=c.layer_window(layer), **self._scales(layer))

    def prefill_attn(self, layer, a, b, fb, budget=None):
        meta = fb.prefill.get((a, b))
        if meta is None or meta.row_lo >= meta.row_hi:
            return
        lo, hi, c = meta.row_lo, meta.row_hi, self.cfg
        q, _, _ = self._split_qkv(lo, hi)
        out = self.ws.attn[lo:hi].view(hi - lo, c.num_heads, c.head_dim)
        k_cache, v_cache = self.kv[layer]
        self.k.prefill_attention(q, k_cache, v_cache, meta.block_tables, meta.seq_lens, meta.cu_seqlens_q,
                                 self.scale, max_seqlen_q=meta.max_seqlen_q, out=out, window=c.layer_window(layer),
                                 **self._scales(layer))

    def o_proj(self, layer, a, b, fb, budget=None):
        w = self.w.layers[layer]
        _linear(self.ws.attn[a:b], w.o, w.o_bias, self.ws.delta[a:b])

    def mlp_norm(self, layer, a, b, fb, budget=None):
        ws = self.ws
        self.k.add_rms_norm(ws.delta[a:b], ws.residual[a:b], self.w.layers[layer].mlp_norm,
                            self.cfg.rms_norm_eps, out=ws.normed[a:b], residual_out=ws.residual[a:b])

    def gate_up(self, layer, a, b, fb, budget=None):
        w = self.w.layers[layer]
        _linear(self.ws.normed[a:b], w.gate_up, w.gate_up_bias, self.ws.gate_up[a:b])

    def silu_mul(self, layer, a, b, fb, budget=None):  # the op keeps its name; cfg.hidden_act picks the function
        self.k.silu_and_mul(self.ws.gate_up[a:b], out=self.ws.act[a:b], activation=self.cfg.hidden_act)

    def down(self, layer, a, b, fb, budget=None):
        w = self.w.layers[layer]
        _linear(self.ws.act[a:b], w.down, w.down_bias, self.ws.delta[a:b])

    # ---- after the last layer -----------------------------------------------------------------------
    def logits(self, fb: ForwardBatch) -> torch.Tensor:
        """Final residual add + norm + lm_head on the sampled rows only. -> fp32 [num_sampled, V]."""
        rows = fb.logits_rows
        x = self.ws.delta.index_select(0, rows)
        r = self.ws.residual.index_select(0, rows)
        normed, _ = self.k.add_rms_norm(x, r, self.w.final_norm, self.cfg.rms_norm_eps)
        return self.lm_head(normed)

    def lm_head(self, normed: torch.Tensor) -> torch.Tensor:
        """normed [S, h] final-normed rows -> fp32 logits [S, V] (a rank's [S, V_r] under tensor parallelism)."""
        return torch.mm(normed, self.w.lm_head.t()).float()
