"""Configuration objects. One EngineConfig flows down and is never mutated; derived values are properties.

Plain Python (no torch), so the scheduler and tools without a GPU can read them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from engine.errors import EngineConfigError, read_json
from engine.sizing import DEFAULT_MAX_NUM_BATCHED_TOKENS, DEFAULT_MAX_NUM_SEQS

# MLP activations the engine implements (Hugging Face's names; "swish" is HF's alias of silu). One owner:
# the checkpoint guard refuses others, the activation kernels branch on these.
ACTIVATIONS = ("silu", "swish", "gelu", "gelu_pytorch_tanh")


@dataclass(frozen=True)
class ModelConfig:
    """Shapes of a Llama-family decoder (Llama-2/3/3.1, Mistral, Qwen2)."""

    name: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # HF form: {"rope_type": "llama3"|"linear", "factor": ..., ...}
    max_position: int = 4096
    qkv_bias: bool = False  # Qwen2; Llama attention_bias
    tie_word_embeddings: bool = False
    eos_token_ids: tuple[int, ...] = ()
    model_type: str = "llama"
    o_bias: bool = False  # Llama attention_bias: o_proj has a bias too
    mlp_bias: bool = False  # Llama mlp_bias: gate, up and down have biases
    hidden_act: str = "silu"  # one of ACTIVATIONS
    # Sliding-window attention, HF semantics: the query at position p sees keys p - W < k <= p (itself and
    # W - 1 before it). window_layers: the layers that apply it (None: every layer; Qwen2 picks some).
    sliding_window: int | None = None
    window_layers: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise EngineConfigError(
                f"model {self.name}: num_heads {self.num_heads} is not a multiple of "
                f"num_kv_heads {self.num_kv_heads}"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise EngineConfigError(f"model {self.name}: hidden_act '{self.hidden_act}' is not implemented "
                                    f"(supported: {', '.join(ACTIVATIONS)})")

    def layer_window(self, layer: int) -> int:
        """Sliding window of `layer` in tokens; 0 = full causal attention. A static kernel argument."""
        if self.sliding_window is None or (self.window_layers is not None and layer not in self.window_layers):
            return 0
        return self.sliding_window

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def qkv_size(self) -> int:
        return self.q_size + 2 * self.kv_size

    @property
    def num_params(self) -> int:
        """Parameter count (embedding and lm_head counted once each; tied counts once)."""
        h, i = self.hidden_size, self.intermediate_size
        per_layer = h * self.qkv_size + self.q_size * h + 3 * h * i + 2 * h
        if self.qkv_bias:
            per_layer += self.qkv_size
        if self.o_bias:
            per_layer += h
        if self.mlp_bias:
            per_layer += 2 * i + h
        embed = self.vocab_size * h
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return embed + head + self.num_layers * per_layer + h

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        from engine.sizing import kv_bytes_per_token  # the formula's owner

        return kv_bytes_per_token(self.num_layers, self.kv_size, dtype_bytes)

    def to_dict(self) -> dict:
        return asdict(self)


KV_CACHE_DTYPES = ("auto", "fp8", "bfloat16", "float16", "float32")
# EngineConfig.allreduce: the plan's collective ops under tensor parallelism (engine/parallel/comm.py runs them;
# N in nccl-channels:N is a channel count; the three symm-mem/copy-engine ones need CUDA GPUs; fused-rmsnorm
# also does the residual add + RMSNorm after the all-reduce, in one kernel on CUDA)
ALLREDUCE_IMPLS = ("nccl", "nccl-channels:N", "symm-mem-one-shot", "symm-mem-two-shot", "copy-engine",
                   "fused-rmsnorm")


def kv_cache_dtype_bytes(kv_cache_dtype: str, model_dtype_bytes: int) -> int:
    """Bytes per K/V element of a cache: "auto" = the model's, fp8 = 1 (for ModelConfig.kv_bytes_per_token)."""
    sizes = {"auto": model_dtype_bytes, "fp8": 1, "bfloat16": 2, "float16": 2, "float32": 4}
    if kv_cache_dtype not in sizes:
        raise EngineConfigError(f"kv_cache_dtype '{kv_cache_dtype}': choose one of {', '.join(KV_CACHE_DTYPES)}")
    return sizes[kv_cache_dtype]


