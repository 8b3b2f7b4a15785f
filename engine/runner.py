"""ModelRunner: owns the device state (weights, KV cache, workspace, plan executor, CUDA graphs) and runs
one ScheduledBatch: build inputs, execute the plan, sample.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.batch_builder import BatchBuilder
from engine.config import CacheInfo, EngineConfig, ModelConfig
from engine.errors import EngineConfigError
from engine.kernels import build_cos_sin_cache, get_ops
from engine.kv_scales import kv_scales_from_weights
from engine.models.llama import LlamaModel
from engine.models.weights import load_hf_weights, random_weights
from engine.observe import GpuSpan
from engine.pipeline import OpTiming, PlanExecutor
from engine.plan import PipelinePlan
from engine.plan_library import resolve_plan
from engine.sampler import Sampler
from engine.scheduler import ScheduledBatch
from engine.sizing import kv_bytes_per_token, sampling_reserve_bytes

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EngineConfigError(f"device '{name}': no CUDA GPU is available here")
    return dev


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise EngineConfigError(f"dtype '{name}': choose one of auto, {', '.join(DTYPES)}")
    return DTYPES[name]


@dataclass
class StepHandle:
    """One launched iteration: its sampled tokens on the device and (once `ready`) on the host."""

    batch: ScheduledBatch
    tokens_dev: torch.Tensor  # int64 [num_sampled], on the device
    tokens_host: torch.Tensor  # the same, in pinned host memory after `ready`
    ready: torch.cuda.Event | None
    logits: torch.Tensor | None
    sample_index: dict[str, int]  # request id -> row in tokens_dev
    replayed: bool = False  # a captured CUDA graph ran (else the kernels were launched one by one)
    gpu: GpuSpan | None = None  # marks around forward + logits + sampling, when the runner times steps

    def sampled(self) -> list[int | None]:
        """Per scheduled seq: its token, or None where the chunk does not sample. Waits for this step only."""
        if self.ready is not None:
            self.ready.synchronize()
        it = iter(self.tokens_host.tolist())
        return [next(it) if s.samples else None for s in self.batch.seqs]


def resolve_kv_cache_dtype(name: str, dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """EngineConfig.kv_cache_dtype -> the cache's torch dtype ("auto" = the model's; a 16/32-bit name casts K/V
    to it on store, e.g. a bf16 cache under an fp32 model: the control for fp8's error)."""
    if name == "auto":
        return dtype
    if name in DTYPES:
        return DTYPES[name]
    if name != "fp8":
        raise EngineConfigError(f"kv_cache_dtype '{name}': choose one of auto, fp8, {', '.join(DTYPES)}")
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        raise EngineConfigError("kv_cache_dtype 'fp8' needs a GPU with fp8 conversions (sm >= 89)")
    return torch.float8_e4m3fn


