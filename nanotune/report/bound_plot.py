"""Optimal (NanoFlow Eq. 5), the power-aware bound and the achieved throughput side by side, per run: how
far a run is from the card's real ceiling and how far that ceiling is below Eq. 5's."""

from __future__ import annotations

from pathlib import Path

from nanotune.report.plots import _label, _num, _plt


def optimal_bound_achieved(rows: list[dict], path: Path, title: str | None = None) -> Path | None:
    """Three bars per local run (optimal, bound, achieved), achieved annotated with its share of each; None
    when no run has a bound."""
    runs = [r for r in rows if not r.get("is_anchor") and _num(r.get("total_token_throughput")) is not None
            and _num(r.get("bound_total_token_throughput")) is not None]
    if not runs:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(runs) + 2), 4.5))
    w = 0.27
    series = [("optimal_total_token_throughput", "optimal (Eq. 5)", "lightgray"),
              ("bound_total_token_throughput", "power-aware bound", "tab:orange"),
              ("total_token_throughput", "achieved", "tab:blue")]
    top = 0.0
    for j, (key, name, color) in enumerate(series):
        vals = [_num(r.get(key)) or 0.0 for r in runs]
        top = max([top, *vals])
        ax.bar([x + (j - 1) * w for x in range(len(runs))], vals, w, color=color, label=name, edgecolor="gray")
    for x, r in enumerate(runs):
        v, b, o = (_num(r.get(k)) for k in ("total_token_throughput", "bound_total_token_throughput",
                                             "optimal_total_token_throughput"))
        text = f"{v / b:.0%} of bound" + (f"\n{v / o:.0%} of Eq. 5" if o else "")
        ax.annotate(text, (x + w, v), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(runs)), [_label(r) for r in runs], fontsize=7)
    ax.set_ylim(0, 1.25 * top)
    ax.set_ylabel("total tokens/s (prompt + output)")
    ax.set_title(title or "achieved vs bound vs Eq. 5")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
