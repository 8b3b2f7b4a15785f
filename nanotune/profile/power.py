"""The card's power-aware limits, each sustained for seconds with NVML power and SM clock beside it:

- gemm: the engine's gate_up GEMM (cuBLAS bf16) at a layer shape, replayed back to back;
- read: HBM read bandwidth over SM budgets: torch.sum over the buffer (full grid), the persistent read
  probe (readprobe.py; TMA loads where the card has them, plain pointer loads) on P programs, and the
  engine's own decode attention at max_programs = P over about 1 GiB of paged KV;
- together: the GEMM on one stream beside the probe on P programs on another, both kept busy; the work
  each did as a fraction of its alone rate (the GEMM's, the best full-GPU read's), summed. 1.0 means
  overlap did no more than running back to back; 2.0 would be perfect overlap.

A cold burst (the profile's op timings) runs at boost clock; a card kept busy settles at its power limit,
and a GEMM and an HBM stream share that one power budget. results.bound turns these rates into the bound.
On CPU (a code-path check) the rates are timed with perf_counter and there is no `together` (no streams).
"""

from __future__ import annotations

import statistics
import time

import torch

from nanotune.profile.measure import decode_point_for_kv, runner_for
from nanotune.profile.ops import Shard, gemm_cost
from nanotune.profile.readprobe import can_tma, read_buffer, read_fn

SECONDS, QUICK_SECONDS, CPU_SECONDS = 5.0, 2.0, 0.1
GEMM_TOKENS = 2048  # rows of the sustained GEMM (capped by the rig's workspaces)
READ_BYTES, QUICK_READ_BYTES, CPU_READ_BYTES = 2 << 30, 1 << 30, 1 << 20
CHUNK_MS = 5.0  # calls between two CUDA events
MAX_AHEAD = 20  # chunks per stream the host may queue ahead of the GPU


def _sig(x: float) -> float:
    """4 significant digits: a CPU's rate is a small fraction and must not round to zero."""
    return float(f"{x:.4g}")


def power_budgets(num_sms: int | None, quick: bool) -> tuple[int, ...]:
    """SM budgets (programs) of the read probe and of decode attention; the together splits use those
    below the full GPU."""
    if not num_sms:
        return (2,)
    fractions = (1 / 4, 1 / 2, 1) if quick else (1 / 8, 1 / 4, 1 / 3, 1 / 2, 1)
    return tuple(sorted({max(1, round(num_sms * f)) for f in fractions}))


def _chunk(fn, is_cuda: bool) -> int:
    """Calls per chunk: about CHUNK_MS of work, from three calls after one warm-up (compiles, autotunes)."""
    fn(0)
    t = time.perf_counter()
    if is_cuda:
        torch.cuda.synchronize()
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
    for i in range(3):
        fn(i)
    if is_cuda:
        e1.record()
        e1.synchronize()
        ms = e0.elapsed_time(e1) / 3
    else:
        ms = 1e3 * (time.perf_counter() - t) / 3
    return max(1, round(CHUNK_MS / max(ms, 1e-3)))


def run_sustained(fns: list, seconds: float, is_cuda: bool) -> dict:
    """Keep every fn busy (each on its own stream on a GPU) for `seconds`: {"ms": [median ms per call over
    the second half, per fn], "cold_ms": [over the first chunks], "window": (t0, t1) of the second half
    (time.monotonic, for NVML)}."""
    chunks = [_chunk(fn, is_cuda) for fn in fns]
    streams = [torch.cuda.Stream() for _ in fns] if is_cuda else [None] * len(fns)
    marks: list[list] = [[] for _ in fns]  # (enqueued at, events or ms)
    start = time.monotonic()
    half = start + seconds / 2
    calls = 0
    while time.monotonic() - start < seconds:
        for k, fn in enumerate(fns):
            now = time.monotonic()
            if is_cuda:
                with torch.cuda.stream(streams[k]):
                    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    e0.record()
                    for _ in range(chunks[k]):
                        fn(calls)
                        calls += 1
                    e1.record()
                marks[k].append((now, (e0, e1)))
                if len(marks[k]) > MAX_AHEAD:
                    marks[k][-MAX_AHEAD][1][1].synchronize()  # the GPU's time, not the host's queue
            else:
                t = time.perf_counter()
                for _ in range(chunks[k]):
                    fn(calls)
                    calls += 1
                marks[k].append((now, 1e3 * (time.perf_counter() - t)))
    if is_cuda:
        torch.cuda.synchronize()
    end = time.monotonic()

    def ms(m) -> float:
        return m[0].elapsed_time(m[1]) if is_cuda else m

    out_ms, cold_ms = [], []
    for k in range(len(fns)):
        late = [ms(m) / chunks[k] for t, m in marks[k] if t >= half] or [ms(marks[k][-1][1]) / chunks[k]]
        out_ms.append(statistics.median(late))
        cold_ms.append(statistics.median(ms(m) / chunks[k] for _, m in marks[k][:3]))
    return {"ms": out_ms, "cold_ms": cold_ms, "window": (half, end)}


def nvml_window(samples: list[dict], window: tuple[float, float]) -> dict:
    """Median power and SM clock of the NVML samples taken in the window (None where none were)."""
    t0, t1 = window
    inside = [s for s in samples if t0 <= s.get("t", -1) <= t1]
    out = {}
    for key in ("power_w", "sm_clock_mhz"):
        xs = [s[key] for s in inside if isinstance(s.get(key), (int, float))]
        out[key] = round(statistics.median(xs), 1) if xs else None
    return out


