"""/metrics in Prometheus' text format (prometheus-client), one registry per server so tests can start
several. Gauges are read from the engine thread's latest stats snapshot when scraped."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# seconds; vLLM-like spans from a fast decode step to a long queue
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                   20.0, 40.0, 80.0, 160.0)


class ServerMetrics:
    def __init__(self, snapshot, model: str):
        """`snapshot()` -> the engine's latest stats dict (num_running, num_waiting, kv_usage, ...)."""
        self.registry = r = CollectorRegistry()
        labels = {"model_name": model}
        g = lambda name, doc, key: Gauge(name, doc, ["model_name"], registry=r).labels(**labels).set_function(
            lambda: float(snapshot().get(key) or 0))
        g("nanotune_num_requests_running", "Requests in the engine's running set.", "num_running")
        g("nanotune_num_requests_waiting", "Requests queued in the engine, not yet admitted.", "num_waiting")
        g("nanotune_kv_cache_usage_perc", "Fraction of KV-cache blocks in use (0-1).", "kv_usage")
        g("nanotune_num_preemptions", "Requests preempted (recomputed) so far.", "num_preemptions")
        c = lambda name, doc: Counter(name, doc, ["model_name"], registry=r).labels(**labels)
        self.prompt_tokens = c("nanotune_prompt_tokens", "Prompt tokens of admitted requests.")
        self.generation_tokens = c("nanotune_generation_tokens", "Tokens generated.")
        self.finished = Counter("nanotune_request_success", "Requests that ended, by finish reason.",
                                ["model_name", "finished_reason"], registry=r)
        self.model = model
        self.rejected = c("nanotune_requests_rejected", "Requests answered 503 (queue full).")
        h = lambda name, doc: Histogram(name, doc, ["model_name"], buckets=LATENCY_BUCKETS,
                                        registry=r).labels(**labels)
        self.ttft = h("nanotune_time_to_first_token_seconds", "Receipt -> first token.")
        self.tpot = h("nanotune_time_per_output_token_seconds", "Gap between consecutive tokens of a request.")
        self.e2e = h("nanotune_e2e_request_latency_seconds", "Receipt -> last token.")

    def finish(self, reason: str) -> None:
        self.finished.labels(model_name=self.model, finished_reason=reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
