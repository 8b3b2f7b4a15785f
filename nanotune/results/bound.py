"""The power-aware bound: the most total tokens/s one card can serve on a workload when its power cap is
counted. The one owner of the bound's arithmetic (torch-free); bench, search, report and
scripts/power_bound.py import it.

NanoFlow's Eq. 5 (results.peak) charges every token 2 FLOPs per parameter at the cold GEMM peak and nothing
else. A power-capped card cannot hold that peak for seconds, and a serving run also streams the KV cache.
The bound charges a workload:

* compute: the layer GEMMs (qkv, o_proj, gate_up, down) for every token that passes the layers (prompt +
  output - 1: the last sampled token is never fed back), lm_head for every sampled token (one per output
  token), and prefill attention's QK^T / PV FLOPs, all at the profile's *sustained* GEMM rate (cuBLAS at a
  layer shape, run for seconds). Attention at the GEMM rate is a lower bound on its time.
* memory: the compulsory KV reads (decode step j of a request with prompt p reads the p + j cached tokens;
  prefill reads each prompt's KV once) at the KV dtype, plus the element-wise ops' traffic (norms, rope +
  KV store, SiLU-mul; profile.ops.memory_cost), all at the best *sustained* HBM read bandwidth the profile
  measured (any reader, any SM budget). q, attention outputs and block tables are left out (under 1%).
* weights: NOT charged as extra bytes. Each iteration reads every weight once, but inside the GEMMs whose
  sustained rate was measured at a layer shape, weight read included; charging the bytes again would count
  them twice and could put the bound below what the card does.

time sequential = compute + memory; with concurrency = max(compute, memory, sequential / f), f the most
work the profile saw a GEMM and an HBM stream do together, as a fraction of their alone rates summed (at
least 1: running back to back is always possible). Without a measured f the bound takes perfect overlap,
max(compute, memory): looser, still a bound. Every term is a lower bound on the card's time, so a measured
run above its bound means the bound is wrong.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

from nanotune.profile.ops import GEMM_OPS, MEMORY_OPS, Shard, attention_flops, gemm_cost, memory_cost


def kv_dtype_bytes(kv_dtype: str, model_dtype_bytes: int = 2) -> int:
    """Bytes per K/V element of a KV cache dtype (the engine's names, plus the short bf16/fp16), through the
    engine's owner of the figure."""
    from engine.config import kv_cache_dtype_bytes

    return kv_cache_dtype_bytes({"bf16": "bfloat16", "fp16": "float16"}.get(kv_dtype, kv_dtype), model_dtype_bytes)


class BoundUnavailable(ValueError):
    """The inputs cannot give a bound (no power section, no shapes); the message says why, in one line."""


@dataclass(frozen=True)
class Work:
    """A workload's work in token counts (model-independent sums over its requests)."""

    num_requests: int
    prompt_tokens: int
    output_tokens: int
    layer_tokens: int  # tokens through the layers: sum of p + o - 1
    sampled_tokens: int  # tokens sampled from lm_head: sum of o
    decode_kv_tokens: float  # cached tokens read by decode steps: sum over j = 1..o-1 of (p + j)
    prefill_pairs: float  # causal query-key pairs of the prompts: sum of p (p + 1) / 2
    prefill_kv_tokens: int  # each prompt's KV read once: sum of p

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def of(d: dict) -> Work:
        return Work(**{k: d[k] for k in Work.__dataclass_fields__})


def workload_work(lengths: Iterable[tuple[int, int]]) -> Work:
    """Work of requests given as (prompt_len, output_len) pairs (each output >= 1 token)."""
    n = p_sum = o_sum = layer = kv = pairs = 0
    for p, o in lengths:
        p, o = int(p), int(o)
        n, p_sum, o_sum = n + 1, p_sum + p, o_sum + o
        layer += p + o - 1
        kv += (o - 1) * p + (o - 1) * o / 2  # sum_{j=1}^{o-1} (p + j)
        pairs += p * (p + 1) / 2
    return Work(n, p_sum, o_sum, layer, o_sum, kv, pairs, p_sum)


@dataclass(frozen=True)
class Rates:
    """The card's sustained limits, from a profile's power section."""

    gemm_flops_per_s: float
    read_bytes_per_s: float
    overlap: float | None  # work together / alone rates, best split; None = not measured
    source: str

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def of(d: dict) -> Rates:
        return Rates(float(d["gemm_flops_per_s"]), float(d["read_bytes_per_s"]),
                     None if d.get("overlap") is None else float(d["overlap"]), str(d.get("source", "")))


def rates_from_profile(profile: dict, where: str = "profile") -> Rates:
    """Rates from a profile dict's `power` section (nanotune.profile.power); BoundUnavailable says why not."""
    power = profile.get("power")
    if not power:
        raise BoundUnavailable(f"{where} has no power section (measure one: `nanotune profile --quick --power-only`)")
    gemm = (power.get("gemm") or {}).get("tflops")
    reads = [r["gb_s"] for r in power.get("read") or [] if r.get("gb_s")]
    if not gemm or not reads:
        raise BoundUnavailable(f"{where}: the power section lacks a sustained GEMM or HBM read rate "
                               f"({power.get('why') or 'not measured'})")
    together = [t["sum"] for t in power.get("together") or [] if t.get("sum")]
    gpu = (profile.get("gpu") or {}).get("name") or "?"
    return Rates(gemm * 1e12, max(reads) * 1e9, max(together) if together else None,
                 f"{where} ({gpu}, power section)")


def model_cost(work: Work, s: Shard, kv_dtype_bytes: int = 2, e: int = 2) -> dict:
    """FLOPs and bytes the workload must move on one GPU's shard `s` (bound's docstring says what counts)."""
    layer_flops = sum(gemm_cost(work.layer_tokens, *s.gemm_nk(op), e=e)[0] for op in GEMM_OPS) * s.num_layers
    lm_head = gemm_cost(work.sampled_tokens, -(-s.vocab // s.tp), s.hidden, e=e)[0]
    prefill_flops = attention_flops(s, work.prefill_pairs) * s.num_layers
    kv = s.kv_bytes_per_token(kv_dtype_bytes)  # K and V of one token over all layers
    other = sum(memory_cost(s, op, work.layer_tokens, e=e)[1] for op in MEMORY_OPS) * s.num_layers
    return {"gemm_flops": layer_flops + lm_head, "prefill_attention_flops": prefill_flops,
            "decode_kv_bytes": work.decode_kv_tokens * kv, "prefill_kv_bytes": work.prefill_kv_tokens * kv,
            "other_bytes": other}


def compute_bound(work: Work, s: Shard, rates: Rates, kv_dtype_bytes: int = 2) -> dict:
    """The bound's figures: total tokens/s with the measured concurrency (the bound), sequential (no
    overlap), and the times and costs behind them."""
    if work.total_tokens <= 0:
        raise BoundUnavailable("no tokens: nothing to bound")
    cost = model_cost(work, s, kv_dtype_bytes)
    compute_s = (cost["gemm_flops"] + cost["prefill_attention_flops"]) / rates.gemm_flops_per_s
    memory_s = (cost["decode_kv_bytes"] + cost["prefill_kv_bytes"] + cost["other_bytes"]) / rates.read_bytes_per_s
    sequential_s = compute_s + memory_s
    overlap = max(1.0, rates.overlap) if rates.overlap is not None else None
    bound_s = max(compute_s, memory_s, sequential_s / overlap) if overlap else max(compute_s, memory_s)
    return {"bound_total_token_throughput": work.total_tokens / bound_s,
            "bound_sequential_total_token_throughput": work.total_tokens / sequential_s,
            "compute_s": compute_s, "memory_s": memory_s, "bound_s": bound_s,
            "overlap": overlap, "overlap_source": "measured" if overlap else "not measured: perfect overlap",
            "kv_dtype_bytes": kv_dtype_bytes, **cost}


def bound_block(work: Work, s: Shard, rates: Rates, kv_dtype_bytes: int = 2) -> dict:
    """What a result stores: the inputs (so the bound can be recomputed by later code) and the figures."""
    return {"inputs": {"work": work.to_dict(), "shapes": {"tp": s.tp, **s.to_dict()}, "rates": rates.to_dict(),
                       "kv_dtype_bytes": kv_dtype_bytes},
            **compute_bound(work, s, rates, kv_dtype_bytes)}


def recompute(block: dict) -> dict:
    """compute_bound again from a stored bound_block's inputs (with today's arithmetic)."""
    inp = block["inputs"]
    shapes = dict(inp["shapes"])
    tp = int(shapes.pop("tp", 1))
    return compute_bound(Work.of(inp["work"]), Shard.of(shapes, tp=tp), Rates.of(inp["rates"]),
                         int(inp.get("kv_dtype_bytes", 2)))


def efficiency_metrics(total_token_throughput: float | None, bound: dict | None) -> dict:
    """The two keys bench adds to its metrics (None where there is no bound or no throughput)."""
    b = (bound or {}).get("bound_total_token_throughput")
    return {"bound_total_token_throughput": b,
            "efficiency_vs_bound": total_token_throughput / b if b and total_token_throughput is not None
            else None}


def bound_or_why(profile: dict, where: str, s: Shard, lengths: list[tuple[int, int]],
                 kv_dtype_bytes: int = 2) -> dict:
    """bound_block of the workload on the profile's card, or {"why": one line} when there is none."""
    try:
        return bound_block(workload_work(lengths), s, rates_from_profile(profile, where), kv_dtype_bytes)
    except BoundUnavailable as e:
        return {"why": str(e)}
