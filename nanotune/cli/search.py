"""`nanotune search`: tune the nano-batch pipeline with Optuna on the performance model, validate the best
plans on the engine when a GPU is here, and write the plan, the study and plots. Thin over
nanotune.search.run.search.

    nanotune search --model llama-3-8b --trace sharegpt --n-trials 200 --validate 3
    nanotune search --model llama-70b --tp 8 --gpu h100 --trace constant:1024:512
    nanotune search --profile my-profile.json --objective both --tpot-limit 40
    nanotune search --study NAME --resume --n-trials 100
"""

from __future__ import annotations

import click

from nanotune.cli.options import SEED, TYPICAL_PROMPT_LEN, FiniteFloat, check_requests_fit, kv_cache_dtype_option
from nanotune.errors import UserError


@click.command(name="search")
@click.option("--model", help="Model preset or short name (llama-70b -> llama-3-70b) [default: the profile's, "
                              "else llama-3-8b].")
@click.option("--tp", type=click.IntRange(min=1),
              help="Tensor-parallel degree [default: the profile's, else the smallest at which the weights and a "
                   "useful KV cache fit the GPU].")
@click.option("--gpu", metavar="NAME", help="Use the committed reference profile "
                                            "results/reference/NAME/profile-<model>-tp<N>.json (any machine).")
@click.option("--profile", "profile_path", type=click.Path(dir_okay=True), help="Use this profile file.")
@click.option("--trace", "--workload", "workload", default="sharegpt", show_default=True,
              help="sharegpt (vLLM's request set), lmsys, splitwise, constant:IN:OUT, random:IN:OUT[:RATIO], or a "
                   "trace file.")
@click.option("-n", "--num-requests", type=click.IntRange(min=1),
              help="Requests drawn for the workload's statistics [default: 2000; a file: all].")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seeds the sampler and the workload.")
@click.option("--filter", "trace_filter", metavar="F",
              help="none | vllm | max-len:N [default: the dataset's, as in bench and trace].")
@click.option("--objective", type=click.Choice(["throughput", "latency", "both"]), default="throughput",
              show_default=True, help="both: a Pareto front of throughput and TPOT (NSGA-II).")
@click.option("--tpot-limit", type=FiniteFloat(min=0, min_open=True), metavar="MS",
              help="Plans whose predicted TPOT exceeds this are infeasible.")
@click.option("--n-trials", type=click.IntRange(min=1), help="Trials to run [default: 100 unless --timeout].")
@click.option("--timeout", type=FiniteFloat(min=0, min_open=True), metavar="S", help="Stop after S seconds.")
@click.option("--study", "study_name", help="Study name [default: model, workload, objective and time].")
@click.option("--storage", metavar="URL", help="Optuna RDB URL [default: sqlite:///results/search/<study>.db].")
@click.option("--resume", is_flag=True, help="Continue the study named by --study.")
@click.option("--max-num-seqs", type=click.IntRange(min=1),
              help="Fix the engine's decode batch cap [default: searched over 128..1024].")
@click.option("--gpu-memory-fraction", type=FiniteFloat(0, 1, min_open=True), default=0.9, show_default=True)
@click.option("--gpu-memory-gib", type=FiniteFloat(min=0, min_open=True, max=2**20),
              help="Card memory, when the profile's GPU is not one nanotune knows.")
@click.option("--composition", type=click.Choice(["steady", "replay"]), default="steady", show_default=True,
              help="Batch composition: the workload's steady state, or the scheduler replayed over the trace.")
@click.option("--validate", "validate_k", type=click.IntRange(min=0), default=0, show_default=True, metavar="K",
              help="Run the best K plans and the hand-written ones (sequential, default, nb2) on the engine and "
                   "report predicted against measured (needs a GPU).")
@click.option("--validate-requests", type=click.IntRange(min=8), default=256, show_default=True,
              help="Requests of the workload each validated plan runs, offline.")
@click.option("--results-dir", type=click.Path(file_okay=False), envvar="NANOTUNE_RESULTS",
              help="Where run directories go [default: ./results; env NANOTUNE_RESULTS].")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@kv_cache_dtype_option("The cache the tuned config runs with (KV capacity, decode attention bytes); a --profile "
                       "must have measured it. ")
