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
    plan: str | None = None
    max_num_batched_tokens: int | None = None  # None: the tuned config's value (engine.tuned), else the engine's
    max_num_seqs: int | None = None
    endpoint: str | None = None
    hf_attn: str = "sdpa"
    peak_tflops: float | None = None  # given instead of measured
    vocab_size: int | None = None  # endpoint: range of the random prompt ids (default: the preset's)
    num_params: float | None = None  # endpoint: parameters per GPU, for the optimum (default: the preset's)
    profile: str | None = None  # the power-aware bound's profile (default: the reference of --gpu / this GPU)
    gpu: str | None = None  # whose reference profile bounds the run (an endpoint's GPU)

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine '{self.engine}' (one of {', '.join(ENGINES)})")
        if self.mode not in ("offline", "online"):
            raise ValueError(f"unknown mode '{self.mode}' (offline or online)")
        if self.engine == "sequential" and self.plan:
            raise ValueError("--engine sequential runs the one-nano-batch plan; drop --plan or use nanoflow")
        if self.engine == "endpoint":
            from nanotune.bench.backends.endpoint import completions_url

            if not self.endpoint:
                raise ValueError("engine 'endpoint' needs --endpoint URL")
            completions_url(self.endpoint)  # raises ValueError naming a malformed URL
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
        return asdict(self)
