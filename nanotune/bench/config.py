"""`BenchConfig`: everything one `nanotune bench` invocation decided, in one frozen object (recorded in
result.json as `config`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from nanotune.bench.requests import LengthCaps

ENGINES = ("nanoflow", "sequential", "hf", "endpoint")


@dataclass(frozen=True)
class BenchConfig:
    trace: str = "sharegpt"  # dataset name or trace file
    num_requests: int | None = None  # None: the whole file / the generator default
    seed: int = 0
    mode: str = "offline"  # "offline" | "online"
    request_rate: float | None = None  # online: requests/s (inf: all at once); None: trace timestamps
    burstiness: float = 1.0  # gamma shape of the gaps; 1 = Poisson
    max_concurrency: int | None = None
    num_warmups: int = 4
    repeat: int = 1
    sweep_rates: tuple[float, ...] | None = None
    slos: dict = field(default_factory=dict)  # {"ttft": ms, "tpot": ms, "e2el": ms}
    slo_attainment: float = 0.9  # sweep: a rate "meets the SLOs" when this share of requests does
    caps: LengthCaps = field(default_factory=LengthCaps)
    engine: str = "nanoflow"
    model: str | None = None
    device: str = "cpu"
    dtype: str | None = None
    kv_cache_dtype: str = "auto"  # in-process engine: "auto" | "fp8"
    decode_kernel: str = "auto"  # in-process engine: "auto" | "split" | "tma"
    plan: str | None = None
    max_num_batched_tokens: int | None = None  # None: the tuned config's value (engine.tuned), else the engine's
    max_num_seqs: int | None = None
    endpoint: str | None = None
    hf_attn: str = "sdpa"
    peak_tflops: float | None = None  # given instead of measured
    vocab_size: int | None = None  # endpoint: range of the random prompt ids (default: the preset's)
    num_params: float | None = None  # endpoint: parameters per GPU, for the optimum (default: the preset's)
    profile: str | None = None  # the power-aware bound's profile (default: the reference of --gpu / this GPU)
    endpoint_type: str = "completions"  # endpoint: "completions" | "chat"
    tokenizer: str | None = None  # endpoint: local tokenizer folder; prompts are then sent as text
    request_timeout: float = 600.0  # endpoint: seconds to wait for a connection or the stream's next bytes
    ignore_eos: bool = True  # endpoint: send vLLM's ignore_eos + min_tokens (False: servers that reject them)
    gpu: str | None = None  # this GPU's committed reference profile: the peak (endpoint) and the bound
    api_key: str | None = field(default=None, repr=False)  # endpoint: sent as Bearer; never written out
    tp: int = 1  # in-process engine: tensor-parallel ranks (one process each)
    allreduce: str = "nccl"  # in-process engine at tp > 1: EngineConfig.allreduce
    num_kv_blocks: int | None = None  # in-process engine: KV-cache blocks (None: sized from free memory)
    kv_overcommit: float | None = None  # in-process engine: admission overcommit (None: the engine's default)

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine '{self.engine}' (one of {', '.join(ENGINES)})")
        for flag, value in (("--kv-cache-dtype", self.kv_cache_dtype), ("--decode-kernel", self.decode_kernel)):
            if value != "auto" and self.engine in ("hf", "endpoint"):
                raise ValueError(f"{flag} {value}: only for the in-process engine (nanoflow, sequential), "
                                 f"not {self.engine}")
        if self.mode not in ("offline", "online"):
            raise ValueError(f"unknown mode '{self.mode}' (offline or online)")
        if self.engine == "sequential" and self.plan:
            raise ValueError("--engine sequential runs the one-nano-batch plan; drop --plan or use nanoflow")
        if self.engine == "endpoint":
            from nanotune.bench.backends.endpoint import completions_url

            if not self.endpoint:
                raise ValueError("engine 'endpoint' needs --endpoint URL")
            completions_url(self.endpoint)  # raises ValueError naming a malformed URL
            if self.endpoint_type not in ("completions", "chat"):
                raise ValueError(f"--endpoint-type '{self.endpoint_type}': completions or chat")
            if self.endpoint_type == "chat" and not self.tokenizer:
                raise ValueError("--endpoint-type chat sends text: give --tokenizer DIR (a local Hugging Face "
                                 "tokenizer folder) to turn the trace's prompts into text")
            if not self.request_timeout > 0 or self.request_timeout == float("inf"):
                raise ValueError(f"--request-timeout must be a positive number of seconds, got "
                                 f"{self.request_timeout}")
        if self.tp < 1:
            raise ValueError(f"--tp must be >= 1, got {self.tp}")
        if self.tp > 1 and self.engine not in ("nanoflow", "sequential"):
            raise ValueError(f"--tp {self.tp}: only the in-process engine (nanoflow, sequential) runs "
                             "tensor-parallel")
        if self.allreduce != "nccl" and self.tp == 1:
            raise ValueError(f"--allreduce {self.allreduce}: only with --tp > 1 (one rank has no all-reduce)")
        if self.repeat < 1:
            raise ValueError(f"--repeat must be >= 1, got {self.repeat}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"--max-concurrency must be >= 1, got {self.max_concurrency}")
        if self.num_warmups < 0:
            raise ValueError(f"--num-warmups must be >= 0, got {self.num_warmups}")
        if not 0 < self.slo_attainment <= 1:
            raise ValueError(f"--slo-attainment must be in (0, 1], got {self.slo_attainment}")

    @property
    def rates(self) -> list[float | None]:
        """One entry per point of the run: the sweep's rates, or the single rate (None = trace/offline)."""
        return list(self.sweep_rates) if self.sweep_rates else [self.request_rate]

    def mode_for(self, rate: float | None) -> str:
        return "online" if rate is not None or self.mode == "online" else "offline"

    def to_dict(self) -> dict:
        from nanotune.results.rates import rate_json

        d = asdict(self)
        d["api_key"] = "(given)" if self.api_key else None  # a secret stays out of result.json
        d["request_rate"] = rate_json(d["request_rate"])
        d["sweep_rates"] = [rate_json(r) for r in d["sweep_rates"]] if d["sweep_rates"] else d["sweep_rates"]
        return d
