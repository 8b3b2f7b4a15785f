"""Checks that need more than one option, or the machine, made before anything heavy runs: the device
exists, flags that contradict each other, the hf attention name, a plan tuned for another model, the model
fitting in host memory. Each failure is one line (UserError, exit 2)."""

from __future__ import annotations

import click

from nanotune.errors import UserError

NO_GPU = "no CUDA GPU here"


def check_device(name: str, allow_cpu: bool = True) -> str:
    """'cpu', 'cuda' or 'cuda:N' checked against the GPUs of this machine."""
    if name == "cpu" and allow_cpu:
        return name
    if not name.startswith("cuda"):
        raise UserError(f"--device '{name}': expected {'cpu, ' if allow_cpu else ''}cuda or cuda:N")
    import torch

    try:
        index = torch.device(name).index
    except RuntimeError:
        raise UserError(f"--device '{name}': expected cuda or cuda:N") from None
    if not torch.cuda.is_available():
        raise UserError(f"--device {name}: {NO_GPU}" + (" (use --device cpu)" if allow_cpu else ""))
    if index is not None and index >= torch.cuda.device_count():
        raise UserError(f"--device '{name}': this machine has {torch.cuda.device_count()} CUDA device(s)")
    return name


def given(name: str) -> bool:
    """Was option `name` typed on the command line (or set by its env var), not left at its default?"""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return False
    src = ctx.get_parameter_source(name)
    return src is not None and src not in (click.core.ParameterSource.DEFAULT,
                                           click.core.ParameterSource.DEFAULT_MAP)


def _typed(name: str) -> bool:
    """Was option `name` typed on the command line (not its default, not its env var)?"""
    ctx = click.get_current_context(silent=True)
    return ctx is not None and ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE


def check_bench_conflicts(o: dict) -> None:
    """Flags that contradict each other are refused instead of one silently winning."""
    if o["mode"] == "offline" and given("mode"):
        for opt in ("request_rate", "sweep_rate"):
            if o[opt] is not None:
                raise UserError(f"--mode offline sends everything at t=0; --{opt.replace('_', '-')} needs "
                                "--mode online (or drop --mode)")
    if o["endpoint"]:
        for opt in ("engine", "plan", "device", "num_kv_blocks", "kv_overcommit", "threads"):
            if o.get(opt) is not None and given(opt):
                raise UserError(f"--endpoint sends requests to a server; --{opt.replace('_', '-')} applies to an "
                                "in-process engine (drop one of them)")
    else:
        for opt in ("endpoint_type", "tokenizer", "request_timeout", "ignore_eos"):
            if opt in o and given(opt):
                raise UserError(f"--{opt.replace('_', '-')} applies to --endpoint URL, not to an in-process engine")
        if o.get("api_key") and _typed("api_key"):  # OPENAI_API_KEY in the environment is no conflict
            raise UserError("--api-key applies to --endpoint URL, not to an in-process engine")
    if o["engine"] == "hf":
        for opt in ("plan", "num_kv_blocks", "kv_overcommit"):
            if o.get(opt) is not None and given(opt):
                raise UserError(f"--{opt.replace('_', '-')} applies to the nanotune engine, not --engine hf")


def check_hf_attn(name: str) -> None:
    """--hf-attn must name an attention implementation transformers has (optionally 'paged|<name>')."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    known = {"eager", *ALL_ATTENTION_FUNCTIONS.keys()}
    if name not in known and name.removeprefix("paged|") not in known:
        raise UserError(f"--hf-attn '{name}': not an attention implementation transformers knows "
                        f"({', '.join(sorted(known))})")


def plan_model_warning(plan_spec: str | None, model: str | None) -> str | None:
    """A file from `nanotune search` records the model it was tuned for (engine.tuned; older plan files:
    meta.model); running it for another model is allowed (a plan is valid for any model) but its tuned
    limits may not fit: say so."""
    if not plan_spec or not model:
        return None
    from engine.plan_library import resolve_plan
    from engine.presets import resolve_name
    from nanotune.bench.session import tuned_model

    meta = resolve_plan(plan_spec).meta or {}
    tuned = tuned_model(plan_spec) or meta.get("model")  # a tuned config's model, else an older plan's meta
    if not tuned:
        return None
    try:
        same = resolve_name(tuned) == resolve_name(model)
    except ValueError:
        same = tuned == model
    if same:
        return None
    tp = f" at TP {meta['tp_degree']}" if meta.get("tp_degree") else ""
    return (f"--plan {plan_spec} was tuned for {tuned}{tp}, not {model}: its dense batch and max seqs may not "
            "suit this model (give --max-num-batched-tokens / --max-num-seqs)")
