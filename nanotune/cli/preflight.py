"""What `nanotune bench` checks and sets on the machine before anything heavy starts: requests and model fit
in memory, a plan tuned for another model, torch's CPU threads. Lines go to stderr; refusals are UserErrors."""

from __future__ import annotations

from nanotune.cli import checks
from nanotune.cli.options import TYPICAL_PROMPT_LEN, check_model_fits, check_requests_fit, cpu_threads
from nanotune.errors import UserError

DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}


def dtype_bytes(dtype: str | None, device: str) -> int:
    if dtype in (None, "auto"):
        return 4 if device == "cpu" else 2  # the engine's auto: fp32 on CPU, bf16 on CUDA
    if dtype not in DTYPE_BYTES:
        raise UserError(f"--dtype '{dtype}': expected auto, bfloat16, float16 or float32")
    return DTYPE_BYTES[dtype]


MAX_ARRIVAL_SPAN_S = 24 * 3600  # arrivals spread over more than a day are a typo, not a benchmark


def check_arrival_span(num_requests: int | None, rates) -> None:
    """The slowest rate must bring every request in within a day (--request-rate 1e-3 with 1,000 requests
    would take 11 days)."""
    finite = [r for r in rates if r and r != float("inf")]
    if num_requests and finite and num_requests / min(finite) > MAX_ARRIVAL_SPAN_S:
        hours = num_requests / min(finite) / 3600
        raise UserError(f"{num_requests:,} requests at {min(finite):g} req/s arrive over {hours:,.0f} hours; "
                        "raise the rate or lower -n")


def prepare_bench(o: dict, engine: str, device: str, model: str | None, num_requests: int | None) -> None:
    from nanotune.console import err_console

    check_requests_fit(num_requests, o.get("input_len") or TYPICAL_PROMPT_LEN)
    sweep = [float(x) for x in (o.get("sweep_rate") or "").split(",") if _is_float(x)]
    check_arrival_span(num_requests, [o.get("request_rate"), *sweep])
    if engine == "endpoint":
        return
    from engine.engine import load_model_config
    from engine.errors import EngineConfigError

    try:
        model_cfg = load_model_config(model)  # a preset or a local checkpoint folder
    except EngineConfigError:
        if engine != "hf":  # an unknown name: one line, exit 2
            raise
        model_cfg = None  # transformers resolves names nanotune does not know (hub ids)
    if model_cfg is not None:
        check_model_fits(model_cfg, device, dtype_bytes(o.get("dtype"), device))
        if (note := checks.plan_model_warning(o.get("plan"), model_cfg.name)) is not None:
            err_console.print(f"[yellow]warning:[/] {note}", highlight=False, soft_wrap=True)
    if device == "cpu":
        import torch

        threads, note = cpu_threads(o.get("threads"))
        torch.set_num_threads(threads)
        if note:
            err_console.print(f"[dim]{note}[/]", highlight=False)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
