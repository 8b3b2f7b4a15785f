"""One validation layer for the numeric options of every command: finite, ranged, and sizes checked against
memory before anything is allocated. A bad value is a click.BadParameter, which the command group turns
into one line and exit 2 (nanotune.cli.NanotuneGroup).

click's FloatRange lets nan and inf through (nan compares false with every bound), so every float option
goes through FiniteFloat; `inf` is accepted only where it means something (a rate: "all at once").
"""

from __future__ import annotations

import math
import os

import click

# numpy's Generator and torch's manual_seed take seeds in [0, 2**64); numpy's legacy RandomState (used by some
# readers) only [0, 2**32). The smaller range is the one every seed must fit.
MAX_SEED = 2**32 - 1
# Slowest arrival rate accepted: one request every 1,000 s. Anything slower waits for hours per request.
MIN_RATE = 1e-3
# Largest token count an option takes (prompt/output length, dense batch): 2**20, beyond every preset's context;
# larger values only allocate until the machine runs out of memory.
MAX_LEN = 2**20
MAX_SEQS = 2**16  # requests running at once (the engine sizes per-sequence buffers by it)
# Tensor-parallel ranks: the engine spawns one process per rank on this one host (engine.parallel.launch), and
# no host has more GPUs than this; a typo like --tp 800 would otherwise start hundreds of CPU processes.
MAX_TP = 64
# Bytes a replayed request costs the client before anything runs: its prompt ids as Python ints in a tuple
# (8 bytes the pointer + 28 the int object, small ints shared, so 8 is the floor) and its record.
BYTES_PER_PROMPT_TOKEN = 8
BYTES_PER_REQUEST = 2048
# A guess of the mean prompt length when the trace is not generated yet (ShareGPT's is about 300 tokens):
# only used to refuse request counts that cannot fit in memory at any plausible length.
TYPICAL_PROMPT_LEN = 256


class FiniteFloat(click.ParamType):
    """A float within [min, max] (open ends with min_open/max_open); nan always refused, inf only with
    allow_inf (and then only +inf)."""

    name = "float"

    def __init__(self, min: float | None = None, max: float | None = None, min_open: bool = False,
                 max_open: bool = False, allow_inf: bool = False) -> None:
        self.min, self.max, self.min_open, self.max_open = min, max, min_open, max_open
        self.allow_inf = allow_inf

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            v = value
        else:
            try:
                v = float(str(value).strip())
            except ValueError:
                self.fail(f"'{value}' is not a number", param, ctx)
        if math.isnan(v):
            self.fail("nan is not a value", param, ctx)
        if math.isinf(v) and not (self.allow_inf and v > 0):
            self.fail(f"'{value}' must be finite", param, ctx)
        if math.isinf(v):
            return v
        lo_bad = self.min is not None and (v < self.min or (self.min_open and v == self.min))
        hi_bad = self.max is not None and (v > self.max or (self.max_open and v == self.max))
        if lo_bad or hi_bad:
            self.fail(f"{v:g} is not in {self._range()}", param, ctx)
        return v

    def _range(self) -> str:
        lo = "-inf" if self.min is None else f"{self.min:g}"
        hi = "inf" if self.max is None else f"{self.max:g}"
        left = "(" if self.min_open or self.min is None else "["
        right = ")" if self.max_open or self.max is None else "]"
        return f"{left}{lo}, {hi}{right}"


def rate_type() -> FiniteFloat:
    """Requests per second: at least MIN_RATE (slower never finishes), or inf (all at once)."""
    return FiniteFloat(min=MIN_RATE, allow_inf=True)


class Seed(click.ParamType):
    name = "seed"

    def convert(self, value, param, ctx):
        try:
            v = int(value)
        except (TypeError, ValueError):
            self.fail(f"'{value}' is not an integer", param, ctx)
        if not 0 <= v <= MAX_SEED:
            self.fail(f"{v} is not in [0, {MAX_SEED}] (numpy's seed range)", param, ctx)
        return v


SEED = Seed()


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else None (then nothing is refused on memory grounds)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def check_fits(what: str, need_bytes: float, available: int | None = None) -> None:
    """Refuse, in one line, an allocation larger than the memory free now."""
    from nanotune.errors import UserError

    free = available_memory_bytes() if available is None else available
    if free is not None and need_bytes > free:
        raise UserError(f"{what} needs about {gib(need_bytes)} of memory; {gib(free)} is free here")


def check_requests_fit(num_requests: int | None, mean_prompt_len: int, option: str = "-n") -> None:
    """The client holds every request's prompt ids before the run: refuse counts that cannot fit."""
    if num_requests is None:
        return
    need = num_requests * (BYTES_PER_REQUEST + BYTES_PER_PROMPT_TOKEN * max(mean_prompt_len, 1))
    check_fits(f"{option} {num_requests:,} (requests of ~{mean_prompt_len:,} prompt tokens held by the client)",
               need)


def check_model_fits(model_cfg, device: str, dtype_bytes: int) -> None:
    """Weights on the CPU must fit the free host memory (say so up front, rather than be OOM-killed later)."""
    if not device.startswith("cpu"):
        return
    check_fits(f"model '{model_cfg.name}' ({model_cfg.num_params / 1e9:,.2f} B parameters at {dtype_bytes} "
               f"bytes each on the CPU)", model_cfg.num_params * dtype_bytes)


def cpu_threads(requested: int | None) -> tuple[int, str | None]:
    """Threads for torch on the CPU: --threads if given; else, on a machine whose 1-minute load already
    fills its cores, 1 (torch's default of one thread per core then oversubscribes the CPU and every
    iteration waits on the slowest thread); else torch's default. Returns (threads, a note or None)."""
    import torch

    if requested:
        return requested, None
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        return torch.get_num_threads(), None
    if cores > 1 and load >= cores - 0.5:
        return 1, f"CPU busy (load {load:.1f} on {cores} cores): 1 torch thread (--threads N to change)"
    return torch.get_num_threads(), None


# --kv-cache-dtype of bench, profile and search: one choice list and one help text (the engine's names;
# engine.config.KV_CACHE_DTYPES holds every name it takes, these are the ones the CLIs offer).
KV_CACHE_DTYPE_CHOICES = ("auto", "fp8")
KV_CACHE_DTYPE_HELP = "KV cache dtype; fp8 = e4m3 with per-(layer, kv head) scales."


def allreduce_option():
    """--allreduce of bench and serve: the all-reduce the plan's collective ops run with --tp > 1 (the names are
    engine.config.ALLREDUCE_IMPLS; the engine refuses a bad one in one line before loading)."""
    from engine.config import ALLREDUCE_IMPLS

    return click.option("--allreduce", default="nccl", show_default=True, metavar="IMPL",
                        help="With --tp > 1: the all-reduce of the plan's collective ops: "
                             + " | ".join(ALLREDUCE_IMPLS) + " (symm-mem-* and copy-engine: CUDA GPUs only; "
                             "fused-rmsnorm: also does the residual add + RMSNorm after it, one kernel on CUDA).")


def kv_cache_dtype_option(help_prefix: str = ""):
    """The --kv-cache-dtype option (auto | fp8, default auto); `help_prefix` says what it applies to."""
    return click.option("--kv-cache-dtype", type=click.Choice(KV_CACHE_DTYPE_CHOICES), default="auto",
                        show_default=True, help=help_prefix + KV_CACHE_DTYPE_HELP)
