"""The Llama decoder on one tensor-parallel rank: LlamaModel's ops on the rank's shard shapes, plus the
collectives. The plan's `o_allreduce` and `down_allreduce` ops sum the row-parallel partial outputs in the
`delta` workspace rows [a, b) over the ranks; the embedding is vocab-parallel (each rank looks up the ids in
its vocabulary slice, zero elsewhere, then the ranks sum); the lm_head gives each rank [S, V_r] logits that
are gathered to [S, V] on every rank, so every rank samples the same tokens.
"""

from __future__ import annotations

import torch

from engine.models.forward import ForwardBatch
from engine.models.llama import LlamaModel
from engine.parallel.comm import TPGroup
from engine.sizing import ShardShapes


class TPLlamaModel(LlamaModel):
    def __init__(self, cfg, weights, kv_caches, kernels, cos_sin, tp: TPGroup, shapes: ShardShapes,
                 vocab_size: int):
        super().__init__(cfg, weights, kv_caches, kernels, cos_sin)
        self.tp, self.shapes, self.vocab_size = tp, shapes, vocab_size
        self.ops["o_allreduce"] = self.all_reduce
        self.ops["down_allreduce"] = self.all_reduce
        if tp.fuses_norm:  # each all-reduce also does the residual add + RMSNorm that its next norm op would do
            self.ops["o_allreduce"] = self.o_allreduce_norm
            self.ops["down_allreduce"] = self.down_allreduce_norm

    def ensure_workspace(self, max_tokens: int):
        ws = super().ensure_workspace(max_tokens)
        # a symmetric-memory all-reduce sizes its buffer once, for delta's [max_tokens, h] rows, before any
        # CUDA graph is captured (a collective rendezvous; no-op for NCCL)
        self.tp.reserve(ws.delta.numel(), ws.delta.dtype, ws.delta.device)
        return ws

    def all_reduce(self, layer, a, b, fb: ForwardBatch, budget=None):
        self.tp.all_reduce_(self.ws.delta[a:b])  # [b - a, h] partial sums -> the full o_proj / down output

    # ---- fused-rmsnorm: the all-reduce ops write residual and normed rows [a, b); the norm ops after them, which
    # the plan orders after the all-reduce of the same rows, have nothing left to do ------------------------------
    def _all_reduce_norm(self, a, b, weight) -> None:
        ws = self.ws
        self.tp.add_rms_norm_(ws.delta[a:b], ws.residual[a:b], weight, self.cfg.rms_norm_eps, ws.normed[a:b],
                              self.k.add_rms_norm)

    def o_allreduce_norm(self, layer, a, b, fb, budget=None):
        self._all_reduce_norm(a, b, self.w.layers[layer].mlp_norm)

    def down_allreduce_norm(self, layer, a, b, fb, budget=None):
        last = layer + 1 == len(self.w.layers)
        self._all_reduce_norm(a, b, self.w.final_norm if last else self.w.layers[layer + 1].attn_norm)

    def mlp_norm(self, layer, a, b, fb, budget=None):
        if not self.tp.fuses_norm:
            super().mlp_norm(layer, a, b, fb, budget)

    def attn_norm(self, layer, a, b, fb, budget=None):
        if layer and self.tp.fuses_norm:
            return None
        if layer:
            return super().attn_norm(layer, a, b, fb, budget)
        ws, w, s = self.ws, self.w.layers[0], self.shapes
        ids = fb.input_ids[a:b] - s.vocab_lo  # [b - a], ids outside this rank's slice look up row 0, then zeroed
        mine = (ids >= 0) & (ids < s.vocab_per_rank)
        torch.index_select(self.w.embed, 0, ids.clamp(0, s.vocab_per_rank - 1), out=ws.residual[a:b])
        ws.residual[a:b].mul_(mine.unsqueeze(1).to(ws.residual.dtype))
        # exactly one rank holds each id: the sum is the embedding. Through the process group, not the plan's
        # implementation: another nano-batch's plan collective may run beside it on another stream
        self.tp.all_reduce_group_(ws.residual[a:b])
        self.k.rms_norm(ws.residual[a:b], w.attn_norm, self.cfg.rms_norm_eps, out=ws.normed[a:b])

    def logits(self, fb: ForwardBatch) -> torch.Tensor:
        """-> fp32 [num_sampled, V], identical on every rank."""
        if self.tp.fuses_norm:  # the last down all-reduce already applied the final norm to every row
            local = self.lm_head(self.ws.normed.index_select(0, fb.logits_rows))
        else:
            local = super().logits(fb)  # [S, V_r] from this rank's lm_head rows
        return self.tp.all_gather_last(local)[:, : self.vocab_size]


def load_rank(config, model_cfg, device, dtype):
    """Join the process group and load this rank's weights -> (TPGroup, ShardShapes, the shard's ModelConfig,
    ModelWeights)."""
    from pathlib import Path

    from engine.models.sharding import load_hf_shard, random_shard_weights, shard_model_config
    from engine.parallel.comm import init_group
    from engine.sizing import shard_shapes

    tp = init_group(device, config.allreduce)
    shapes = shard_shapes(model_cfg, tp.size, tp.rank)
    if Path(config.model).is_dir():
        weights = load_hf_shard(config.model, model_cfg, shapes, device, dtype)
    else:
        weights = random_shard_weights(model_cfg, shapes, device, dtype, config.seed)
    return tp, shapes, shard_model_config(model_cfg, shapes), weights
