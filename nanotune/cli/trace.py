"""`nanotune trace`: make, convert and summarize workload traces (a thin layer over `workloads`).

One source, then optional steps, then one or more outputs:

    source    --dataset NAME (synthetic: sharegpt, lmsys, splitwise, constant[:IN:OUT], random[:IN:OUT[:RATIO]])
              | --from FILE  | --stats FILE   (any format `workloads.readers` reads)
              parsed by `workloads.spec`, the parser bench and search use
    steps     --filter F (default: the dataset's, workloads.spec.DEFAULT_FILTERS), -n N (first N after the
              filter), arrivals (--rate/--burstiness, --time-scale, --offline)
    outputs   -o FILE (our JSONL), --stats (table, or --json), --plot PNG

    nanotune trace --dataset sharegpt -n 10000 --seed 1 --stats               # vLLM's request set
    nanotune trace --dataset sharegpt --filter none -n 10000 --seed 1 --stats # the calibrated raw lengths
    nanotune trace --dataset splitwise -n 2000 --rate measured -o splitwise.jsonl
    nanotune trace --from ShareGPT_V3.json --tokenizer ./llama3 --filter vllm -n 1000 -o sharegpt.jsonl
    nanotune trace --stats azure_conv.csv --reference sharegpt --json
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from nanotune.cli.options import MAX_LEN, SEED, TYPICAL_PROMPT_LEN, FiniteFloat, check_requests_fit
from nanotune.console import console, err_console
from nanotune.errors import UserError
from workloads.spec import DEFAULT_NUM_REQUESTS

STATS_OF_RESULT = "\0"  # --stats given without a FILE: summarize the trace this command makes
REFERENCE_DRAWS = 100_000
"""Draws standing for a dataset named as --reference (stratified, so they trace its calibrated curve)."""


@click.command(name="trace")
@click.option(
    "-d",
    "--dataset",
    metavar="NAME",
    help="Synthetic dataset: sharegpt, lmsys, splitwise, constant[:IN:OUT], random[:IN:OUT[:RATIO]].",
)
@click.option(
    "--from", "source", metavar="FILE", help="Read a real trace file (converted to our JSONL with -o)."
)
@click.option(
    "--stats",
    is_flag=False,
    flag_value=STATS_OF_RESULT,
    default=None,
    metavar="[FILE]",
    help="Print statistics: of FILE, or (no FILE) of the trace made from --dataset/--from.",
)
@click.option(
    "-n",
    "--num-requests",
    type=click.IntRange(min=0),
    help=f"Requests to generate (default {DEFAULT_NUM_REQUESTS}) or to keep from a file (default all).",
)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of lengths and arrivals.")
@click.option(
    "--filter",
    "filter_spec",
    metavar="F",
    help="none | vllm (vLLM's ShareGPT rule) | max-len:N (truncate prompts to fit N) [default: the dataset's: "
    "vllm for sharegpt and lmsys (datasets and dumps), max-len:4096 for splitwise, else none].",
)
@click.option(
    "--rate",
    metavar="R",
    help="Arrivals per second (Poisson, gamma with --burstiness); 'measured' "
    "uses the source's real rate and CV; 'inf' means offline.",
)
@click.option("--burstiness", type=FiniteFloat(min=0, min_open=True),
              help="Gamma shape of inter-arrival gaps: 1 Poisson, <1 burstier.")
@click.option("--time-scale", type=FiniteFloat(min=0, min_open=True),
              help="Replay the file's timestamps multiplied by this factor.")
@click.option("--offline", is_flag=True, help="All requests at t=0, even if the file has timestamps.")
@click.option(
    "--input-len", type=click.IntRange(1, MAX_LEN), help="constant/random: prompt length (default 1024)."
)
@click.option(
    "--output-len", type=click.IntRange(1, MAX_LEN), help="constant/random: output length (default 512)."
)
@click.option("--range-ratio", type=FiniteFloat(0, 1), help="random: spread of lengths, see --range-style (default 0).")
@click.option(
    "--range-style",
    type=click.Choice(["vllm", "sglang"]),
    help="random: vllm = uniform in [L(1-r), L(1+r)] (default); sglang = uniform in [L*r, L].",
)
@click.option(
    "--format",
    "fmt",
    default="auto",
    show_default=True,
    help="Input format: auto, jsonl, sharegpt, lmsys, azure (splitwise), burstgpt, mooncake.",
)
@click.option(
    "--tokenizer",
    metavar="PATH",
    help="Local Hugging Face tokenizer folder for text formats (default: ~4 characters per token).",
)
@click.option(
    "--reference", metavar="FILE|NAME", help="With --stats: compare with this file or dataset (KS)."
)
@click.option("--json", "as_json", is_flag=True, help="With --stats: print JSON instead of a table.")
@click.option(
    "--plot", type=click.Path(dir_okay=False), metavar="PNG", help="Write a histogram of the lengths."
)
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), metavar="FILE", help="Write the trace (JSONL)."
)
def command(
    dataset,
    source,
    stats,
    num_requests,
    seed,
    filter_spec,
    rate,
    burstiness,
    time_scale,
    offline,
    input_len,
    output_len,
    range_ratio,
    range_style,
    fmt,
    tokenizer,
    reference,
    as_json,
    plot,
    output,
):
    """Make a workload trace, convert a real one, or print a trace's statistics."""
    import workloads

    stats_file = stats if stats not in (None, STATS_OF_RESULT) else None
    given = [
        name
        for name, value in (("--dataset", dataset), ("--from", source), ("--stats FILE", stats_file))
        if value is not None
    ]
    if len(given) != 1:
        raise UserError(
            "give exactly one source: --dataset NAME, --from FILE or --stats FILE"
            + (f" (got {', '.join(given)})" if given else "")
        )
    if stats is None and output is None and plot is None:
        raise UserError(
            "nothing to do: add -o FILE to write the trace, --stats to print its statistics, or --plot"
        )
    for flag, value in (("--reference", reference), ("--json", as_json or None)):
        if value is not None and stats is None:
            raise UserError(f"{flag} goes with --stats")
    gen_params = dict(
        input_len=input_len, output_len=output_len, range_ratio=range_ratio, range_style=range_style
    )
    gen_params = {k: v for k, v in gen_params.items() if v is not None}

    if dataset is not None:
        if tokenizer is not None:
            raise UserError("--tokenizer applies to files with text, not to --dataset")
        spec = workloads.parse_workload(dataset, num_requests, seed, filter_spec, is_file=False, **gen_params)
        check_requests_fit(DEFAULT_NUM_REQUESTS if num_requests is None else num_requests,
                           input_len or TYPICAL_PROMPT_LEN)  # before generating, not after the memory ran out
        trace = spec.load()
        measured = workloads.measured_arrivals(spec.source)
    else:
        if gen_params:
            raise UserError(
                f"{', '.join('--' + k.replace('_', '-') for k in gen_params)} apply to --dataset only"
            )
        path = stats_file or source
        spec = workloads.parse_workload(path, num_requests, seed, filter_spec, fmt, tokenizer, is_file=True)
        trace = spec.load()
        rate_, cv = workloads.arrival_stats(trace.arrivals)
        measured = {"rate": rate_, "cv": cv} if rate_ and cv else None
    trace = workloads.resolve_arrivals(
        trace,
        rate=rate,
        burstiness=burstiness,
        time_scale=time_scale,
        offline=offline,
        seed=seed,
        measured=measured,
    )

    out = err_console if as_json else console  # keep stdout pure JSON under --json
    if output is not None:
        workloads.save_jsonl(trace, output)
        out.print(f"wrote {len(trace):,} requests to {output}", highlight=False)
    ref_trace, ref_label = _reference(reference, tokenizer) if reference is not None else (None, None)
    if stats is not None:
        result = workloads.trace_stats(trace, ref_trace)
        if as_json:
            console.print(json.dumps(result.as_dict()), markup=False, highlight=False, soft_wrap=True)
        elif ref_trace is not None:
            _print_stats(trace, result, workloads.trace_stats(ref_trace), ref_label)
        else:
            # The embedded figures are of the raw file: beside a filtered draw they would only show the filter.
            is_raw = (trace.meta.get("filter") or {}).get("spec", "none") == "none"
            embedded = _embedded_reference(spec.source) if dataset and is_raw else None
            _print_stats(trace, result, embedded, embedded and embedded["label"])
    if plot is not None:
        _plot(trace, ref_trace, plot, ref_label)
        out.print(f"wrote plot to {plot}", highlight=False)


