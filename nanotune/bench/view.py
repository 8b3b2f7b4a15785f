"""What a bench run shows: a live panel while it runs (on stderr, so stdout keeps only the result) and the
final table in vLLM `bench serve`'s order."""

from __future__ import annotations

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table

from nanotune.bench.driver import Progress
from nanotune.results.rates import rate_text


def _fmt(v, spec: str = ",.1f") -> str:
    return "-" if v is None else format(v, spec)


class LiveView:
    """Requests done/total, tokens/s, engine batch and KV usage, ETA. Refreshed by the driver's progress
    callback (not a timer thread), so it never races the engine for its own stats."""

    def __init__(self, console: Console, enabled: bool = True) -> None:
        self.console = console
        self.enabled = enabled and console.is_terminal
        self.phase_name = ""
        self.live: Live | None = None

    def __enter__(self) -> LiveView:
        if self.enabled:
            self.live = Live(console=self.console, auto_refresh=False, transient=True)
            self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def phase(self, name: str) -> None:
        self.phase_name = name
        if self.live is None:
            self.console.print(f"[dim]{name}[/]", highlight=False)

    def update(self, p: Progress) -> None:
        if self.live is not None:
            self.live.update(self.render(p), refresh=True)

    def render(self, p: Progress):
        grid = Table.grid(padding=(0, 2))
        rate = lambda n: n / p.elapsed_s if p.elapsed_s > 0 else None
        eta = p.elapsed_s * (p.num_total - p.num_done) / p.num_done if p.num_done else None
        s = p.stats
        kv = s.get("kv_usage")
        grid.add_row("phase", self.phase_name)
        grid.add_row("requests", f"{p.num_done}/{p.num_total} done, {p.num_failed} failed")
        grid.add_row("tokens/s", f"{_fmt(rate(p.num_output_tokens))} output, "
                                 f"{_fmt(rate(p.num_total_tokens))} total")
        grid.add_row("engine", f"running {s.get('num_running', '-')}  waiting {s.get('num_waiting', '-')}  "
                               f"KV {_fmt(None if kv is None else 100 * kv, '.0f')}%  "
                               f"preemptions {s.get('num_preemptions', '-')}")
        step = s.get("step")
        if step:  # the engine's last step (its observer record): composition and host time
            grid.add_row("step", f"{step['num_tokens']} tokens ({step['num_decode']} decode)  "
                                 f"host {_fmt(step['host_ms'], '.2f')} ms  wait {_fmt(step['wait_ms'], '.2f')} ms")
        grid.add_row("time", f"{p.elapsed_s:.1f} s elapsed, ETA {_fmt(eta, '.0f')} s")
        bar = ProgressBar(total=max(p.num_total, 1), completed=p.num_done, width=50)
        return Group(bar, grid)


_ROWS = [
    ("Successful requests", "completed", ",d"), ("Failed requests", "failed", ",d"),
    ("Short outputs (flagged)", "num_short", ",d"), ("Benchmark duration (s)", "duration", ",.2f"),
    ("Total input tokens", "total_input_tokens", ",d"),
    ("Total generated tokens", "total_output_tokens", ",d"),
    ("Request throughput (req/s)", "request_throughput", ",.2f"),
    ("Request goodput (req/s)", "request_goodput", ",.2f"),
    ("Output token throughput (tok/s)", "output_throughput", ",.1f"),
    ("Total token throughput (tok/s)", "total_token_throughput", ",.1f"),
    ("Steady-state total (tok/s)", "steady_total_token_throughput", ",.1f"),
    ("Optimal total (tok/s)", "optimal_total_token_throughput", ",.1f"),
    ("Efficiency (of optimal)", "efficiency", ".2%"), ("Steady-state efficiency", "steady_efficiency", ".2%"),
    ("Power-aware bound (tok/s)", "bound_total_token_throughput", ",.1f"),
    ("Efficiency vs bound", "efficiency_vs_bound", ".2%"),
    ("Normalized latency (ms/token)", "normalized_latency_ms", ",.2f"),
]
_LATENCIES = [("TTFT", "ttft_ms"), ("TPOT", "tpot_ms"), ("ITL", "itl_ms"), ("E2E latency", "e2el_ms")]


