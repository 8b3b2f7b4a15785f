"""vLLM `bench serve --save-result` keys, so tools that read vLLM's result files read ours.

vLLM writes one flat JSON object: the setup (date, backend, model_id, tokenizer_id, num_prompts), the
traffic (request_rate, "inf" for all-at-once; burstiness; max_concurrency), the run's totals and
throughputs, per-request lists in request order (input_lens, output_lens, ttfts and itls in seconds,
generated_texts, errors: "" for a success) and mean/median/std/p<q> of ttft/tpot/itl/e2el in ms. Our
metric names are already vLLM's where the meaning is the same, so the headline metrics are copied as is.
"""

from __future__ import annotations

import math
import time

from nanotune.bench.records import RequestRecord
from nanotune.results.rates import rate_value

# the headline-metric keys vLLM writes too (mean/median/std/p*_..._ms are matched by their suffix)
VLLM_METRICS = ("duration", "completed", "failed", "total_input_tokens", "total_output_tokens",
                "request_throughput", "request_goodput", "output_throughput", "total_token_throughput")
LATENCY_SUFFIXES = ("_ttft_ms", "_tpot_ms", "_itl_ms", "_e2el_ms")


def vllm_backend(engine: dict) -> str:
    """vLLM's --backend names for an HTTP server ("openai", "openai-chat"); our engine name otherwise."""
    if engine.get("engine") == "endpoint":
        return "openai-chat" if engine.get("endpoint_type") == "chat" else "openai"
    return f"nanotune-{engine.get('engine')}"


def vllm_fields(result: dict, records: list[RequestRecord]) -> dict:
    """The vLLM keys for `result` (a bench result dict) whose headline point measured `records`."""
    cfg, eng, m = result.get("config") or {}, result.get("engine") or {}, result.get("metrics") or {}
    rate = rate_value(result.get("request_rate"))  # a number, or "inf" as result.json stores it
    out = {
        "date": time.strftime("%Y%m%d-%H%M%S"),
        "backend": vllm_backend(eng),
        "model_id": eng.get("model"),
        "tokenizer_id": cfg.get("tokenizer") or eng.get("model"),
        "num_prompts": len(records),
        "request_rate": "inf" if rate is None or math.isinf(rate) else rate,
        "burstiness": cfg.get("burstiness", 1.0),
        "max_concurrency": cfg.get("max_concurrency"),
    }
    out.update({k: m.get(k) for k in VLLM_METRICS if k in m})
    out.update({k: v for k, v in m.items() if k.endswith(LATENCY_SUFFIXES) and not k.startswith("steady")})
    ok = lambda r: r.is_ok  # vLLM lists every request; a failed one has 0 tokens, no times, its error
    out["input_lens"] = [r.prompt_len for r in records]
    out["output_lens"] = [r.output_len if ok(r) else 0 for r in records]
    out["ttfts"] = [r.ttft_s if ok(r) and r.ttft_s is not None else 0.0 for r in records]
    out["itls"] = [r.itls_s if ok(r) else [] for r in records]
    out["generated_texts"] = [r.generated_text for r in records]
    out["errors"] = ["" if ok(r) else (r.error or r.status) for r in records]
    return out


VLLM_SETUP = ("date", "backend", "model_id", "tokenizer_id", "num_prompts", "burstiness", "max_concurrency")
VLLM_LISTS = ("input_lens", "output_lens", "ttfts", "itls", "generated_texts", "errors")


def vllm_export(result: dict) -> dict:
    """The file vLLM's `--save-result` would have written for this run (from a result.json's top level)."""
    rate = rate_value(result.get("request_rate"))  # a number, or "inf" as result.json stores it
    out = {k: result.get(k) for k in VLLM_SETUP}
    out["request_rate"] = "inf" if rate is None or math.isinf(rate) else rate
    out.update({k: result[k] for k in VLLM_METRICS if k in result})
    out.update({k: v for k, v in result.items() if k.endswith(LATENCY_SUFFIXES)})
    out.update({k: result.get(k) for k in VLLM_LISTS})
    return out


def write_vllm_json(path, result: dict):
    from pathlib import Path

    from nanotune.results.store import write_json_atomic

    return write_json_atomic(Path(path), vllm_export(result))
