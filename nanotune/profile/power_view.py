"""The power section as a rich table: each sustained rate with its power and SM clock, and the work a GEMM
and an HBM read did together as a fraction of their alone rates."""

from __future__ import annotations

from rich.table import Table


def _f(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def power_table(power: dict | None, gpu: str = "") -> Table | None:
    """None when the profile has no power section."""
    if not power:
        return None
    t = Table(title=f"power-aware limits{' on ' + gpu if gpu else ''} (each sustained {power['seconds']:g} s)",
              header_style="bold")
    for col in ("work", "programs", "rate", "power W", "SM MHz", "together: GEMM + read = sum"):
        t.add_column(col, justify="right" if col != "work" else "left")
    g = power.get("gemm") or {}
    if g:
        t.add_row(f"GEMM {g['op']} {g['tokens']}x{g['k']}x{g['n']}", "full", f"{g['tflops']:,.4g} TFLOP/s "
                  f"(cold {g['cold_tflops']:,.4g})", _f(g.get("power_w"), ",.0f"), _f(g.get("sm_clock_mhz"), ",.0f"),
                  "")
    together = {(x["read_kernel"], x["programs"]): x for x in power.get("together") or []}
    for r in power.get("read") or []:
        x = together.get((r["kernel"], r["programs"]))
        both = f"{x['gemm_fraction']:.2f} + {x['read_fraction']:.2f} = {x['sum']:.2f}" if x else ""
        t.add_row(f"HBM read {r['kernel']}", _f(r["programs"], "d") if r["programs"] else "full",
                  f"{r['gb_s'] / 1e3:,.4g} TB/s", _f(r.get("power_w"), ",.0f"), _f(r.get("sm_clock_mhz"), ",.0f"),
                  both)
    best = power.get("best_together")
    t.caption = (f"best together: {best:.2f}x the work of back to back" if best is not None
                 else power.get("why") or "together not measured")
    return t