class ModelRunner:
    def __init__(self, config: EngineConfig, model_cfg: ModelConfig, max_model_len: int):
        self.config = config
        self.model_cfg = model_cfg
        self.device = resolve_device(config.device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.dtype = resolve_dtype(config.dtype, self.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.max_model_len = max_model_len
        self.num_sms = (torch.cuda.get_device_properties(self.device).multi_processor_count
                        if self.device.type == "cuda" else None)
        self.plan = resolve_plan(config.plan, self.num_sms, model_cfg)  # none given: default_plan(model)
        self.plan.validate(num_sms=self.num_sms, where=config.plan or "plan")
        t0 = time.perf_counter()
        self.tp = None  # engine/parallel/comm.TPGroup under tensor parallelism
        if config.tp > 1:
            from engine.parallel.tp_model import load_rank

            self.tp, self.shapes, run_cfg, self.weights = load_rank(config, model_cfg, self.device, self.dtype)
        elif Path(config.model).is_dir():
            self.weights = load_hf_weights(config.model, model_cfg, self.device, self.dtype)
        else:
            self.weights = random_weights(model_cfg, self.device, self.dtype, config.seed)
        self.load_seconds = time.perf_counter() - t0
        self.kernels = get_ops(config.attention_backend, self.device, config.decode_kernel)
        self.cos_sin = build_cos_sin_cache(model_cfg.head_dim, max_model_len, model_cfg.rope_theta,
                                           model_cfg.rope_scaling, device=self.device)
        self.max_tokens = max(config.max_num_batched_tokens, config.max_num_seqs)
        if self.tp is not None:
            from engine.parallel.tp_model import TPLlamaModel

            self.model = TPLlamaModel(run_cfg, self.weights, [], self.kernels, self.cos_sin, self.tp, self.shapes,
                                      model_cfg.vocab_size)
        else:
            self.model = LlamaModel(model_cfg, self.weights, [], self.kernels, self.cos_sin)
        workspace = self.model.ensure_workspace(self.max_tokens)
        self.cache_info = self._allocate_kv_cache(workspace.num_bytes)
        self.max_blocks_per_seq = -(-max_model_len // config.block_size)
        self.sampler = Sampler(self.device, config.seed)
        self.graphs = None
        self.mixed_graphs = None
        # set by the engine while an observer wants GPU times: each handle then carries a GpuSpan
        self.time_steps = False
        self.set_plan(self.plan)

    def set_plan(self, plan: PipelinePlan) -> None:
        """Switch to another plan (same weights and cache): new executor, and graphs captured afresh."""
        plan.validate(num_sms=self.num_sms, where=plan.name)
        if self.tp is not None:  # the collectives a plan omits go after their GEMMs, on the GEMM's stream
            from engine.parallel.comm import check_plan_streams

            plan = plan.with_collectives()
            check_plan_streams(self.tp.impl, plan, plan.name)
        self.plan = plan
        self.graphs = self.mixed_graphs = None  # drop the old graphs (and their pools) before capturing new ones
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
        from engine.mixed_graphs import MAX_PIECES

        self.builder = BatchBuilder(plan, self.config.block_size, self.max_blocks_per_seq, self.max_tokens,
                                    self.config.max_num_seqs, self.device, graph_pieces=MAX_PIECES)
        self.executor = PlanExecutor(plan, self.model, self.device)
        if self.device.type == "cuda" and self.config.use_cuda_graphs:
            from engine.graphs import DecodeGraphs

            self.graphs = DecodeGraphs(self, max_batch=min(self.config.max_num_seqs, self.max_tokens))
            if self.config.mixed_cuda_graphs:
                from engine.mixed_graphs import MixedGraphs

                self.mixed_graphs = MixedGraphs(self, self.max_tokens, min(self.config.max_num_seqs, self.max_tokens))

    # ---- KV cache -----------------------------------------------------------------------------------
    def _allocate_kv_cache(self, workspace_bytes: int) -> CacheInfo:
        c, m = self.config, self.model.cfg  # the rank's shard under tensor parallelism
        kv_dtype = resolve_kv_cache_dtype(c.kv_cache_dtype, self.dtype, self.device)
        per_block = kv_bytes_per_token(m.num_layers, m.kv_size, kv_dtype.itemsize) * c.block_size
        if c.num_kv_blocks is not None:
            num_blocks = c.num_kv_blocks
        elif self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            # memory torch's allocator holds but does not use is ours to reuse, not someone else's
            cached = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
            # sampling temporaries ([seqs, vocab] fp32, a few copies) + cuBLAS/graph pools + kernel scratch
            reserve = sampling_reserve_bytes(c.max_num_seqs, self.model_cfg.vocab_size)
            budget = c.gpu_memory_fraction * total - (total - free - cached) - reserve
            num_blocks = int(budget // per_block)
        else:
            num_blocks = int(c.cpu_kv_cache_gb * (1 << 30) // per_block)
        if self.tp is not None:  # every rank schedules the same blocks: the cache is the smallest rank's
            num_blocks = self.tp.min_int(num_blocks)
        if num_blocks < 1:
            raise EngineConfigError(f"no memory left for the KV cache after {self.weights.num_bytes / 2**30:.1f} "
                                    f"GiB of weights (gpu_memory_fraction={c.gpu_memory_fraction})")
        # [L, 2, blocks, Hkv, block_size, D]; each layer's K and V are contiguous views
        cache = torch.empty((m.num_layers, 2, num_blocks, m.num_kv_heads, c.block_size, m.head_dim),
                            device=self.device, dtype=kv_dtype)
        if c.poison_kv_cache:  # tests: any read of a slot nothing wrote shows up as NaN
            cache.fill_(float("nan"))
        self.kv_cache = cache
        self.model.kv = [(cache[i, 0], cache[i, 1]) for i in range(m.num_layers)]
        if kv_dtype == torch.float8_e4m3fn:  # K = stored * k_scale[layer, kv head] (EngineConfig.kv_cache_dtype)
            self.kv_scales = kv_scales_from_weights(m, self.weights)  # [L, 2, Hkv] fp32
            self.model.kv_scales = [{"k_scale": self.kv_scales[i, 0], "v_scale": self.kv_scales[i, 1]}
                                    for i in range(m.num_layers)]
        return CacheInfo(num_blocks=num_blocks, block_size=c.block_size, bytes_per_block=per_block,
                         weights_bytes=self.weights.num_bytes, activation_bytes=workspace_bytes)

    # ---- one iteration ------------------------------------------------------------------------------
    def launch(self, batch: ScheduledBatch, prev: StepHandle | None = None,
               timings: list[OpTiming] | None = None) -> StepHandle:
        """Enqueue the batch's forward and sampling; returns at once on CUDA (tokens come via the handle).

        prev: the previous, unresolved iteration, whose sampled tokens feed this one's decode rows."""
        start = self._mark() if self.time_steps else None
        logits, replayed = None, False
        if self.graphs is not None and timings is None and self.graphs.can_run(batch):
            logits, replayed = self.graphs.run(batch, prev), True
        elif self.mixed_graphs is not None and timings is None:
            logits = self.mixed_graphs.run(batch, prev)  # None: not captured (yet), or too many pieces
            replayed = logits is not None and self.mixed_graphs.replayed
        if logits is None:
            fb = self.builder.stage(batch, prev, self.builder.eager_layout(batch))
            self.executor.forward(fb, timings)
            logits = self.model.logits(fb)
        sampling = [s for s in batch.seqs if s.samples]
        tokens = self.sampler.sample(logits, [s.request.params for s in sampling],
                                     [s.request.request_id for s in sampling])
        index = {s.request.request_id: i for i, s in enumerate(sampling)}
        span = GpuSpan(start, self._mark()) if start is not None else None
        keep = logits.clone() if self.config.keep_logits else None  # graph outputs are overwritten next replay
        if self.device.type != "cuda":
            return StepHandle(batch, tokens, tokens, None, keep, index, replayed, span)
        host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
        host.copy_(tokens, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
        return StepHandle(batch, tokens, host, ready, keep, index, replayed, span)

    def _mark(self):
        """A recorded CUDA event; on CPU the host clock (CPU ops run as they are called)."""
        if self.device.type != "cuda":
            return time.perf_counter()
        e = torch.cuda.Event(enable_timing=True)
        e.record()
        return e

    def execute(self, batch: ScheduledBatch, timings: list[OpTiming] | None = None):
        """Synchronous launch: -> (sampled token per seq (None where no sample), logits [S, V] or None)."""
        h = self.launch(batch, None, timings)
        return h.sampled(), h.logits

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
