"""`nanotune profile`: time every op of a model's layer on the local GPU (alone, over SM budgets, and in
pairs), with NVML; writes profile.json and plots. Thin over nanotune.profile.run.run_profile."""

from __future__ import annotations

from pathlib import Path

import click

from nanotune.cli.options import kv_cache_dtype_option
from nanotune.errors import UserError

NO_GPU = ("nanotune profile needs a CUDA GPU; none found (search can use a committed reference profile: "
          "results/reference/<gpu>/)")
CPU_MODELS = ("tiny-llama", "tiny-llama-micro")


def _device(name: str) -> str:
    """'cuda' / 'cuda:N' checked against the GPUs here; 'cpu' only as a code-path check on a tiny preset."""
    import torch

    if name == "cpu":
        return name
    if not name.startswith("cuda"):
        raise UserError(f"--device '{name}': expected cuda or cuda:N")
    if not torch.cuda.is_available():
        raise UserError(NO_GPU)
    try:
        index = torch.device(name).index
    except RuntimeError:
        raise UserError(f"--device '{name}': expected cuda or cuda:N") from None
    if index is not None and index >= torch.cuda.device_count():
        raise UserError(f"--device '{name}': this machine has {torch.cuda.device_count()} CUDA device(s)")
    return name


@click.command(name="profile")
@click.option("--model", default="llama-3-8b", show_default=True,
              help="Model preset (llama-3-8b, llama-2-70b, llama-70b, qwen2-72b, ...).")
@click.option("--tp", type=click.IntRange(min=1), default=1, show_default=True,
              help="Tensor-parallel degree: profile one GPU's shard (heads, KV heads, intermediate / TP).")
@click.option("--quick", is_flag=True, help="Few points (under 2 minutes on one GPU).")
@click.option("--device", default="cuda", show_default=True,
              help="cuda | cuda:N (cpu: a code-path check on a tiny preset; the times mean nothing).")
@click.option("--out", type=click.Path(), help="A directory to write into instead of a new run dir, or a .json "
                                               "file (plots beside it), e.g. results/reference/h100/"
                                               "profile-llama-3-8b-tp1.json where search looks.")
@click.option("--results-dir", type=click.Path(file_okay=False), envvar="NANOTUNE_RESULTS",
              help="Where run directories go [default: ./results; env NANOTUNE_RESULTS].")
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.option("--power-only", is_flag=True, help="Measure only the peaks and the power-aware limits (sustained "
                                                 "GEMM, HBM reads over SM budgets, the two together).")
@kv_cache_dtype_option("Attention ops (and rope_kv's store) run over this cache; recorded in the profile. ")
def command(model, tp, quick, device, out, results_dir, no_plots, no_progress, power_only, kv_cache_dtype):
    """Time each op of a layer over batch sizes and SM budgets, alone and in overlapping pairs."""
    from engine.presets import get_preset, resolve_name

    get_preset(model)  # an unknown name is a one-line error before anything heavy starts
    device = _device(device)
    if device == "cpu" and resolve_name(model) not in CPU_MODELS:
        raise UserError(f"--device cpu is a code-path check for the tiny presets ({', '.join(CPU_MODELS)}); "
                        f"'{model}' needs a GPU")
    from nanotune.console import console, err_console
    from nanotune.profile.run import ProfileOptions, run_profile
    from nanotune.profile.view import summary_lines, summary_table

    opts = ProfileOptions(model=model, tp=tp, quick=quick, device=device, out=out, results_dir=results_dir,
                          plots=not no_plots, progress=not no_progress,
                          sections=("power",) if power_only else None, kv_cache_dtype=kv_cache_dtype)
    profile, run_dir = run_profile(opts)
    file = Path(out) if out and out.endswith(".json") else run_dir / "profile.json"
    console.print(summary_table(profile))
    from nanotune.profile.power_view import power_table

    if (table := power_table(profile.get("power"), profile["gpu"]["name"])) is not None:
        console.print(table)
    for line in summary_lines(profile):
        console.print(line, highlight=False, soft_wrap=True)
    plots = f" and {len(profile['plots'])} plots" if profile.get("plots") else ""
    console.print(f"wrote {file}{plots}", highlight=False, soft_wrap=True)  # a path stays copyable
    failed = [e["op"] for e in profile["errors"] if e["op"].startswith("section:")]
    if failed:
        err_console.print(f"[bold red]failed:[/] {', '.join(failed)} (see errors in {file})", highlight=False,
                          soft_wrap=True)
        raise SystemExit(1)
    if profile["partial"]:  # interrupted
        raise SystemExit(130)
