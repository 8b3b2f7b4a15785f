"""Results -> one pandas row each -> a rich table. The DataFrame is what compare.csv holds."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from nanotune.results.rates import rate_text
from nanotune.results.store import load_result

COLUMNS = [
    # (column, header, format)
    ("run", "run", None), ("engine", "engine", None), ("model", "model", None), ("gpu", "hardware", None),
    ("trace", "trace", None), ("mode", "mode", None), ("completed", "ok", ",.0f"),
    ("failed", "failed", ",.0f"),
    ("total_token_throughput", "total tok/s", ",.1f"), ("output_throughput", "out tok/s", ",.1f"),
    ("steady_total_token_throughput", "steady tok/s", ",.1f"),
    ("optimal_total_token_throughput", "optimal tok/s", ",.0f"), ("efficiency", "% optimal", ".1%"),
    ("bound_total_token_throughput", "bound tok/s", ",.0f"), ("efficiency_vs_bound", "% bound", ".1%"),
    ("vs_first", "vs first (same hw)", ".2f"), ("mean_ttft_ms", "TTFT ms", ",.1f"), ("p99_ttft_ms", "p99 TTFT", ",.1f"),
    ("mean_tpot_ms", "TPOT ms", ",.2f"), ("p99_tpot_ms", "p99 TPOT", ",.2f"),
    ("normalized_latency_ms", "ms/token", ",.2f"),
]


class NotABenchResult(ValueError):
    pass


def result_row(result: dict, run_dir: Path, source: str | Path | None = None) -> dict:
    """The comparable figures of one bench result (`source`: the path the user gave, for messages)."""
    if result.get("kind") != "bench":
        raise NotABenchResult(f"{source or run_dir}: not a bench result (kind={result.get('kind')!r})")
    m = result.get("metrics") or {}
    eng, env, trace = result.get("engine") or {}, result.get("environment") or {}, result.get("trace") or {}
    cfg = result.get("config") or {}
    rate = result.get("request_rate")
    mode = cfg.get("mode", "offline") if rate is None else f"{rate_text(rate)} req/s"
    gpu = env.get("gpu") or (f"CPU: {env.get('cpu')}" if env.get("cpu") else None)
    row = {"run": result.get("run_id") or run_dir.name, "engine": eng.get("engine"),
           "model": eng.get("model"), "gpu": gpu,
           "trace": cfg.get("trace") or trace.get("name"), "mode": mode,
           "partial": bool(result.get("partial")), "is_anchor": False, "run_dir": str(run_dir)}
    for col, _, _ in COLUMNS:
        if col not in row and col in m:
            row[col] = m[col]
    return row


def load_rows(paths: list[str | Path], on_skip=None) -> tuple[list[dict], list[tuple[dict, Path]]]:
    """One row per result. With `on_skip(path, why)`, a result that cannot be read or tabled is skipped
    (reported through it) instead of raising."""
    rows, loaded = [], []
    for p in paths:
        try:
            result, run_dir = load_result(p)
            row = result_row(result, run_dir, p)
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
            if on_skip is None:
                raise
            on_skip(p, str(e) or type(e).__name__)
            continue
        rows.append(row)
        loaded.append((result, run_dir))
    if not rows and on_skip is not None:
        raise ValueError("no readable bench result among the ones found")
    return rows, loaded


def to_frame(rows: list[dict]):
    """DataFrame with `vs_first`: total tokens/s over the first local run's (the baseline; ratios from one
    machine are what mean something across setups)."""
    import pandas as pd

    df = pd.DataFrame(rows)
    if "total_token_throughput" in df:
        # the baseline of each run is the first local run on the same hardware: a ratio across machines (an
        # H200 run over a CPU run) means nothing, so runs on other hardware get their own first
        base: dict = {}
        ratios = []
        for a, hw, v in zip(df["is_anchor"], df.get("gpu", [None] * len(df)), df["total_token_throughput"],
                            strict=True):
            if a or v is None or pd.isna(v):
                ratios.append(None)
                continue
            b = base.setdefault(hw, v)
            ratios.append(v / b if b else None)
        df["vs_first"] = ratios
    return df


def run_legend(df) -> list[str]:
    """'#1  <run id>' for each column of the table: the table's headers are numbered so they are distinct
    and narrow, and run ids are printed whole here instead of cut to a column's width."""
    return [f"#{i}  {row.get('run')}" + ("  (published)" if row.get("is_anchor") else "")
            for i, (_, row) in enumerate(df.iterrows(), start=1)]


def hardware_note(df) -> str | None:
    """When results come from different hardware, say that ratios stay within each."""
    hw = [h for h, a in zip(df.get("gpu", []), df.get("is_anchor", []), strict=False) if not a and h]
    kinds = list(dict.fromkeys(hw))
    if len(kinds) < 2:
        return None
    return (f"{len(kinds)} kinds of hardware ({'; '.join(map(str, kinds))}): 'vs first' compares each run with "
            "the first run on the same hardware, never across them")


def _cell(v, spec) -> str:
    import pandas as pd

    if v is None or (not isinstance(v, str) and pd.isna(v)):
        return "-"
    return format(v, spec) if spec else str(v)


def rich_table(df, title: str = "nanotune compare") -> Table:
    """Side by side: one column per result (anchors in italics), one row per figure."""
    t = Table(title=title, header_style="bold")
    t.add_column("")
    records = [row for _, row in df.iterrows()]
    for i, row in enumerate(records, start=1):
        head = f"#{i} {row.get('engine')}\n{row.get('model')}"
        if row.get("partial"):
            head += "\n(partial)"
        t.add_column(head, justify="right", style="italic dim" if row.get("is_anchor") else None)
    for col, header, spec in COLUMNS:
        if col in ("run", "engine", "model") or col not in df.columns:  # run ids: listed below the table
            continue
        t.add_row(header, *[_cell(row.get(col), spec) for row in records])
    if "is_anchor" in df and df["is_anchor"].any():
        t.caption = "italic: published figures on other hardware; compare them by % optimal only"
    return t