def _reference(spec: str, tokenizer):
    """(trace, label) of a file in any format, else of a dataset name (REFERENCE_DRAWS draws, seed 0)."""
    import workloads

    if Path(spec).exists():
        trace = workloads.parse_workload(spec, tokenizer=tokenizer, is_file=True).load()
        return trace, f"{spec} (filter {trace.meta['filter']['spec']})"
    if spec in workloads.dataset_names():
        trace = workloads.parse_workload(spec, REFERENCE_DRAWS, seed=0, is_file=False).load()
        flt = trace.meta["filter"]["spec"]
        return trace, f"{spec} ({REFERENCE_DRAWS:,} draws, seed 0, filter {flt})"
    raise UserError(
        f"--reference {spec}: no such file, and not a dataset ({', '.join(workloads.dataset_names())})"
    )


def _embedded_reference(dataset: str) -> dict | None:
    """The real file's figures shipped with a calibrated dataset, so its --stats shows how close it is."""
    from workloads.calibration import calibrated_names, dataset_entry

    if dataset not in calibrated_names():
        return None
    entry = dataset_entry(dataset)
    label = f"{entry['source']['file']} (figures embedded by scripts/calibrate_traces.py)"
    return {**entry["reference"], "label": label}


def _num(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3g}"


def _print_stats(trace, result, ref, ref_label):
    """Length statistics as a rich table (with the reference and the difference), then a summary."""
    from rich.table import Table

    def get(obj, side, key):
        part = obj.get(side) if isinstance(obj, dict) else getattr(obj, side)
        if part is None:
            return None
        return part.get(key) if isinstance(part, dict) else getattr(part, key)

    table = Table(title=f"{trace.meta.get('source', 'trace')}", title_justify="left")
    table.add_column("tokens")
    for side in ("prompt_len", "output_len"):
        table.add_column(side, justify="right")
        if ref is not None:
            table.add_column("reference", justify="right", style="dim")
            table.add_column("diff", justify="right")
    for key in ("mean", "p50", "p90", "p99", "max"):
        row = [key]
        for side in ("prompt_len", "output_len"):
            mine = get(result, side, key)
            row.append(_num(mine))
            if ref is not None:
                theirs = get(ref, side, key)
                row.append(_num(theirs))
                # A sample's max grows with its size, so its difference to the reference's says little.
                comparable = mine is not None and theirs and key != "max"
                row.append(f"{(mine - theirs) / theirs:+.1%}" if comparable else "")
        table.add_row(*row)
    console.print(table)
    flt = trace.meta.get("filter") or {"spec": "none"}
    lines = [
        f"count {result.count:,}",
        f"filter {flt.get('spec')} "
        f"(dropped {flt.get('dropped', 0):,}, truncated {flt.get('truncated', 0):,})",
        "arrivals offline"
        if result.rate is None
        else f"rate {result.rate:.3g} req/s, inter-arrival CV {_num(result.cv)}",
    ]
    for key, words in (("num_skipped", "conversations without a prompt and a reply skipped"),
                       ("num_failed", "failed requests (0 response tokens) dropped")):
        if trace.meta.get(key):
            lines.append(f"{words}: {trace.meta[key]:,}")
    if ref_label:
        lines.append(f"reference: {ref_label}")
    if result.ks is not None:
        lines.append(
            f"KS distance: prompt_len {result.ks['prompt_len']:.4f}, output_len {result.ks['output_len']:.4f}"
        )
    console.print("\n".join(lines), highlight=False)


