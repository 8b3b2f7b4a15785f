"""The one entry point behind `nanotune bench`: load the trace, measure the peak, build the backend, run,
write `results/<run-id>/`. The CLI only turns options into a BenchConfig and prints the tables."""

from __future__ import annotations

import shlex
import signal
import sys
from pathlib import Path

from nanotune.bench.backends.base import Backend
from nanotune.bench.bound import bound_setup
from nanotune.bench.config import BenchConfig
from nanotune.bench.output import write_bench_run
from nanotune.bench.requests import admit
from nanotune.bench.runner import run_bench
from nanotune.bench.view import LiveView
from nanotune.errors import UserError
from nanotune.results import environment
from nanotune.results.peak import PeakFlops, given_peak, peak_flops
from nanotune.results.rundir import discard_if_empty, open_run_dir
from nanotune.signals import StopSignals


def is_trace_file(spec: str) -> bool:
    from workloads import is_file_spec

    return is_file_spec(spec)


def load_trace(spec: str, num_requests: int | None, seed: int, filter: str | None = None,
               **params):
    """The workload `spec` names (workloads.spec: a dataset, constant:IN:OUT, random:IN:OUT[:RATIO] or a
    file) with -n, seed, filter (default: the dataset's) and generator params. Errors come as
    workloads.errors.TraceError (one line, exit 2)."""
    import workloads

    return workloads.parse_workload(spec, num_requests, seed, filter, **params).load()


def max_model_len_for(cfg: BenchConfig) -> int | None:
    """The context the engine serves this model with (engine.sizing.resolve_max_model_len), so requests that
    cannot fit are dropped before the run; the same figure for every backend, so they run the same requests.
    None for an endpoint serving a model nanotune does not know (the server enforces its own limit)."""
    from engine.engine import load_model_config
    from engine.errors import EngineConfigError
    from engine.sizing import resolve_max_model_len

    if not cfg.model or (cfg.engine == "endpoint" and preset_or_none(cfg.model) is None):
        return None
    try:
        return resolve_max_model_len(load_model_config(cfg.model))
    except EngineConfigError:
        if cfg.engine in ("endpoint", "hf"):
            return None
        raise

def preset_or_none(name: str | None):
    if not name:
        return None
    try:
        from engine.presets import get_preset

        return get_preset(name)
    except (ImportError, ValueError):
        return None


def measure_peak(cfg: BenchConfig) -> PeakFlops | None:
    """Given (--peak-tflops), else measured on this machine's device before the model takes its memory.
    An endpoint on a machine without a GPU is served elsewhere: nothing local to measure."""
    if cfg.peak_tflops:
        return given_peak(cfg.peak_tflops)
    if cfg.gpu:
        from nanotune.bench.reference_peak import reference_peak

        return reference_peak(cfg.gpu, cfg.model)
    if cfg.engine == "endpoint":
        import torch

        return peak_flops("cuda") if torch.cuda.is_available() else None
    if cfg.device == "cpu":
        from nanotune.results.cpu_peak import cpu_peak

        return cpu_peak()  # measured once per machine: CPU results stay comparable
    return peak_flops(cfg.device)


def local_gpu_name(cfg: BenchConfig) -> str | None:
    """The GPU an in-process engine runs on (its reference profile bounds the run), None on CPU."""
    if cfg.engine == "endpoint" or not str(cfg.device).startswith("cuda"):
        return None
    import torch

    return torch.cuda.get_device_name(torch.device(cfg.device)) if torch.cuda.is_available() else None


def make_backend(cfg: BenchConfig, lengths: list[tuple[int, int]]) -> Backend:
    if cfg.engine == "endpoint":
        from nanotune.bench.backends.endpoint import EndpointBackend, served_model

        try:
            model = cfg.model or served_model(cfg.endpoint, api_key=cfg.api_key)
        except (OSError, ValueError) as e:
            raise UserError(f"--endpoint {cfg.endpoint}: cannot list its models ({e}); give --model") \
                from None
        preset = preset_or_none(model)
        vocab = cfg.vocab_size or (preset.vocab_size if preset else 32000)
        params = cfg.num_params or (preset.num_params if preset else None)
        tokenizer = None
        if cfg.tokenizer:
            from nanotune.serve.text import load_tokenizer

            tokenizer = load_tokenizer(cfg.tokenizer)
            if tokenizer is None:
                raise UserError(f"--tokenizer {cfg.tokenizer}: no tokenizer files there")
            vocab = cfg.vocab_size or min(vocab, len(tokenizer))
        return EndpointBackend(cfg.endpoint, model, vocab, int(params) if params else None,
                               max_workers=cfg.max_concurrency, request_timeout=cfg.request_timeout,
                               endpoint_type=cfg.endpoint_type, api_key=cfg.api_key, tokenizer=tokenizer,
                               ignore_eos=cfg.ignore_eos)
    if cfg.engine == "hf":
        from nanotune.bench.backends.hf import load_hf_backend

        return load_hf_backend(cfg.model, cfg.device, cfg.dtype, cfg.hf_attn, cfg.seed, lengths)
    from nanotune.bench.backends.inprocess import load_engine_backend

    tp = {"tp": cfg.tp, "allreduce": cfg.allreduce} if cfg.tp > 1 else {}
    return load_engine_backend(cfg.engine, cfg.model, cfg.device, cfg.dtype, cfg.plan, cfg.seed,
                               kv_cache_dtype=cfg.kv_cache_dtype, decode_kernel=cfg.decode_kernel,
                               **engine_limits(cfg), **tp)


