"""`nanotune bench`: replay a trace through an engine, the Hugging Face peer or an OpenAI-compatible
server, and report throughput, latency and % of optimal. Thin over nanotune.bench.session.bench."""

from __future__ import annotations

import math

import click

from nanotune.cli import checks
from nanotune.cli.options import (
    MAX_LEN,
    MAX_SEQS,
    MAX_TP,
    SEED,
    FiniteFloat,
    allreduce_option,
    kv_cache_dtype_option,
    rate_type,
)
from nanotune.errors import UserError

CPU_DEFAULT_MODEL, GPU_DEFAULT_MODEL = "tiny-llama", "llama-3-8b"
CPU_DEFAULT_NUM_REQUESTS, DEFAULT_NUM_REQUESTS = 64, 1000
CPU_DEFAULT_CAPS = (256, 64)  # prompt, output: the first CPU run must finish in well under two minutes


def _rates(text: str | None) -> tuple[float, ...] | None:
    if not text:
        return None
    try:
        rates = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UserError(f"--sweep-rate '{text}': expected comma-separated rates, e.g. 1,2,4,8") from None
    if not rates or any(r <= 0 or math.isnan(r) for r in rates):
        raise UserError(f"--sweep-rate '{text}': rates must be positive")
    return tuple(sorted(rates))


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


@click.command(name="bench")
@click.option("--trace", default="sharegpt", show_default=True,
              help="sharegpt (vLLM's request set), lmsys, splitwise, constant[:IN:OUT], random[:IN:OUT[:RATIO]] "
                   "or a trace file.")