def _plot(trace, ref_trace, path, ref_label):
    """Histograms of prompt and output lengths on log-spaced bins, the reference overlaid as a line.

    Bars are fractions of requests per bin, not densities: on log-spaced bins a density hides the tail.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    arrivals = np.asarray([float(r.arrival_s) for r in trace.requests])
    timed = bool(len(arrivals)) and bool(arrivals.max() > 0)
    fig, axes = plt.subplots(1, 3 if timed else 2, figsize=(15 if timed else 10, 3.8))
    if timed:  # --rate/--burstiness or a file's timestamps: requests per second over the trace
        _arrival_panel(axes[2], np.sort(arrivals), trace.meta.get("arrivals") or {})
    for ax, side in zip(axes[:2], ("prompt_lens", "output_lens"), strict=True):
        values = getattr(trace, side)
        ref = getattr(ref_trace, side) if ref_trace is not None else np.zeros(0)
        top = max(int(values.max()) if len(values) else 1, int(ref.max()) if len(ref) else 1, 2)
        bins = np.unique(np.geomspace(1, top + 1, 60).astype(int))
        weights = np.full(len(values), 1.0 / max(len(values), 1))
        ax.hist(values, bins=bins, weights=weights, alpha=0.6, label=f"trace ({len(values):,})")
        if len(ref):
            ref_weights = np.full(len(ref), 1.0 / len(ref))
            ax.hist(ref, bins=bins, weights=ref_weights, histtype="step", linewidth=1.5, label=ref_label)
        ax.set_xscale("log")
        ax.set_xlabel(side.replace("_lens", " length (tokens)"))
        ax.set_ylabel("fraction of requests")
        ax.legend(fontsize=8)
    fig.suptitle(plot_title(trace.meta), fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_title(meta: dict) -> str:
    """The trace's source, and its filter when one was applied. A generator's source names its calibration
    data "(unfiltered)": that describes the data, not this trace, so it is dropped from a filtered trace."""
    source = str(meta.get("source", "trace"))
    spec = (meta.get("filter") or {}).get("spec") if isinstance(meta.get("filter"), dict) else meta.get("filter")
    if not spec or spec == "none":
        return source
    f = meta["filter"] if isinstance(meta.get("filter"), dict) else {}
    dropped = f", {f['dropped']:,} dropped" if f.get("dropped") else ""
    return f"{source.replace(' (unfiltered)', '')}; filter {spec}{dropped}"


def _arrival_panel(ax, arrivals, info: dict) -> None:
    """Requests per second (1 s bins, or 50 bins over a long trace) against time."""
    import numpy as np

    span = float(arrivals[-1])
    width = max(1.0, span / 50)
    bins = np.arange(0.0, span + width, width)
    counts, edges = np.histogram(arrivals, bins=bins)
    ax.step(edges[:-1], counts / width, where="post")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("arrivals per second")
    rate, burst = info.get("rate"), info.get("burstiness")
    what = ", ".join(x for x in (f"rate {rate:g}/s" if isinstance(rate, (int, float)) else "",
                                 f"burstiness {burst:g}" if isinstance(burst, (int, float)) else "") if x)
    ax.set_title(f"arrivals ({what})" if what else "arrivals", fontsize=9)
