"""Plots of a profile (matplotlib, Agg: files only). Each function writes one PNG and returns its path, or
None when the profile holds nothing for it; write_plots() makes all of them."""

from __future__ import annotations

import math
from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def _title(profile: dict, what: str) -> str:
    return f"{profile['model']} tp {profile['tp']} on {profile['gpu']['name']}: {what}"


def decode_sm(profile: dict, path: Path) -> Path | None:
    """Decode attention time and GB/s against its SM budget, one line per (batch, context); the full grid
    (sm_budget null) is drawn just right of the SM count."""
    pts = profile["ops"].get("decode_attn", {}).get("points", [])
    if not pts:
        return None
    num_sms = profile["gpu"].get("num_sms") or max((p["sm_budget"] or 0) for p in pts) or 1
    full_x = num_sms * 1.15
    plt = _plt()
    fig, (ax_t, ax_b) = plt.subplots(1, 2, figsize=(12, 4.8))
    cases = sorted({(p["batch"], p["context"]) for p in pts})
    cmap = plt.get_cmap("viridis", max(2, len(cases)))
    for c, (batch, ctx) in enumerate(cases):
        row = sorted((p for p in pts if (p["batch"], p["context"]) == (batch, ctx)),
                     key=lambda p: p["sm_budget"] or full_x)
        xs = [p["sm_budget"] or full_x for p in row]
        ax_t.plot(xs, [p["ms"] for p in row], "o-", color=cmap(c), ms=3, label=f"{batch} x {ctx}")
        ax_b.plot(xs, [p["gb_s"] for p in row], "o-", color=cmap(c), ms=3)
    copy = profile.get("peaks", {}).get("copy_gb_s")
    if copy:
        ax_b.axhline(copy, color="tab:red", ls="--", label="copy bandwidth")
        ax_b.legend(fontsize=8)
    for ax, ylabel in ((ax_t, "ms"), (ax_b, "GB/s")):
        ax.axvline(num_sms, color="grey", lw=0.5)
        ax.set_xlabel(f"SM budget (max_programs; right of the line: full grid, {num_sms} SMs)")
        ax.set_ylabel(ylabel)
    ax_t.set_yscale("log")
    ax_t.legend(fontsize=6, ncol=2, title="batch x context", title_fontsize=7)
    fig.suptitle(_title(profile, "decode attention vs SM budget"), fontsize=10)
    return _save(fig, path)


def ops_tokens(profile: dict, path: Path) -> Path | None:
    """GEMM time and TFLOP/s, and memory-bound GB/s, against tokens."""
    ops = profile["ops"]
    gemms = [op for op, e in ops.items() if e["kind"] == "gemm" and e["points"]]
    mems = [op for op, e in ops.items() if e["kind"] == "memory" and e["points"]]
    if not gemms and not mems:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for op in gemms:
        pts = sorted(ops[op]["points"], key=lambda p: p["tokens"])
        axes[0].plot([p["tokens"] for p in pts], [p["ms"] for p in pts], "o-", ms=3, label=op)
        axes[1].plot([p["tokens"] for p in pts], [p["tflops"] for p in pts], "o-", ms=3, label=op)
    for op in mems:
        pts = sorted(ops[op]["points"], key=lambda p: p["tokens"])
        axes[2].plot([p["tokens"] for p in pts], [p["gb_s"] for p in pts], "o-", ms=3, label=op)
    peaks = profile.get("peaks", {})
    if peaks.get("bf16_tflops"):
        axes[1].axhline(peaks["bf16_tflops"], color="tab:red", ls="--", label="bf16 GEMM peak")
    if peaks.get("copy_gb_s"):
        axes[2].axhline(peaks["copy_gb_s"], color="tab:red", ls="--", label="copy bandwidth")
    for ax, ylabel, title in ((axes[0], "ms", "GEMM time"), (axes[1], "TFLOP/s", "GEMM throughput"),
                              (axes[2], "GB/s", "memory-bound ops")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        if ax.lines:
            ax.legend(fontsize=7)
    axes[0].set_yscale("log")
    fig.suptitle(_title(profile, "ops vs tokens (full GPU)"), fontsize=10)
    return _save(fig, path)


def _pair_labels(r: dict) -> tuple[str, str]:
    b = r["b_point"]
    if r["b"] == "decode_attn":
        desc = f"decode {b['batch']}x{b['context']}"
    elif r["b"] == "prefill_attn":
        desc = f"prefill {b['tokens']} ctx {b['context']}"
    else:
        desc = f"{r['b']} {b['tokens']}"
    budget = "full" if r["b_sm_budget"] is None else f"{r['b_sm_budget']} SMs"
    return f"{r['a']} {r['a_point']['tokens']}", f"{desc} @ {budget}"


def interference(profile: dict, path: Path) -> Path | None:
    """Heatmaps over (GEMM case) x (other op's case): the GEMM's slowdown, the other's, and together time
    over the ideal-overlap prediction."""
    recs = profile.get("interference", [])
    if not recs:
        return None
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm

    rows, cols = [], []
    for r in recs:
        a, b = _pair_labels(r)
        rows += [a] if a not in rows else []
        cols += [b] if b not in cols else []
    panels = [("slowdown_a", "GEMM slowdown (span / alone)"), ("slowdown_b", "other op's slowdown"),
              ("ratio", "together / predicted (max of alone)")]
    plt = _plt()
    fig, axes = plt.subplots(3, 1, figsize=(max(8, 0.45 * len(cols) + 4), 3 * (0.3 * len(rows) + 1.6)))
    for ax, (key, title) in zip(axes, panels, strict=True):
        m = np.full((len(rows), len(cols)), np.nan)
        for r in recs:
            a, b = _pair_labels(r)
            v = r["together_ms"] / r["predicted_ms"] if key == "ratio" else r[key]
            m[rows.index(a), cols.index(b)] = v
        # white at 1.0 (no interference), red slower, blue faster (noise, or a kernel that likes company)
        norm = TwoSlopeNorm(vmin=min(0.95, float(np.nanmin(m))), vcenter=1.0, vmax=max(1.05, float(np.nanmax(m))))
        im = ax.imshow(np.ma.masked_invalid(m), aspect="auto", cmap="RdBu_r", norm=norm)
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        ax.set_xticks(range(len(cols)), cols, fontsize=6, rotation=60, ha="right")
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.02)
        if m.size <= 400:
            for (i, j), v in np.ndenumerate(m):
                if not math.isnan(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=5)
    fig.suptitle(_title(profile, "interference (GEMM on stream 0, other op on stream 1)"), fontsize=10)
    return _save(fig, path)


