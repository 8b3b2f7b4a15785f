"""The real engine code set up to time one op at a time: a LlamaModel of one GPU's shard, its KV cache and
workspaces on the device, and a ForwardBatch per input point.

What rotates, and why: repeats of the same op on the same bytes would find them in L2 (50 MB on an H100,
60 MB on an H200) and look faster than in a real forward. So the model gets several layers (each with its own
random weights) and the op is run on layer 1 + i % L; activations come from one of several workspaces; decode
and prefill attention read one of several disjoint KV regions. Layer 0 is never timed: its attn_norm also
looks up the embedding, which later layers do not.

Everything holds fresh random values (never zeros: zeros flatter power and clocks).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from engine.config import ModelConfig
from engine.kernels import build_cos_sin_cache, get_ops
from engine.kv_scales import kv_scales_from_weights
from engine.models.forward import ForwardBatch, PrefillMeta
from engine.models.llama import LlamaModel, Workspace
from engine.models.weights import random_weights
from engine.sizing import MAX_MODEL_LEN_CAP

BLOCK_SIZE = 16  # the engine's default KV page


def num_rotations(bytes_per_call: float, l2_bytes: int, cap: int, floor: int = 1) -> int:
    """How many distinct copies of an op's operands to cycle through so that, between two uses of one
    copy, about 3x the L2 size has streamed through (LRU-like caches have then evicted it)."""
    if l2_bytes <= 0 or bytes_per_call <= 0:
        return max(1, floor)
    return max(floor, min(cap, math.ceil(3 * l2_bytes / bytes_per_call)))


def kv_blocks(op: str, point: dict) -> int:
    """KV blocks one copy of an input point's batch occupies (rope_kv and the rest: the slots they write)."""
    if op == "decode_attn":
        return point["batch"] * -(-point["context"] // BLOCK_SIZE)
    if op == "prefill_attn":
        seqs = point.get("seqs", 1)
        return seqs * -(-(point["context"] + point["tokens"] // seqs) // BLOCK_SIZE)
    return -(-point["tokens"] // BLOCK_SIZE)


class LayerRig:
    def __init__(self, cfg: ModelConfig, device: torch.device, dtype: torch.dtype, *, num_kv_blocks: int,
                 max_tokens: int, num_workspaces: int, seed: int = 0, max_position: int = MAX_MODEL_LEN_CAP,
                 backend: str = "auto", kv_cache_dtype: str = "auto"):
        """cfg: the shard's ModelConfig whose num_layers = 1 + the weight rotation depth. backend "auto" is
        what the engine runs (Triton on CUDA, torch on CPU); tests pass "triton" under the interpreter.
        kv_cache_dtype: EngineConfig.kv_cache_dtype ("auto" = dtype; "fp8" = e4m3 with the engine's
        per-(layer, kv head) scales, so store and attention run their fp8 paths)."""
        from engine.runner import resolve_kv_cache_dtype  # the engine's own name -> torch dtype

        self.cfg, self.device, self.dtype = cfg, torch.device(device), dtype
        self.gen = torch.Generator(device=self.device).manual_seed(seed + 1)
        self.host_gen = torch.Generator().manual_seed(seed + 2)  # block-order shuffles
        kernels = get_ops(backend, self.device)
        weights = random_weights(cfg, self.device, dtype, seed)
        self.max_position = min(cfg.max_position, max_position)
        cos_sin = build_cos_sin_cache(cfg.head_dim, self.max_position, cfg.rope_theta, cfg.rope_scaling,
                                      device=self.device)
        # one cache shared by every layer: the engine's [2, blocks, Hkv, block_size, D] for one layer;
        # rotation over KV happens through disjoint block ranges, not layers
        self.num_kv_blocks = num_kv_blocks
        self.kv_cache_dtype = kv_cache_dtype
        self.kv_dtype = resolve_kv_cache_dtype(kv_cache_dtype, dtype, self.device)
        cache = self._random_cache((2, num_kv_blocks, cfg.num_kv_heads, BLOCK_SIZE, cfg.head_dim))
        self.model = LlamaModel(cfg, weights, [(cache[0], cache[1])] * cfg.num_layers, kernels, cos_sin)
        if self.kv_dtype == torch.float8_e4m3fn:  # as the engine's runner sets them: [L, 2, Hkv] fp32
            scales = kv_scales_from_weights(cfg, weights)
            self.model.kv_scales = [{"k_scale": scales[i, 0], "v_scale": scales[i, 1]} for i in range(cfg.num_layers)]
        self.kernels = kernels.name
        self.workspaces = [self._workspace(max_tokens) for _ in range(max(1, num_workspaces))]
        self.model.ws = self.workspaces[0]
        self.layers = list(range(1, cfg.num_layers)) or [0]
        self._cursor = 0  # next free KV block for a region

    def _randn(self, *shape) -> torch.Tensor:
        t = torch.empty(shape, device=self.device, dtype=self.dtype)
        return t.normal_(0.0, 1.0, generator=self.gen)

    def _random_cache(self, shape: tuple[int, ...]) -> torch.Tensor:
        """[2, blocks, Hkv, block_size, D] of the KV dtype holding N(0, 1) values; an fp8 cache is filled a
        block range at a time (normal_ has no fp8 kernel; a whole fp32 copy would double its memory)."""
        if self.kv_dtype == self.dtype:
            return self._randn(*shape)
        cache = torch.empty(shape, device=self.device, dtype=self.kv_dtype)
        step = max(1, (64 << 20) // max(1, cache[:, :1].numel() * 4))  # ~64 MiB of fp32 per chunk
        for a in range(0, shape[1], step):
            part = cache[:, a:a + step]
            tmp = torch.empty(part.shape, device=self.device, dtype=torch.float32)
            part.copy_(tmp.normal_(0.0, 1.0, generator=self.gen))
        return cache

    def _workspace(self, max_tokens: int) -> Workspace:
        ws = Workspace(self.cfg, max_tokens, self.device, self.dtype)
        for t in vars(ws).values():
            if isinstance(t, torch.Tensor):
                t.normal_(0.0, 1.0, generator=self.gen)
        return ws

    @property
    def max_tokens(self) -> int:
        return self.workspaces[0].max_tokens

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of one token in one layer, at the cache's dtype."""
        return 2 * self.cfg.num_kv_heads * self.cfg.head_dim * self.kv_dtype.itemsize

    # ---- input points -> ForwardBatches ---------------------------------------------------------------
    def _ints(self, values, dtype=torch.int64) -> torch.Tensor:
        return torch.as_tensor(values, dtype=dtype).to(self.device)

    def _region(self, num_blocks: int) -> torch.Tensor:
        """A run of free KV blocks, shuffled (the block manager hands out pages in no particular order)."""
        if num_blocks > self.num_kv_blocks:
            raise ValueError(f"needs {num_blocks} KV blocks, the cache has {self.num_kv_blocks}")
        if self._cursor + num_blocks > self.num_kv_blocks:
            self._cursor = 0
        ids = torch.arange(self._cursor, self._cursor + num_blocks, dtype=torch.int32)
        self._cursor += num_blocks
        return ids[torch.randperm(num_blocks, generator=self.host_gen)].to(self.device)

    def _reserve(self, num_blocks: int) -> None:
        """Start the next regions where `num_blocks` fit in one run, so a set of copies never overlaps."""
        if self._cursor + num_blocks > self.num_kv_blocks:
            self._cursor = 0

    def _empty_batch(self, n: int, num_decode: int = 0) -> ForwardBatch:
        positions = torch.randint(0, self.max_position, (n,), device=self.device, generator=self.gen)
        slots = self._region(-(-n // BLOCK_SIZE)).long()
        slots = (slots[:, None] * BLOCK_SIZE + torch.arange(BLOCK_SIZE, device=self.device)).flatten()[:n]
        empty = torch.zeros(0, 1, dtype=torch.int32, device=self.device)
        return ForwardBatch(num_tokens=n, num_decode=num_decode, input_ids=torch.zeros_like(positions),
                            positions=positions, slot_mapping=slots, decode_block_tables=empty,
                            decode_context_lens=empty[:, 0], logits_rows=self._ints([n - 1]))

    def token_batches(self, tokens: int, count: int) -> list[ForwardBatch]:
        """Batches of `tokens` rows for the GEMM and memory-bound ops (rope_kv reads positions and slots)."""
        return [self._empty_batch(tokens) for _ in range(count)]

    def decode_batches(self, batch: int, context: int, count: int) -> list[ForwardBatch]:
        """`batch` decode sequences of `context` tokens each, each copy over its own KV region."""
        nb = -(-context // BLOCK_SIZE)
        self._reserve(count * (batch * nb + -(-batch // BLOCK_SIZE)))
        out = []
        for _ in range(count):
            fb = self._empty_batch(batch, num_decode=batch)
            fb.decode_block_tables = self._region(batch * nb).view(batch, nb)
            fb.decode_context_lens = torch.full((batch,), context, dtype=torch.int32, device=self.device)
            out.append(fb)
        return out

    def prefill_batches(self, tokens: int, context: int, seqs: int, count: int) -> list[ForwardBatch]:
        """`seqs` sequences each with a chunk of tokens/seqs new tokens after `context` cached ones."""
        chunk = tokens // seqs
        nb = -(-(context + chunk) // BLOCK_SIZE)
        self._reserve(count * (seqs * nb + -(-tokens // BLOCK_SIZE)))
        out = []
        for _ in range(count):
            fb = self._empty_batch(tokens)
            bt = self._region(seqs * nb).view(seqs, nb)
            cu = self._ints([chunk * s for s in range(seqs + 1)], torch.int32)
            lens = torch.full((seqs,), context + chunk, dtype=torch.int32, device=self.device)
            fb.prefill[(0, tokens)] = PrefillMeta(0, tokens, cu, lens, bt, max_seqlen_q=chunk)
            out.append(fb)
        return out

    def batches(self, op: str, point: dict, count: int) -> list[ForwardBatch]:
        if op == "decode_attn":
            return self.decode_batches(point["batch"], point["context"], count)
        if op == "prefill_attn":
            return self.prefill_batches(point["tokens"], point["context"], point.get("seqs", 1), count)
        return self.token_batches(point["tokens"], count)

    # ---- the timed call -------------------------------------------------------------------------------
    def runner(self, op: str, batches: list[ForwardBatch], sm_budget: int | None,
               ws_offset: int = 0) -> Callable[[int], None]:
        """fn(i): the engine's own op on rows [0, n) of batch i % len, layer 1 + i % L, workspace i + offset.

        Two runners timed together use different ws_offset so they never share activation buffers."""
        model, ops, layers, wss = self.model, self.model.ops[op], self.layers, self.workspaces
        rows = batches[0].num_tokens

        def fn(i: int) -> None:
            model.ws = wss[(i + ws_offset) % len(wss)]
            ops(layers[i % len(layers)], 0, rows, batches[i % len(batches)], sm_budget)

        return fn
