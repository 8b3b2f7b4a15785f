"""Comparison plots (matplotlib, Agg: files only, no display needed). Each function writes one PNG and
returns its path, or None when the results hold nothing for that plot."""

from __future__ import annotations

import math
from pathlib import Path

from nanotune.results.rates import rate_value


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if f != f else f


def _label(r: dict) -> str:
    """engine / model, the trace it ran and the hardware: a bar says what it measured."""
    head = r.get("run") if r.get("is_anchor") else f"{r.get('engine')}\n{r.get('model')}\n{r.get('trace') or ''}"
    return f"{head}\n{r.get('gpu') or ''}"[:80]


def throughput_bars(rows: list[dict], path: Path) -> Path | None:
    """Total tokens/s per local run, each bar with its own optimum (a tick line: optima differ by GPU) and
    its % of optimal written above."""
    local = [r for r in rows if not r.get("is_anchor") and _num(r.get("total_token_throughput")) is not None]
    if not local:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(local) + 2), 4.5))
    xs = range(len(local))
    vals = [_num(r["total_token_throughput"]) for r in local]
    ax.bar(xs, vals, color="tab:blue", label="total tokens/s")
    for x, r, v in zip(xs, local, vals, strict=True):
        opt = _num(r.get("optimal_total_token_throughput"))
        if opt:
            ax.hlines(opt, x - 0.4, x + 0.4, colors="tab:red", linestyles="--",
                      label="optimal (NanoFlow Eq. 5)" if x == 0 else None)
            ax.annotate(f"{v / opt:.1%}", (x, v), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(xs), [_label(r) for r in local], fontsize=7)
    optima = [_num(r.get("optimal_total_token_throughput")) or 0.0 for r in local]
    ax.set_ylim(0, 1.2 * max(vals + optima))  # headroom: the legend must not hide an optimum line
    ax.set_ylabel("total tokens/s (prompt + output)")
    ax.set_title("throughput vs the optimum")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def efficiency_title(rows: list[dict]) -> str:
    """The hatching is explained only where hatched (published, --anchors) bars are drawn."""
    if any(r.get("is_anchor") for r in rows):
        return "efficiency (hatched: published, other hardware)"
    return "efficiency"


def efficiency_bars(rows: list[dict], path: Path) -> Path | None:
    """% of optimal for local runs and published anchors (hatched: other hardware)."""
    have = [r for r in rows if _num(r.get("efficiency")) is not None]
    if not have:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(have) + 2), 4.5))
    for x, r in enumerate(have):
        anchor = bool(r.get("is_anchor"))
        ax.bar(x, 100 * _num(r["efficiency"]), color="lightgray" if anchor else "tab:green",
               hatch="//" if anchor else None, edgecolor="gray")
        ax.annotate(f"{_num(r['efficiency']):.1%}", (x, 100 * _num(r["efficiency"])), ha="center",
                    va="bottom", fontsize=8)
    ax.set_xticks(range(len(have)), [_label(r) for r in have], fontsize=7)
    ax.set_ylabel("% of optimal throughput")
    ax.set_title(efficiency_title(have))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def latency_cdfs(runs: list[tuple[str, object]], path: Path) -> Path | None:
    """CDFs of TTFT, TPOT and E2E latency per run, from each run's requests.csv (completed requests)."""
    import numpy as np

    runs = [(label, df[df["status"] == "ok"]) for label, df in runs if df is not None]
    runs = [(label, df) for label, df in runs if len(df)]
    if not runs:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, (col, name) in zip(axes, [("ttft_ms", "TTFT"), ("tpot_ms", "TPOT"), ("e2el_ms", "E2E latency")],
                               strict=True):
        for label, df in runs:
            v = np.sort(df[col].dropna().to_numpy())
            if len(v):
                ax.step(v, np.arange(1, len(v) + 1) / len(v), where="post", label=label)
        ax.set_xlabel(f"{name} (ms)")
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("latency CDFs")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def sweep_curves(sweeps: list[tuple[str, dict]], path: Path) -> Path | None:
    """Throughput and p99 TTFT against the offered request rate, per swept result; the best rate (highest
    meeting the SLOs) circled."""
    sweeps = [(label, r) for label, r in sweeps if r.get("sweep") and r.get("points")]
    if not sweeps:
        return None
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, r in sweeps:
        # inf (everything at once) has no place on a rate axis: it is drawn at twice the highest finite rate
        pts = [p for p in r["points"] if rate_value(p["request_rate"]) is not None]
        pts = sorted(pts, key=lambda p: rate_value(p["request_rate"]))
        finite = [rate_value(p["request_rate"]) for p in pts if math.isfinite(rate_value(p["request_rate"]))]
        rates = [v if math.isfinite(v) else 2 * max(finite, default=1.0)
                 for v in (rate_value(p["request_rate"]) for p in pts)]
        a1.plot(rates, [_num(p["metrics"].get("total_token_throughput")) for p in pts], "o-", label=label)
        a2.plot(rates, [_num(p["metrics"].get("p99_ttft_ms")) for p in pts], "o-", label=label)
        best = r["sweep"].get("best_rate")
        for x, p in zip(rates, pts, strict=True):
            if best is not None and p["request_rate"] == best:
                a1.plot([x], [_num(p["metrics"].get("total_token_throughput"))], "o", ms=14, mfc="none",
                        mec="tab:red")
    a1.set_xlabel("request rate (req/s)")
    a1.set_ylabel("total tokens/s")
    a2.set_xlabel("request rate (req/s)")
    a2.set_ylabel("p99 TTFT (ms)")
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("throughput-latency sweep (circled: highest rate meeting the SLOs)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