def measure_power(rig, sh: Shard, grid, l2_bytes: int, quick: bool, nv=None, seconds: float | None = None,
                  step=None) -> dict:
    """The `power` section of a profile (schema.py); `nv` an NvmlSampler (its samples give power and
    clock), `step(what)` called after each measurement."""
    device = rig.device
    is_cuda = device.type == "cuda"
    seconds = seconds if seconds is not None else SECONDS if not quick and is_cuda else \
        QUICK_SECONDS if is_cuda else CPU_SECONDS
    num_sms = torch.cuda.get_device_properties(device).multi_processor_count if is_cuda else None
    samples = (lambda: nv.samples) if nv is not None and nv.available else (lambda: [])
    step = step or (lambda what: None)
    errors: list[str] = []

    def sustain(fns):
        res = run_sustained(fns, seconds, is_cuda)
        return res, nvml_window(samples(), res["window"])

    # GEMM alone
    tokens = min(GEMM_TOKENS, rig.max_tokens)
    n, k = sh.gemm_nk("gate_up")
    flops = gemm_cost(tokens, n, k, e=rig.dtype.itemsize)[0]
    gemm_fn = runner_for(rig, "gate_up", {"tokens": tokens}, None, l2_bytes)
    res, nvw = sustain([gemm_fn])
    gemm = {"op": "gate_up", "tokens": tokens, "n": n, "k": k, "ms": round(res["ms"][0], 5),
            "tflops": _sig(flops / res["ms"][0] / 1e9), "cold_tflops": _sig(flops / res["cold_ms"][0] / 1e9),
            **nvw}
    step("gemm")

    # reads alone
    budgets = power_budgets(num_sms, quick)
    x = read_buffer(READ_BYTES if not quick and is_cuda else QUICK_READ_BYTES if is_cuda else CPU_READ_BYTES,
                    device)
    nbytes = x.numel() * x.element_size()
    has_tma, why_tma = can_tma(device)
    loads = (["tma"] if has_tma else []) + (["ptr"] if is_cuda else [])
    if why_tma and is_cuda:
        errors.append(f"read probe tma: {why_tma}")
    readers = [("torch_sum", None, lambda i: x.sum(dtype=torch.float32), nbytes)]
    for load in loads:
        for p in budgets:
            readers.append((f"probe_{load}", p, read_fn(x, p, load)[0], nbytes))
    kv_point = decode_point_for_kv(grid.micro_kv_bytes, grid.micro_context, rig.kv_bytes_per_token)
    kv_bytes = kv_point["batch"] * kv_point["context"] * rig.kv_bytes_per_token
    for p in budgets:
        readers.append(("decode_attn", p, runner_for(rig, "decode_attn", kv_point, p, l2_bytes), kv_bytes))
    reads, fns = [], {}
    for kernel, p, fn, b in readers:
        try:
            res, nvw = sustain([fn])
        except Exception as e:  # one reader that cannot run here (an old GPU's TMA) must not lose the rest
            errors.append(f"{kernel} programs={p}: {type(e).__name__}: {e}"[:300])
            continue
        reads.append({"kernel": kernel, "programs": p, "bytes": b, "ms": round(res["ms"][0], 5),
                      "gb_s": _sig(b / res["ms"][0] / 1e6), **nvw})
        fns[(kernel, p)] = (fn, b)
        step(f"{kernel} {p or 'full'}")

    # together: the GEMM beside the probe on P programs
    together = []
    best_read = max((r["gb_s"] for r in reads if r["programs"] in (None, max(budgets))), default=None)
    probe = f"probe_{loads[0]}" if loads else None
    if is_cuda and probe and best_read:
        for p in [b for b in budgets if b < (num_sms or 0)] or budgets[:1]:
            if (probe, p) not in fns:
                continue
            fn, b = fns[(probe, p)]
            res, nvw = sustain([gemm_fn, fn])
            g = gemm["ms"] / res["ms"][0]
            r = (b / res["ms"][1] / 1e6) / best_read
            together.append({"read_kernel": probe, "programs": p, "gemm_fraction": round(g, 3),
                             "read_fraction": round(r, 3), "sum": round(g + r, 3), **nvw})
            step(f"together {p}")
    return {"seconds": seconds, "gemm": gemm, "read": reads, "together": together,
            "best_together": max((t["sum"] for t in together), default=None),
            "best_read_gb_s": max((r["gb_s"] for r in reads), default=None),
            "decode_point": {**kv_point, "kv_bytes": kv_bytes}, "errors": errors,
            "why": None if together else "together not measured: needs CUDA streams" if not is_cuda else
            "together not measured: no read probe ran",
            "method": f"each figure sustained for {seconds:g} s back to back, the median call of the second half "
                      f"(CUDA events per ~{CHUNK_MS:g} ms chunk); NVML power and SM clock: medians of the samples "
                      "in that half; together: fractions of the GEMM alone and of the best full-GPU read"}


def num_measurements(num_sms: int | None, quick: bool, is_cuda: bool) -> int:
    """Progress steps of measure_power."""
    b = len(power_budgets(num_sms, quick))
    has_tma = is_cuda and torch.cuda.get_device_capability()[0] >= 9
    loads = (2 if has_tma else 1) if is_cuda else 0
    return 1 + 1 + loads * b + b + (len([x for x in power_budgets(num_sms, quick) if x < (num_sms or 0)])
                                    if is_cuda else 0)