def command(**o):
    """Tune the nano-batch pipeline on a profile-driven performance model (Optuna)."""
    from nanotune.console import console, err_console
    from nanotune.search.run import SearchConfig, search

    check_requests_fit(o["num_requests"], TYPICAL_PROMPT_LEN)
    if o["resume"] and not o["study_name"]:
        raise UserError("--resume needs --study NAME (the study to continue)")
    from nanotune.search.guard import check_study_name

    check_study_name(o["study_name"])
    from nanotune.results.rundir import probe_root

    probe_root(o["results_dir"])  # an unwritable folder is found before the search, not after it
    _reference_without_gpu(o, lambda msg: err_console.print(msg, highlight=False, soft_wrap=True))
    cfg = SearchConfig(
        model=o["model"], tp=o["tp"], gpu=o["gpu"], profile=o["profile_path"], workload=o["workload"],
        num_requests=o["num_requests"], seed=o["seed"], filter=o["trace_filter"], objective=o["objective"],
        tpot_limit_ms=o["tpot_limit"],
        n_trials=o["n_trials"] or (None if o["timeout"] else 100), timeout_s=o["timeout"],
        study=o["study_name"], storage=o["storage"],
        resume=o["resume"], max_num_seqs=o["max_num_seqs"], gpu_memory_fraction=o["gpu_memory_fraction"],
        gpu_memory_gib=o["gpu_memory_gib"], composition=o["composition"], validate=o["validate_k"],
        validate_requests=o["validate_requests"], results_dir=o["results_dir"], progress=not o["no_progress"],
        kv_cache_dtype=o["kv_cache_dtype"])
    result, run_dir = search(cfg, log=lambda msg: err_console.print(f"[dim]{msg}[/]", highlight=False))
    from nanotune.signals import ignore_further

    ignore_further()  # written: late signals must not kill the process while it prints
    console.print(_table(result))
    v = result.get("validation") or {}
    if v.get("iteration_mape") is not None:
        console.print(f"model error (MAPE) on {len(v['plans'])} plans: iteration time {v['iteration_mape']:.1%}, "
                      f"throughput {v['throughput_mape']:.1%}", highlight=False)
    from nanotune.search.show import front_table, important_notes

    if (front := front_table(result)) is not None:
        console.print(front)
    console.print(result["kv_cache"]["note"], highlight=False, soft_wrap=True)
    for note in important_notes(result):
        console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    st = result["study"]
    console.print(f"study '{st['name']}': {st['num_trials']} trials ({st['num_pruned']} pruned) in {st['storage']}",
                  highlight=False, soft_wrap=True)
    console.print(f"continue it with: {result['resume_command']}", highlight=False, soft_wrap=True)
    console.print(f"wrote {run_dir / result['files']['plan']} (for bench --plan) and {run_dir / 'result.json'}",
                  highlight=False, soft_wrap=True)
    if result.get("partial"):
        err_console.print(f"[yellow]{result['signal']}: the search stopped early; the result holds the trials it "
                          "finished (marked partial)[/]", highlight=False)
        raise SystemExit(130 if result["signal"] == "SIGINT" else 143)


def _reference_without_gpu(o: dict, log) -> None:
    """No --gpu, no --profile and no GPU here: take the newest committed reference profile of the model that
    fits (at --tp when given) instead of stopping, and say so in one line."""
    if o["gpu"] or o["profile_path"]:
        return
    from nanotune.search.validate import gpu_available

    if gpu_available():
        return
    from nanotune.cli.checks import given
    from nanotune.search.reference import pick_reference
    from nanotune.search.resolve import resolve_model

    model, _ = resolve_model(o["model"] or "llama-3-8b")
    ref = pick_reference(model, o["tp"] if given("tp") else None, o["results_dir"])
    if ref is None:
        return  # find_profile's error lists the profiles there are
    o["gpu"], o["tp"], o["model"] = ref.gpu, ref.tp, model
    log(f"no GPU here: using the reference profile of {model} at TP {ref.tp} on {ref.gpu} ({ref.path}; "
        f"{ref.created[:10]}); --gpu/--tp/--profile choose another")


def _table(result: dict):
    from rich.table import Table

    v = {r["label"]: r for r in (result.get("validation") or {}).get("plans", [])}
    t = Table(title=f"{result['model']} TP {result['tp']} on {result['profile']['gpu']}, "
                    f"{result['workload']['label']} (predicted{', measured' if v else ''})")
    from nanotune.search.show import throughput_header

    t.add_column("plan", no_wrap=True)  # a plan name cut short names another plan
    for col in ("dense batch", "max seqs", "decode seqs", "TPOT ms", throughput_header(result["tp"])):
        t.add_column(col, justify="right")
    if v:
        t.add_column("measured tok/s", justify="right")
    seq = result["baselines"].get("sequential", {}).get("total_token_throughput")
    t.add_column("vs sequential", justify="right")
    rows = [("tuned", result["best"])] + [(k, b) for k, b in result["baselines"].items() if "infeasible" not in b]
    limit = result.get("tpot_limit_ms")
    captions = [f"* over the TPOT limit of {limit:g} ms"] if limit else []
    bound = result.get("bound") or {}
    if bound.get("bound_total_token_throughput"):
        b = bound["bound_total_token_throughput"]
        seq_b = bound["bound_sequential_total_token_throughput"]
        share = result["best"]["total_token_throughput"] / b
        captions.append(f"power-aware bound {b:,.0f} tok/s (sequential {seq_b:,.0f}); tuned predicted at "
                        f"{share:.0%} of it")
    elif bound.get("why"):
        captions.append(f"no power-aware bound: {bound['why']}")
    t.caption = "\n".join(captions) or None
    for label, r in rows:
        if limit and r["tpot_ms"] > limit:
            label += " *"
        cells = [label, str(r["dense_batch_tokens"]), str(r["max_num_seqs"]), f"{r['batch']['num_decode']:.0f}",
                 f"{r['tpot_ms']:.2f}",
                 f"{r['total_token_throughput']:,.0f}"]
        if v:
            m = v.get(label, {}).get("measured", {}).get("total_token_throughput")
            cells.append(f"{m:,.0f}" if m else "")
        cells.append(f"{r['total_token_throughput'] / seq:.2f}x" if seq else "")
        t.add_row(*cells)
    return t