@click.option("-n", "--num-requests", type=click.IntRange(min=1),
              help="Requests to replay [default: 64 on CPU, 1000 on GPU; a file: all].")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--filter", "trace_filter", help="none | vllm | max-len:N [default: the dataset's; sharegpt: vllm].")
@click.option("--input-len", type=click.IntRange(1, MAX_LEN), help="constant/random datasets: prompt length.")
@click.option("--output-len", type=click.IntRange(1, MAX_LEN), help="constant/random datasets: output length.")
@click.option("--range-ratio", type=FiniteFloat(0, 1), help="random dataset: length range ratio.")
@click.option("--model", help="Model preset [default: tiny-llama on CPU, llama-3-8b on GPU]; "
                              "with --endpoint: the served model's name.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--dtype", help="auto | bfloat16 | float16 | float32")
@kv_cache_dtype_option("In-process engine: ")
@click.option("--decode-kernel", type=click.Choice(["auto", "split", "tma"]), default="auto", show_default=True,
              help="In-process engine: Triton decode attention (tma: tensor-descriptor loads, sm >= 90).")
@click.option("--engine", type=click.Choice(["nanoflow", "sequential", "hf"]), default="nanoflow",
              show_default=True, help="In-process engine; hf = transformers continuous batching.")
@click.option("--plan", metavar="FILE|NAME",
              help="Pipeline plan (nanoflow): a plan JSON, or the tuned.json `nanotune search` writes (it also "
                   "sets the dense batch, max seqs and model it was tuned for, unless given), or a name: sequential, "
                   "nb2, nb2-pf0-rev, nb2-sm66, nb2-cublas-sm44, nb2-green-sm44 "
                   "(nb<N>[-cublas|-green][-sm<S>][-pf0][-rev][-prio][-ar]).")
@click.option("--max-num-batched-tokens", type=click.IntRange(1, MAX_LEN), help="Dense-batch token budget [2048].")
@click.option("--max-num-seqs", type=click.IntRange(1, MAX_SEQS), help="Most requests running at once [512].")
@click.option("--tp", type=click.IntRange(1, MAX_TP), default=1, show_default=True,
              help="Tensor-parallel ranks of the in-process engine (one process per GPU; gloo on CPU).")
@allreduce_option()
@click.option("--endpoint", metavar="URL", help="OpenAI-compatible server instead of an in-process engine.")
@click.option("--mode", type=click.Choice(["offline", "online"]), default="offline", show_default=True,
              help="offline: all at t=0; online: the trace's timestamps or --request-rate.")
@click.option("--request-rate", type=rate_type(), help="Online: requests/s (inf = all at once).")
@click.option("--burstiness", type=FiniteFloat(min=0, min_open=True), default=1.0, show_default=True,
              help="Gamma shape of the arrival gaps (1 = Poisson, < 1 burstier).")
@click.option("--max-concurrency", type=click.IntRange(min=1), help="At most this many requests in flight.")
@click.option("--num-warmups", type=click.IntRange(min=0), default=4, show_default=True)
@click.option("--repeat", type=click.IntRange(min=1), default=1, show_default=True,
              help="Runs to average (mean and 95% CI).")
@click.option("--sweep-rate", metavar="R1,R2,...", help="Throughput-latency curve over these rates.")
@click.option("--goodput", multiple=True, metavar="NAME:MS",
              help="SLOs, e.g. --goodput 'ttft:200 tpot:50' (ttft, tpot, e2el in ms).")
@click.option("--slo-attainment", type=FiniteFloat(0, 1, min_open=True), default=0.9, show_default=True,
              help="Sweep: share of requests that must meet the SLOs.")
@click.option("--max-prompt-len", type=click.IntRange(0, MAX_LEN), help="Cap prompt lengths (0: none).")
@click.option("--max-output-len", type=click.IntRange(0, MAX_LEN), help="Cap output lengths (0: none).")
@click.option("--hf-attn", default="sdpa", show_default=True, help="--engine hf attention implementation.")
@click.option("--peak-tflops", type=FiniteFloat(min=0, min_open=True),
              help="Use this peak instead of measuring one (e.g. a remote endpoint's GPU).")
@click.option("--num-params", type=FiniteFloat(min=1), help="Endpoint: parameters per GPU.")
@click.option("--vocab-size", type=click.IntRange(min=2), help="Endpoint: random prompt ids below this.")
@click.option("--results-dir", type=click.Path(file_okay=False), envvar="NANOTUNE_RESULTS",
              help="Where run directories go [default: ./results; env NANOTUNE_RESULTS].")
@click.option("--num-kv-blocks", type=click.IntRange(1, 2**24), default=None,
              help="KV-cache blocks of the in-process engine [default: sized from free memory].")
@click.option("--kv-overcommit", type=FiniteFloat(min=0, min_open=True, max=64), default=None,
              help="Admit while predicted peak KV <= this x the cache (> 1: more load, may preempt) [1].")
@click.option("--threads", type=click.IntRange(1, 1024), default=None,
              help="torch CPU threads [default: torch's; 1 when the CPU is already loaded].")
@click.option("--no-progress", is_flag=True, help="No live view.")
@click.option("--profile", "bound_profile", type=click.Path(dir_okay=False),
              help="Profile with a power section for the power-aware bound [default: the committed reference "
                   "profile of --gpu or of this GPU, results/reference/<gpu>/].")
@click.option("--endpoint-type", type=click.Choice(["completions", "chat"]), default="completions",
              show_default=True, help="Endpoint: /v1/completions or /v1/chat/completions (chat needs --tokenizer).")
@click.option("--tokenizer", type=click.Path(file_okay=False, exists=True),
              help="Endpoint: local Hugging Face tokenizer folder; prompts are then sent as text.")
@click.option("--api-key", envvar="OPENAI_API_KEY", help="Endpoint: sent as 'Authorization: Bearer KEY' "
                                                         "[env OPENAI_API_KEY]; never written to results.")
@click.option("--request-timeout", type=FiniteFloat(min=0, min_open=True), default=600.0, show_default=True,
              help="Endpoint: seconds to wait for a connection or for the stream's next bytes before the "
                   "request fails.")
@click.option("--ignore-eos/--no-ignore-eos", default=True, show_default=True,
              help="Endpoint: send vLLM's ignore_eos and min_tokens so outputs have the trace's lengths; "
                   "--no-ignore-eos for servers that reject unknown fields (outputs ending early are flagged short).")
@click.option("--gpu", help="This GPU's committed reference profile (results/reference/GPU/, e.g. the "
                            "endpoint's h200): the peak for efficiency and the power-aware bound.")
@click.option("--vllm-json", type=click.Path(dir_okay=False), help="Also write the result as vLLM's "
                                                                  "`bench serve --save-result` JSON to this file.")
def command(**o):
    """Replay a trace and report throughput, latency and % of optimal (vLLM bench serve's metric names)."""
    from nanotune.bench.config import BenchConfig
    from nanotune.bench.metrics import parse_goodput
    from nanotune.bench.requests import LengthCaps
    from nanotune.bench.session import bench, is_trace_file
    from nanotune.bench.view import summary_table, sweep_table
    from nanotune.console import console, err_console

    checks.check_bench_conflicts(o)
    engine = "endpoint" if o["endpoint"] else o["engine"]
    device = o["device"]
    if device == "auto":
        device = "cuda" if engine != "endpoint" and _has_gpu() else "cpu"
    elif engine != "endpoint":
        device = checks.check_device(device)
    on_cpu = device == "cpu" and engine != "endpoint"
    if engine == "hf":
        checks.check_hf_attn(o["hf_attn"])
    model = o["model"]
    if model is None and engine == "nanoflow" and o["plan"]:  # a tuned config names the model it was tuned for
        from nanotune.bench.session import tuned_model

        model = tuned_model(o["plan"])
    if model is None and engine != "endpoint":
        model = CPU_DEFAULT_MODEL if on_cpu else GPU_DEFAULT_MODEL
    n = o["num_requests"]
    if n is None and not is_trace_file(o["trace"]):
        n = CPU_DEFAULT_NUM_REQUESTS if on_cpu else DEFAULT_NUM_REQUESTS
    caps = [o["max_prompt_len"], o["max_output_len"]]
    if on_cpu and not o["model"]:
        caps = [c if c is not None else d for c, d in zip(caps, CPU_DEFAULT_CAPS, strict=True)]
        err_console.print(f"[dim]no GPU: {model}, {n or 'all'} requests, lengths capped at {caps[0] or '-'} "
                          f"in / {caps[1] or '-'} out (--model, -n, --max-*-len change it)[/]")
    if engine == "nanoflow" and o["plan"]:  # a tuned config brings its KV dtype; a conflicting flag is refused
        o["kv_cache_dtype"] = _tuned_kv_dtype(o["plan"], o["kv_cache_dtype"])
    from nanotune.cli.preflight import prepare_bench

    prepare_bench(o, engine=engine, device=device, model=model, num_requests=n)
    try:
        cfg = BenchConfig(
            trace=o["trace"], num_requests=n, seed=o["seed"], mode=o["mode"], request_rate=o["request_rate"],
            burstiness=o["burstiness"], max_concurrency=o["max_concurrency"], num_warmups=o["num_warmups"],
            repeat=o["repeat"], sweep_rates=_rates(o["sweep_rate"]), slos=parse_goodput(o["goodput"]),
            slo_attainment=o["slo_attainment"], caps=LengthCaps(caps[0] or None, caps[1] or None),
            engine=engine, model=model, device=device, dtype=o["dtype"], plan=o["plan"],
            kv_cache_dtype=o["kv_cache_dtype"], decode_kernel=o["decode_kernel"],
            max_num_batched_tokens=o["max_num_batched_tokens"], max_num_seqs=o["max_num_seqs"],
            endpoint=o["endpoint"], hf_attn=o["hf_attn"], peak_tflops=o["peak_tflops"],
            vocab_size=o["vocab_size"], num_params=o["num_params"], profile=o["bound_profile"],
            endpoint_type=o["endpoint_type"], tokenizer=o["tokenizer"], request_timeout=o["request_timeout"],
            gpu=o["gpu"], api_key=o["api_key"] if o["endpoint"] else None, ignore_eos=o["ignore_eos"],
            tp=o["tp"], allreduce=o["allreduce"], num_kv_blocks=o["num_kv_blocks"], kv_overcommit=o["kv_overcommit"])
    except ValueError as e:
        raise UserError(str(e)) from None
    if cfg.sweep_rates and cfg.request_rate is not None:
        raise UserError("give either --request-rate or --sweep-rate, not both")

    trace_params = {k: o[k] for k in ("input_len", "output_len", "range_ratio") if o[k] is not None}
    if o["trace_filter"]:
        trace_params["filter"] = o["trace_filter"]
    result, run_dir = bench(cfg, results_dir=o["results_dir"], progress=not o["no_progress"],
                            trace_params=trace_params)
    from nanotune.signals import ignore_further

    ignore_further()  # written: late signals must not kill the process while it prints

    from workloads import summary_line

    console.print(summary_line(result["workload"]), highlight=False)
    console.print(summary_table(result))
    if (table := sweep_table(result)) is not None:
        console.print(table)
    if result["peak"]:
        console.print(f"[dim]peak: {result['peak']['label']} = {result['peak']['tflops']:,.3g} TFLOP/s[/]")
    if result.get("efficiency_note") and result["metrics"].get("efficiency") is None:
        console.print(f"[dim]{result['efficiency_note']}[/]", highlight=False)
    console.print(f"wrote {run_dir / 'result.json'} and {run_dir / 'requests.csv'}", highlight=False)
    if o["vllm_json"]:
        from nanotune.bench.vllm_format import write_vllm_json

        console.print(f"wrote {write_vllm_json(o['vllm_json'], result)} (vLLM's --save-result format)",
                      highlight=False)
    from nanotune.bench.failures import exit_status, reasons_line

    if result.get("failures"):
        err_console.print(f"[red]{reasons_line(result['failures'])}[/]", highlight=False, soft_wrap=True)
    if result["error"]:
        err_console.print(f"[bold red]run failed:[/] {result['error']}", highlight=False, soft_wrap=True)
    elif result["partial"]:
        err_console.print(f"[yellow]{result.get('signal', 'interrupted')}: the result is partial (marked so in "
                          "result.json)[/]")
    status = exit_status(result)
    if status == 1 and not result["error"]:
        err_console.print("[bold red]every request failed: nothing was measured[/]")
    if status:
        raise SystemExit(status)


def _tuned_kv_dtype(plan: str, requested: str) -> str:
    """--kv-cache-dtype for a --plan tuned config: its own unless the flag was typed; a typed one must agree."""
    from engine.tuned import kv_cache_dtype_with, tuned_file

    tuned = tuned_file(plan)
    if checks.given("kv_cache_dtype") and requested == "auto" and tuned is not None \
            and tuned.kv_cache_dtype not in (None, "auto"):
        raise UserError(f"--kv-cache-dtype auto conflicts with {plan}, tuned for kv_cache_dtype "
                        f"{tuned.kv_cache_dtype} (drop --kv-cache-dtype, or run a config tuned for auto)")
    return kv_cache_dtype_with(tuned, requested, "--kv-cache-dtype", plan)
