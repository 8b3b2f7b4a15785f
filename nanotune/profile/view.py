"""What a profile run shows: progress bars on stderr while it measures, and a short summary at the end."""

from __future__ import annotations

import statistics

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


class Steps:
    """One progress bar per section (ops alone, interference, ...), on stderr so stdout keeps the summary."""

    def __init__(self, console=None, enabled: bool = True):
        from nanotune.console import err_console

        self.console = console or err_console
        self.enabled = enabled
        self.progress: Progress | None = None
        self.task = None

    def __enter__(self) -> Steps:
        if self.enabled:
            self.progress = Progress(TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TextColumn("[dim]{task.fields[what]}"),
                                     console=self.console)
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    def start(self, name: str, total: int) -> None:
        if self.progress is not None:
            self.task = self.progress.add_task(name, total=total, what="")

    def advance(self, what: str = "") -> None:
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, advance=1, what=what)

    def done(self, name: str, message: str) -> None:
        if self.progress is not None:
            self.progress.console.print(f"[green]done[/] {name}: {message}", highlight=False)


def _closest(points: list[dict], key, target: float) -> dict | None:
    return min(points, key=lambda p: (abs(key(p) - target), key(p)), default=None)


def representative(op: str, points: list[dict]) -> dict | None:
    """The point a summary line shows: ~1024 tokens; decode 64 x 4096 on its full grid; prefill fresh 1024."""
    if op == "decode_attn":
        full = [p for p in points if p.get("sm_budget") is None]
        return _closest(full, lambda p: p["batch"] * p["context"], 64 * 4096)
    if op == "prefill_attn":
        least = min((p["context"] for p in points), default=0)
        return _closest([p for p in points if p["context"] == least], lambda p: p["tokens"], 1024)
    return _closest(points, lambda p: p["tokens"], 1024)


def _at(op: str, p: dict) -> str:
    if op == "decode_attn":
        return f"{p['batch']} x {p['context']} ctx"
    if op == "prefill_attn":
        return f"{p['tokens']} tok, ctx {p['context']}"
    return f"{p['tokens']} tok"


def summary_table(profile: dict) -> Table:
    peaks = profile.get("peaks") or {}
    t = Table(title=f"{profile['model']} tp {profile['tp']} on {profile['gpu']['name']}: "
                    f"peaks {peaks.get('bf16_tflops', 0):,.0f} TFLOP/s, {peaks.get('copy_gb_s', 0):,.0f} GB/s")
    for col in ("op", "kind", "points", "at", "ms", "TFLOP/s", "GB/s", "of peak"):
        t.add_column(col, justify="left" if col in ("op", "kind", "at") else "right")
    for op, entry in profile.get("ops", {}).items():
        p = representative(op, entry["points"])
        if p is None:
            t.add_row(op, entry["kind"], "0", "-", "-", "-", "-", "-")
            continue
        compute_bound = entry["kind"] == "gemm" or op == "prefill_attn"
        frac = None
        if peaks.get("bf16_tflops") and peaks.get("copy_gb_s"):
            frac = p["tflops"] / peaks["bf16_tflops"] if compute_bound else p["gb_s"] / peaks["copy_gb_s"]
        t.add_row(op, entry["kind"], str(len(entry["points"])), _at(op, p), f"{p['ms']:.4f}", f"{p['tflops']:,.1f}",
                  f"{p['gb_s']:,.0f}", "-" if frac is None else f"{frac:.0%}")
    return t


def summary_lines(profile: dict) -> list[str]:
    """Interference and micro-pair highlights, decode's SM scaling, throttling, errors, wall time."""
    lines = []
    if profile.get("kv_cache_dtype"):  # profiles before the field: not said (they were all "auto")
        lines.append(f"KV cache: {profile['kv_cache_dtype']} ({profile.get('kv_element_bytes', '?')} B per element); "
                     "attention and rope_kv ran over it")
    ar = (profile.get("collectives") or {}).get("all_reduce") or {}
    if ar.get("points"):
        sizes = ", ".join(f"{p['bytes'] / 2**20:g} MiB {p['ms']:.3f} ms ({p['bus_gb_s']:.0f} GB/s)"
                          for p in ar["points"])
        work = [p["overlap_work"] for p in ar["points"] if p.get("overlap_work")]
        lines.append(f"all-reduce over {ar['ranks']} ranks ({ar['impl']}, {ar['backend']}): {sizes}"
                     + (f"; beside a GEMM {min(work):.2f}-{max(work):.2f}x the work of back to back" if work else ""))
    dec = [r for r in profile.get("interference", []) if r["b"] == "decode_attn"]
    if dec:
        err = [r["error_vs_predicted"] for r in dec]
        gain = max((r.get("gain_vs_sequential") or 0) for r in dec)
        lines.append(f"GEMM x decode_attn ({len(dec)} pairs): together is {statistics.median(err):+.0%} vs the "
                     f"ideal-overlap prediction (median; range {min(err):+.0%} .. {max(err):+.0%}); "
                     f"best gain over sequential {gain:.2f}x")
    mp = profile.get("micro_pair")
    if mp and mp.get("best"):
        b = mp["best"]
        lines.append(f"micro pair (MLP {mp['mlp']['tokens']} tok {mp['mlp']['ms']:.3f} ms + decode "
                     f"{mp['attn']['kv_gib']:.2f} GiB KV {mp['attn']['ms']:.3f} ms): back to back "
                     f"{mp['back_to_back_ms']:.3f} ms, best two-stream {b['together_ms']:.3f} ms at sm_budget "
                     f"{b['sm_budget']} = {b['gain_vs_back_to_back']:.2f}x")
    for lp in (profile.get("launch") or {}).get("points", []):
        graph = "" if lp["graph_gap_ms"] is None else f", CUDA graph {1e3 * lp['graph_gap_ms']:+.1f} us"
        lines.append(f"launch gap per kernel (decode layer, batch {lp['batch']}): eager "
                     f"{1e3 * lp['eager_gap_ms']:+.1f} us{graph}")
    for sp in (profile.get("sustained") or {}).get("points", []):
        lines.append(f"sustained load ({sp['bound']}-bound layer): {sp['sustained_layer_ms']:.3f} ms per layer, "
                     f"{sp.get('vs_cold', sp.get('factor', 0)):.3f}x its cold replays")
    nv = profile.get("nvml", {})
    if not nv.get("available"):
        lines.append("NVML unavailable: throttling unknown")
    else:
        clk = nv.get("overall", {}).get("sm_clock_mhz", {})
        lines.append(f"throttled: {'YES' if profile.get('throttled') else 'no'}; SM clock {clk.get('min', '-')}"
                     f"-{clk.get('max', '-')} MHz; reasons {nv.get('overall', {}).get('reasons') or 'none'}")
    if profile.get("errors"):
        lines.append(f"{len(profile['errors'])} points failed (see errors in profile.json); first: "
                     f"{profile['errors'][0]['op']}: {profile['errors'][0]['error'][:120]}")
    lines.append(f"wall time {profile.get('wall_s', 0):.0f} s")
    return lines
