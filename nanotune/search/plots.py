"""Search plots (matplotlib, Agg: files only): Optuna's optimization history, parameter importances and
Pareto front, and the best plan's Gantt: one row per stream, ops coloured, predicted above measured."""

from __future__ import annotations

from pathlib import Path

from engine.plan import LAYER_OPS

GANTT_LAYERS = 2  # layers drawn: enough to see one layer's overlap and the hand-over to the next


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def op_colors() -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    colors = {op: cmap(i % 10) for i, op in enumerate(LAYER_OPS)}
    colors["all_reduce"] = (0.1, 0.1, 0.1, 1.0)  # tab10's grey is gate_up's
    return colors


def bars_from_prediction(prediction, max_layers: int = GANTT_LAYERS) -> list[tuple[int, float, float, str]]:
    """(stream, start_ms, end_ms, op) of the simulated timeline's first layers, zero-length ops left out."""
    return [(n.stream, n.start, n.end, n.op) for n in prediction.nodes
            if n.layer < max_layers and n.end > n.start]


def bars_from_timings(timings: list[dict], max_layers: int = GANTT_LAYERS) -> list[tuple[int, float, float, str]]:
    """The same from the engine's CUDA-event timings (engine.pipeline.OpTiming as dicts), origin at 0."""
    rows = [t for t in timings if t["layer"] < max_layers]
    t0 = min((t["start_ms"] for t in rows), default=0.0)
    return [(t["stream"], t["start_ms"] - t0, t["end_ms"] - t0, t["op"]) for t in rows]


def gantt(path: Path, panels: list[tuple[str, list]], title: str, stream_names: list[str] | None = None) -> Path:
    """One panel per (label, bars); shared time axis so predicted and measured line up."""
    plt = _plt()
    with plt.style.context("default"):  # Optuna's plots switch the global style to ggplot
        return _gantt(plt, path, panels, title, stream_names)


def _gantt(plt, path, panels, title, stream_names):
    colors = op_colors()
    streams = max((b[0] for _, bars in panels for b in bars), default=0) + 1
    names = (stream_names or []) + [f"stream {s}" for s in range(len(stream_names or []), streams)]
    fig, axes = plt.subplots(len(panels), 1, figsize=(12, 1.2 + 1.1 * streams * len(panels)), sharex=True,
                             squeeze=False)
    seen = set()
    for ax, (label, bars) in zip(axes[:, 0], panels, strict=True):
        for stream, start, end, op in bars:
            ax.broken_barh([(start, end - start)], (stream - 0.4, 0.8), facecolors=colors.get(op, "k"),
                           edgecolor="white", linewidth=0.3, label=None if op in seen else op)
            seen.add(op)
        ax.set_yticks(range(streams), names[:streams])
        ax.invert_yaxis()
        ax.set_title(label, fontsize=9, loc="left")
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel(f"ms from the iteration's start (first {GANTT_LAYERS} layers)")
    fig.suptitle(title, fontsize=10)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[op]) for op in colors if op in seen]
    fig.legend(handles, [op for op in colors if op in seen], loc="lower center", ncol=min(6, len(handles)),
               fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 0.97))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def study_plots(study, run_dir: Path, objective: str) -> tuple[dict[str, str], dict[str, str]]:
    """Optuna's matplotlib plots -> ({name: file}, {name: why skipped}). A plot that cannot be drawn (too
    few trials, no variance for importances) is skipped with its reason, never fatal."""
    import warnings

    import optuna.visualization.matplotlib as vis

    plt = _plt()
    throughput = ("total tokens/s", lambda t: t.values[0])
    plots = {"history": lambda: vis.plot_optimization_history(
                 study, target=throughput[1] if objective == "both" else None,
                 target_name=throughput[0] if objective != "latency" else "TPOT (ms)"),
             "importances": lambda: vis.plot_param_importances(
                 study, target=throughput[1] if objective == "both" else None,
                 target_name=throughput[0] if objective != "latency" else "TPOT (ms)")}
    if objective == "both":
        plots["pareto"] = lambda: vis.plot_pareto_front(study, target_names=["total tokens/s", "TPOT (ms)"])
    made, skipped = {}, {}
    for name, draw in plots.items():
        try:
            # Optuna switches the global style to ggplot: keep that inside, so later plots are unaffected
            with warnings.catch_warnings(), plt.style.context("default"):
                warnings.simplefilter("ignore")  # experimental-API and few-trials warnings: not the user's
                ax = draw()
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(8, 5)
            fig.tight_layout()
            path = run_dir / f"{name}.png"
            fig.savefig(path, dpi=110)
            made[name] = path.name
        except Exception as e:  # a plot is a by-product: note why it is missing, keep the result
            skipped[name] = f"{type(e).__name__}: {e}"[:200]
        finally:
            plt.close("all")
    return made, skipped
