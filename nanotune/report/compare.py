"""`compare`: the entry point behind `nanotune compare` and `nanotune report`. Loads bench results, builds
the side-by-side table (pandas; written as compare.csv) and the plots."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nanotune.report.anchors import anchor_rows
from nanotune.report.bound_plot import optimal_bound_achieved
from nanotune.report.plots import efficiency_bars, latency_cdfs, sweep_curves, throughput_bars
from nanotune.report.table import load_rows, to_frame
from nanotune.results.rates import rate_value
from nanotune.results.store import write_json_atomic


@dataclass
class Comparison:
    frame: object  # pandas.DataFrame, one row per result (and anchor)
    out_dir: Path
    files: list[Path] = field(default_factory=list)


def _requests_frame(run_dir: Path):
    import pandas as pd

    csv = run_dir / "requests.csv"
    if not csv.exists():
        return None
    df = pd.read_csv(csv)
    return df if "status" in df else None


def _headline_requests(result: dict, df):
    """The requests behind the headline metrics: for a sweep, those of the headline rate."""
    rate = rate_value(result.get("request_rate"))
    if df is None or rate is None or "request_rate" not in df:
        return df
    return df[df["request_rate"].map(rate_value) == rate]


def compare(paths: list[str | Path], out_dir: Path, anchors: bool = False, skip_bad: bool = False,
            on_skip=None) -> Comparison:
    """`skip_bad` (report over a folder): a result that cannot be read is left out with a line through
    `on_skip`, instead of failing the whole report."""
    rows, loaded = load_rows(paths, on_skip if skip_bad else None)
    if anchors:
        rows += anchor_rows()
    df = to_frame(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    csv = out_dir / "compare.csv"
    df.to_csv(csv, index=False)
    files.append(csv)
    files.append(write_json_atomic(out_dir / "result.json", {
        "schema": "nanotune.compare/1", "kind": "compare", "run_id": out_dir.name,
        "inputs": [str(p) for p in paths], "anchors": anchors, "rows": df.to_dict(orient="records")}))
    labels = [f"{r['engine']} {r['model']} ({r['run']})" for r in rows if not r.get("is_anchor")]
    cdf_runs = [(lab, _headline_requests(res, _requests_frame(d))) for lab, (res, d) in
                zip(labels, loaded, strict=True)]
    for p in (throughput_bars(rows, out_dir / "throughput.png"),
              efficiency_bars(rows, out_dir / "efficiency.png"),
              optimal_bound_achieved(rows, out_dir / "bound.png"),
              latency_cdfs(cdf_runs, out_dir / "latency_cdf.png"),
              sweep_curves([(lab, res) for lab, (res, _) in zip(labels, loaded, strict=True)],
                           out_dir / "sweep.png")):
        if p is not None:
            files.append(p)
    return Comparison(frame=df, out_dir=out_dir, files=files)


def compare_and_show(paths: list[str | Path], out_dir: Path, anchors: bool, title: str,
                     console, skip_bad: bool = False) -> Comparison:
    """What both CLI commands do: compare, print the table, the run behind each column, the files written."""
    from nanotune.report.table import hardware_note, rich_table, run_legend

    skip = lambda path, why: console.print(f"[yellow]skipped {path}: {why}[/]", highlight=False, soft_wrap=True)
    comparison = compare(paths, out_dir, anchors=anchors, skip_bad=skip_bad, on_skip=skip)
    console.print(rich_table(comparison.frame, title=title))
    for line in run_legend(comparison.frame):
        console.print(line, highlight=False, soft_wrap=True)  # run ids whole, one per line
    if (note := hardware_note(comparison.frame)) is not None:
        console.print(f"[dim]{note}[/]", highlight=False, soft_wrap=True)
    for f in comparison.files:
        console.print(f"wrote {f}", highlight=False)
    return comparison