def _tuned(plan: str | None):
    """The tuned config (engine.tuned) a --plan FILE holds; None for a plan name."""
    if not plan or not (plan.endswith(".json") or Path(plan).is_file()):
        return None
    from engine.tuned import load_tuned

    return load_tuned(plan)


def tuned_model(plan: str | None) -> str | None:
    """The model a --plan tuned-config file was tuned for (None: a plain plan, or a name)."""
    tuned = _tuned(plan)
    return tuned.model if tuned is not None else None


def engine_limits(cfg: BenchConfig) -> dict:
    """Dense batch and max seqs: given on the command line, else what `nanotune search` tuned the plan
    with (a tuned-config file, engine.tuned), else the engine's defaults."""
    found = _tuned(cfg.plan)
    tuned = found.limits() if found is not None else {}
    out = {}
    for key in ("max_num_batched_tokens", "max_num_seqs"):
        value = getattr(cfg, key) or tuned.get(key)
        if value:
            out[key] = int(value)
    if cfg.num_kv_blocks is not None:
        out["num_kv_blocks"] = cfg.num_kv_blocks
    if cfg.kv_overcommit is not None:
        out["kv_overcommit"] = cfg.kv_overcommit
    return out


def run_label(cfg: BenchConfig) -> str:
    trace = Path(cfg.trace).stem if is_trace_file(cfg.trace) else cfg.trace.replace(":", "-")
    return f"{trace}-{cfg.engine}"


def bench(cfg: BenchConfig, results_dir: str | None = None, progress: bool = True,
          backend: Backend | None = None, trace=None, trace_params: dict | None = None) -> tuple[dict, Path]:
    """Run the benchmark `cfg` describes and write it; returns (result, run_dir). `backend` / `trace`
    replace the ones `cfg` names (tests; embedding); `trace_params` go to the generator."""
    import workloads
    from nanotune.console import err_console

    if trace is None:
        trace = load_trace(cfg.trace, cfg.num_requests, cfg.seed, **(trace_params or {}))
    trace = admit(trace, cfg.caps, cfg.num_requests, max_model_len_for(cfg))
    reqs = list(trace.requests)
    lengths = [(r.prompt_len, r.output_len) for r in reqs]
    if not lengths:
        dropped = workloads.describe_dropped(trace.meta)
        raise UserError(f"trace '{cfg.trace}' has no request to run"
                        + (f" (dropped {dropped})" if dropped != "0" else ""))
    is_timed = any(float(r.arrival_s) > 0 for r in reqs)
    if cfg.mode == "online" and cfg.request_rate is None and not cfg.sweep_rates and not is_timed:
        raise UserError(f"--mode online: trace '{cfg.trace}' has no arrival times; give --request-rate "
                        "(or make a timed trace with `nanotune trace`)")
    run_dir = open_run_dir("bench", run_label(cfg), results_dir)  # found unwritable now, not after the run
    import pandas  # noqa: F401  (imported now: writing must not wait on an import a second signal could hit)

    with StopSignals(on_repeat=lambda sig: err_console.print(
            f"[yellow]{signal.Signals(sig).name} again: already stopping, writing what was measured[/]")) as stop:
        try:
            peak = measure_peak(cfg)
            owns_backend = backend is None
            backend = backend or make_backend(cfg, lengths)
        except BaseException:  # nothing measured yet: no result, no empty folder
            discard_if_empty(run_dir)
            raise
        try:
            bound = bound_setup(cfg, backend.describe(), local_gpu_name(cfg))
            with LiveView(err_console, progress) as view:
                outcome = run_bench(cfg, trace, backend, peak, view.update, view.phase, bound=bound)
        except BaseException:
            discard_if_empty(run_dir)
            raise
        finally:
            if owns_backend:
                try:
                    backend.close()
                except Exception:  # what was measured matters more than a clean shutdown
                    pass
        result = {"run_id": run_dir.name, **outcome.result,
                  "workload": workloads.request_summary(lengths, trace.meta), "environment": environment(),
                  "command": " ".join(shlex.quote(a) for a in sys.argv)}
        if stop.stopped:
            result["signal"] = signal.Signals(stop.received[0]).name
        write_bench_run(run_dir, result, outcome.rows)
    return result, run_dir
