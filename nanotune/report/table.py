"""Results -> one pandas row each -> a rich table. The DataFrame is what compare.csv holds."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

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
    ("vs_first", "vs first", ".2f"), ("mean_ttft_ms", "TTFT ms", ",.1f"), ("p99_ttft_ms", "p99 TTFT", ",.1f"),
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
    mode = cfg.get("mode", "offline") if rate is None else f"{rate:g} req/s"
    gpu = env.get("gpu") or (f"CPU: {env.get('cpu')}" if env.get("cpu") else None)
    row = {"run": result.get("run_id") or run_dir.name, "engine": eng.get("engine"),
           "model": eng.get("model"), "gpu": gpu,
           "trace": cfg.get("trace") or trace.get("name"), "mode": mode,
           "partial": bool(result.get("partial")), "is_anchor": False, "run_dir": str(run_dir)}
    for col, _, _ in COLUMNS:
        if col not in row and col in m:
            row[col] = m[col]
    return row


def load_rows(paths: list[str | Path]) -> tuple[list[dict], list[tuple[dict, Path]]]:
    rows, loaded = [], []
    for p in paths:
        result, run_dir = load_result(p)
        rows.append(result_row(result, run_dir, p))
        loaded.append((result, run_dir))
    return rows, loaded


def to_frame(rows: list[dict]):
    """DataFrame with `vs_first`: total tokens/s over the first local run's (the baseline; ratios from one
    machine are what mean something across setups)."""
    import pandas as pd

    df = pd.DataFrame(rows)
    local = df[~df["is_anchor"]] if "is_anchor" in df else df
    if len(local) and "total_token_throughput" in df:
        base = local["total_token_throughput"].iloc[0]
        df["vs_first"] = [None if a or not base or v is None or pd.isna(v) else v / base
                          for a, v in zip(df["is_anchor"], df["total_token_throughput"], strict=True)]
    return df


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
    for row in records:
        head = f"{row.get('engine')}\n{row.get('model')}"
        if row.get("partial"):
            head += "\n(partial)"
        t.add_column(head, justify="right", style="italic dim" if row.get("is_anchor") else None)
    for col, header, spec in COLUMNS:
        if col in ("engine", "model") or col not in df.columns:
            continue
        t.add_row(header, *[_cell(row.get(col), spec) for row in records])
    if "is_anchor" in df and df["is_anchor"].any():
        t.caption = "italic: published figures on other hardware; compare them by % optimal only"
    return t