def roofline(profile: dict, path: Path) -> Path | None:
    """Every point on a roofline of the measured peaks: achieved TFLOP/s against FLOPs per byte."""
    peaks = profile.get("peaks", {})
    pts = [(op, p) for op, e in profile["ops"].items() for p in e["points"] if p.get("bytes") and p.get("flops")]
    if not pts or not peaks.get("bf16_tflops") or not peaks.get("copy_gb_s"):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    intensity = [p["flops"] / p["bytes"] for _, p in pts]
    lo, hi = min(intensity) / 2, max(intensity) * 2
    ridge = peaks["bf16_tflops"] * 1e3 / peaks["copy_gb_s"]  # FLOPs per byte where the roofs meet
    xs = sorted({lo, hi, min(max(ridge, lo), hi)})
    ax.plot(xs, [min(peaks["bf16_tflops"], x * peaks["copy_gb_s"] / 1e3) for x in xs], "k-", lw=1.5,
            label=f"roof: {peaks['bf16_tflops']:.0f} TFLOP/s, {peaks['copy_gb_s']:.0f} GB/s")
    for op in profile["ops"]:
        mine = [p for o, p in pts if o == op]
        if mine:
            ax.scatter([p["flops"] / p["bytes"] for p in mine], [p["tflops"] for p in mine], s=10, label=op)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOPs / compulsory byte)")
    ax.set_ylabel("achieved TFLOP/s")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(_title(profile, "roofline of the measured peaks"), fontsize=10)
    return _save(fig, path)


def micro_pair(profile: dict, path: Path) -> Path | None:
    mp = profile.get("micro_pair")
    if not mp or not mp.get("two_stream"):
        return None
    plt = _plt()
    labels = ["back to back", "sum alone"] + [f"2 streams\n{'full' if r['sm_budget'] is None else r['sm_budget']}"
                                              for r in mp["two_stream"]]
    vals = [mp["back_to_back_ms"], mp["sum_alone_ms"]] + [r["together_ms"] for r in mp["two_stream"]]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(vals) + 2), 4.2))
    ax.bar(range(len(vals)), vals, color=["tab:grey", "tab:grey"] + ["tab:blue"] * len(mp["two_stream"]))
    for x, v in enumerate(vals):
        ax.annotate(f"{mp['back_to_back_ms'] / v:.2f}x", (x, v), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(vals)), labels, fontsize=7)
    ax.set_ylabel("ms")
    ax.set_title(_title(profile, f"MLP {mp['mlp']['tokens']} tok + decode {mp['attn']['kv_gib']:.2f} GiB KV "
                                 "(x = gain over back to back)"), fontsize=9)
    return _save(fig, path)


PLOTS = {"decode_sm.png": decode_sm, "ops_tokens.png": ops_tokens, "interference.png": interference,
         "roofline.png": roofline, "micro_pair.png": micro_pair}


def write_plots(profile: dict, out_dir: str | Path, prefix: str = "") -> list[Path]:
    out_dir = Path(out_dir)
    made = [fn(profile, out_dir / f"{prefix}{name}") for name, fn in PLOTS.items()]
    return [p for p in made if p is not None]