@dataclass(frozen=True)
class EngineConfig:
    """Everything the engine needs. `model` is a preset name or a local Hugging Face checkpoint directory."""

    model: str = "tiny-llama"
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    dtype: str = "auto"  # "auto" (bf16 on CUDA, fp32 on CPU) | "bfloat16" | "float16" | "float32"
    seed: int = 0
    # KV cache
    block_size: int = 16
    # "auto" = the model dtype; "fp8" = float8 e4m3 with fp32 scales per (layer, kv head), bounded from the
    # weights (engine/kv_scales.py, no calibration data); per head rather than per tensor because heads'
    # ranges differ and the kernels fold a head's scale into its score scale and output at no cost; a dtype
    # name (bfloat16, float16, float32) gives an unscaled cache of that dtype
    kv_cache_dtype: str = "auto"
    gpu_memory_fraction: float = 0.90  # of total GPU memory the engine may use (weights + activations + KV)
    num_kv_blocks: int | None = None  # override the computed cache size (tests force preemption with this)
    cpu_kv_cache_gb: float = 1.0  # cache size on CPU, where free memory is not a meaningful measure
    # Scheduler: the global dense batch
    max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS  # dense-batch token budget per iteration
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS
    max_model_len: int | None = None  # default: model's max_position, capped at 8192
    enable_chunked_prefill: bool = True
    kv_overcommit: float = 1.0  # admit while predicted peak KV <= this x cache (> 1: more load, may preempt)
    # Runner
    attention_backend: str = "auto"  # "auto" (triton on CUDA, torch on CPU) | "triton" | "torch"
    decode_kernel: str = "auto"  # triton decode attention: "auto" | "split" | "tma" (engine.kernels.DECODE_KERNELS)
    plan: str | None = None  # plan JSON / tuned-config path or a name (plan_library.resolve_plan); None: default
    use_cuda_graphs: bool = True  # decode-only iterations replay graphs captured per batch-size bucket
    mixed_cuda_graphs: bool = True  # and (with use_cuda_graphs) mixed ones, per (tokens, decode) bucket
    async_scheduling: bool = True  # schedule + launch iteration n+1 before reading iteration n's tokens
    time_ops_every: int = 0  # every Nth iteration runs eagerly with per-op CUDA-event timings (0 = never)
    poison_kv_cache: bool = False  # fill the cache with NaN first (tests catch reads of unwritten slots)
    keep_logits: bool = False  # return each sampled token's logits (tests compare them with HF)
    # Tensor parallelism (engine/parallel): ranks, one process each; the all-reduce implementation
    tp: int = 1
    allreduce: str = "nccl"  # one of ALLREDUCE_IMPLS

    def replace(self, **kw) -> EngineConfig:
        return replace(self, **kw)


@dataclass
class CacheInfo:
    """What the runner decided about the KV cache (derived, reported in stats)."""

    num_blocks: int
    block_size: int
    bytes_per_block: int
    weights_bytes: int = 0
    activation_bytes: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return self.num_blocks * self.block_size


def model_config_from_hf(path: str | Path) -> ModelConfig:
    """Read a Hugging Face `config.json` (llama, mistral, qwen2) into a ModelConfig.

    Every field is checked first (engine.checkpoint): one the engine does not implement is refused, named."""
    from engine.checkpoint import check_config  # it imports ACTIVATIONS from here

    path = Path(path)
    cfg_file = path / "config.json"
    raw = read_json(cfg_file, "no such file (expected a Hugging Face checkpoint directory)")
    if not isinstance(raw, dict):
        raise EngineConfigError(f"{cfg_file}: expected a JSON object")
    check_config(raw, cfg_file)
    model_type = raw.get("model_type", "llama")

    def need(key):
        if key not in raw:
            raise EngineConfigError(f"{cfg_file}: missing field '{key}'")
        return raw[key]

    hidden, heads = int(need("hidden_size")), int(need("num_attention_heads"))
    num_layers = int(need("num_hidden_layers"))
    # transformers >= 5 keeps rope settings in rope_parameters; 4.x in rope_theta + rope_scaling.
    rope = dict(raw.get("rope_parameters") or {})
    theta = float(rope.pop("rope_theta", raw.get("rope_theta", 10000.0)))
    scaling = raw.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
    if scaling is not None:
        scaling = dict(scaling)
        scaling.setdefault("rope_type", scaling.get("type", "default"))
        scaling.pop("partial_rotary_factor", None)  # 1.0 (checked): no effect
        if scaling["rope_type"] == "default":
            scaling = None
    eos = raw.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
    window, window_layers = _hf_sliding_window(raw, model_type, num_layers)
    attention_bias = model_type == "llama" and bool(raw.get("attention_bias", False))
    return ModelConfig(
        name=path.name,
        vocab_size=int(need("vocab_size")),
        hidden_size=hidden,
        intermediate_size=int(need("intermediate_size")),
        num_layers=num_layers,
        num_heads=heads,
        num_kv_heads=int(raw.get("num_key_value_heads") or heads),
        head_dim=int(raw.get("head_dim") or hidden // heads),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        max_position=int(raw.get("max_position_embeddings", 4096)),
        qkv_bias=model_type == "qwen2" or attention_bias,  # Qwen2: q/k/v biases always, o_proj none
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        eos_token_ids=eos_ids,
        model_type=model_type,
        o_bias=attention_bias,
        mlp_bias=model_type == "llama" and bool(raw.get("mlp_bias", False)),
        hidden_act=raw.get("hidden_act", "silu"),
        sliding_window=window,
        window_layers=window_layers,
    )


def _hf_sliding_window(raw: dict, model_type: str, num_layers: int) -> tuple[int | None, tuple[int, ...] | None]:
    """-> (window, the layers using it; None = all), as transformers' Mistral and Qwen2 decide them.

    Mistral: `sliding_window` on every layer (null: none). Qwen2: only with `use_sliding_window`; then the
    layers whose `layer_types` entry is "sliding_attention", and without layer_types (transformers 4.x
    configs) the layers i >= `max_window_layers` (Qwen2Config.__post_init__ builds layer_types that way)."""
    window = raw.get("sliding_window")
    if model_type == "mistral":
        return window, None
    if model_type != "qwen2" or not raw.get("use_sliding_window", False) or window is None:
        return None, None
    types = raw.get("layer_types") or [
        "sliding_attention" if i >= raw.get("max_window_layers", 28) else "full_attention"
        for i in range(num_layers)]
    layers = tuple(i for i, t in enumerate(types) if t == "sliding_attention")
    return (window, layers) if layers else (None, None)