def _dropped(workload: dict) -> str:
    from workloads import describe_dropped

    return describe_dropped({"unrunnable": {"dropped": workload.get("dropped") or {},
                                            "max_model_len": workload.get("max_model_len")}})


def preemptions(result: dict) -> int | None:
    """Requests the engine preempted (recompute) in the headline point's measured runs; None when the
    backend does not report them (an endpoint, the hf peer)."""
    point = next((p for p in result.get("points", []) if p.get("request_rate") == result.get("request_rate")),
                 None)
    counts = [r.get("backend", {}).get("num_preemptions") for r in (point or {}).get("runs", [])]
    counts = [c for c in counts if c is not None]
    return sum(counts) if counts else None


def summary_table(result: dict) -> Table:
    """The headline metrics of a result (mean +- 95% CI when it has repeats)."""
    m, ci = result.get("metrics") or {}, result.get("metrics_ci95") or {}
    eng = result.get("engine") or {}
    title = f"nanotune bench: {eng.get('engine')} / {eng.get('model')}"
    if result.get("partial"):
        title += "  [bold yellow](PARTIAL)[/]"
    t = Table(title=title, show_header=True, header_style="bold")
    t.add_column("metric")
    t.add_column("value", justify="right")
    no_bound = bool((result.get("bound") or {}).get("why")) and m.get("bound_total_token_throughput") is None
    for label, key, spec in _ROWS:
        if key not in m or (no_bound and key in ("bound_total_token_throughput", "efficiency_vs_bound")):
            continue  # (no bound: one row below says why, instead of two rows of "-")
        v = m[key]
        v = round(v) if spec.endswith("d") and v is not None else v
        cell = _fmt(v, spec)
        if ci.get(key) is not None:
            cell += f" ± {_fmt(ci[key], spec.replace('d', '.1f'))}"
        t.add_row(label, cell)
        if key == "failed" and result.get("workload"):  # requests that could not run: left out, not failed
            t.add_row("Dropped before the run", _dropped(result["workload"]))
    why = (result.get("bound") or {}).get("why")
    if why and m.get("bound_total_token_throughput") is None:
        t.add_row("Power-aware bound", f"none: {why}")
    if (n := preemptions(result)) is not None:
        t.add_row("Preemptions (KV cache full)", f"{n:,d}")
    for label, key in _LATENCIES:
        t.add_row(f"{label} mean / median / p99 (ms)",
                  " / ".join(_fmt(m.get(f"{s}_{key}"), ",.2f") for s in ("mean", "median", "p99")))
    return t


def sweep_table(result: dict) -> Table | None:
    """One row per swept rate, and which is the highest meeting the SLOs."""
    if not result.get("sweep"):
        return None
    best = result["sweep"].get("best_rate")
    t = Table(title="request-rate sweep", header_style="bold")
    for col in ("rate (req/s)", "req/s", "total tok/s", "p99 TTFT ms", "p99 TPOT ms", "SLO met"):
        t.add_column(col, justify="right")
    for p in result.get("points", []):
        m = p["metrics"]
        mark = " *" if best is not None and p["request_rate"] == best else ""
        t.add_row(f"{rate_text(p['request_rate'])}{mark}", _fmt(m.get("request_throughput"), ".2f"),
                  _fmt(m.get("total_token_throughput")), _fmt(m.get("p99_ttft_ms"), ",.1f"),
                  _fmt(m.get("p99_tpot_ms"), ",.1f"), _fmt(m.get("slo_attainment"), ".0%"))
    t.caption = (f"* highest rate with >= {result['sweep']['slo_attainment']:.0%} of requests within the SLOs"
                 if best is not None else "no rate met the SLOs" if result["sweep"]["slos"] else
                 "no --goodput SLOs given: no best rate")
    return t
