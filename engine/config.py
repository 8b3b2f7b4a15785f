"""Configuration objects. One EngineConfig flows down and is never mutated; derived values are properties.

Plain Python (no torch), so the scheduler and tools without a GPU can read them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from engine.errors import EngineConfigError, read_json


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
    qkv_bias: bool = False  # Qwen2
    tie_word_embeddings: bool = False
    eos_token_ids: tuple[int, ...] = ()
    model_type: str = "llama"

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise EngineConfigError(
                f"model {self.name}: num_heads {self.num_heads} is not a multiple of "
                f"num_kv_heads {self.num_kv_heads}"
            )

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
        embed = self.vocab_size * h
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return embed + head + self.num_layers * per_layer + h

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        return 2 * self.num_layers * self.kv_size * dtype_bytes

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EngineConfig:
    """Everything the engine needs. `model` is a preset name or a local Hugging Face checkpoint directory."""

    model: str = "tiny-llama"
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    dtype: str = "auto"  # "auto" (bf16 on CUDA, fp32 on CPU) | "bfloat16" | "float16" | "float32"
    seed: int = 0
    # KV cache
    block_size: int = 16
    gpu_memory_fraction: float = 0.90  # of total GPU memory the engine may use (weights + activations + KV)
    num_kv_blocks: int | None = None  # override the computed cache size (tests force preemption with this)
    cpu_kv_cache_gb: float = 1.0  # cache size on CPU, where free memory is not a meaningful measure
    # Scheduler: the global dense batch
    max_num_batched_tokens: int = 2048  # dense-batch token budget per iteration
    max_num_seqs: int = 512
    max_model_len: int | None = None  # default: model's max_position, capped at 8192
    enable_chunked_prefill: bool = True
    kv_overcommit: float = 1.0  # admit while predicted peak KV <= this x cache (> 1: more load, may preempt)
    # Runner
    attention_backend: str = "auto"  # "auto" (triton on CUDA, torch on CPU) | "triton" | "torch"
    plan: str | None = None  # plan JSON / tuned-config path or a name (plan_library.resolve_plan); None: default
    use_cuda_graphs: bool = True  # decode-only iterations replay graphs captured per batch-size bucket
    mixed_cuda_graphs: bool = True  # and (with use_cuda_graphs) mixed ones, per (tokens, decode) bucket
    async_scheduling: bool = True  # schedule + launch iteration n+1 before reading iteration n's tokens
    time_ops_every: int = 0  # every Nth iteration runs eagerly with per-op CUDA-event timings (0 = never)
    poison_kv_cache: bool = False  # fill the cache with NaN first (tests catch reads of unwritten slots)
    keep_logits: bool = False  # return each sampled token's logits (tests compare them with HF)

    def replace(self, **kw) -> EngineConfig:
        return replace(self, **kw)


MAX_MODEL_LEN_CAP = 8192
"""Default context cap: the KV block table and the rope cache are sized by max_model_len, so a model trained
to 128k positions would otherwise reserve per-sequence tables for contexts no benchmark uses."""


def resolve_max_model_len(model: ModelConfig, requested: int | None = None) -> int:
    """The context the engine serves: `requested`, else the model's max_position capped at MAX_MODEL_LEN_CAP.
    Torch-free, so the tools that drop over-long requests before a run read the figure the engine uses."""
    if requested is None:
        return min(model.max_position, MAX_MODEL_LEN_CAP)
    if requested > model.max_position:
        raise EngineConfigError(f"max_model_len {requested} exceeds the model's max_position {model.max_position}")
    return requested


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
    """Read a Hugging Face `config.json` (llama, mistral, qwen2) into a ModelConfig."""
    path = Path(path)
    cfg_file = path / "config.json"
    raw = read_json(cfg_file, "no such file (expected a Hugging Face checkpoint directory)")
    model_type = raw.get("model_type", "llama")
    if model_type not in ("llama", "mistral", "qwen2"):
        raise EngineConfigError(f"{cfg_file}: field 'model_type': unsupported '{model_type}' "
                                "(supported: llama, mistral, qwen2)")

    def need(key):
        if key not in raw:
            raise EngineConfigError(f"{cfg_file}: missing field '{key}'")
        return raw[key]

    hidden, heads = int(need("hidden_size")), int(need("num_attention_heads"))
    # transformers >= 5 keeps rope settings in rope_parameters; 4.x in rope_theta + rope_scaling.
    rope = dict(raw.get("rope_parameters") or {})
    theta = float(rope.pop("rope_theta", raw.get("rope_theta", 10000.0)))
    scaling = raw.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
    if scaling is not None:
        scaling = dict(scaling)
        scaling.setdefault("rope_type", scaling.get("type", "default"))
        if scaling["rope_type"] == "default":
            scaling = None
        elif scaling["rope_type"] not in ("llama3", "linear"):
            raise EngineConfigError(f"{cfg_file}: field 'rope_scaling': unsupported rope_type "
                                    f"'{scaling['rope_type']}' (supported: llama3, linear)")
    eos = raw.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
    return ModelConfig(
        name=path.name,
        vocab_size=int(need("vocab_size")),
        hidden_size=hidden,
        intermediate_size=int(need("intermediate_size")),
        num_layers=int(need("num_hidden_layers")),
        num_heads=heads,
        num_kv_heads=int(raw.get("num_key_value_heads") or heads),
        head_dim=int(raw.get("head_dim") or hidden // heads),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        max_position=int(raw.get("max_position_embeddings", 4096)),
        qkv_bias=model_type == "qwen2" or bool(raw.get("attention_bias", False)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        eos_token_ids=eos_ids,
        model_type=model_type,
    )
