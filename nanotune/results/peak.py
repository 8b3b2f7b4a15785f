"""Peak FLOP/s measured on this device in this run, and NanoFlow's optimal throughput (Eq. 5).

The optimum is `peak_flops / (2 * params_per_gpu)` total tokens/s: every token costs about 2 FLOPs per
parameter, so a GPU that did nothing but dense GEMMs at its measured peak would serve that many tokens/s.
Measuring the peak (not quoting a data sheet) keeps "% of optimal" honest across clocks, power limits and
SKUs: the same card, the same run.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class PeakFlops:
    flops: float  # FLOP/s (median of the timed repeats)
    device: str  # "cuda" | "cpu"
    dtype: str
    shape: tuple[int, int, int]  # (m, n, k)
    num_repeats: int
    label: str  # human-readable: what was measured, and where it is not comparable
    source: str = "measured"  # "measured" | "given" (--peak-tflops)

    @property
    def tflops(self) -> float:
        return self.flops / 1e12

    def to_dict(self) -> dict:
        return {**asdict(self), "tflops": self.tflops}


def optimal_total_token_throughput(peak: float, num_params: int | float) -> float:
    """NanoFlow Eq. 5: tokens/s (prompt + output) a GPU of `peak` FLOP/s could serve for `num_params`
    parameters on it (under tensor parallelism: the parameters per GPU)."""
    if num_params <= 0:
        raise ValueError(f"num_params must be positive, got {num_params}")
    return peak / (2.0 * num_params)


def given_peak(tflops: float, device: str = "given") -> PeakFlops:
    """A peak the user supplied (e.g. the server's GPU when benchmarking a remote endpoint)."""
    return PeakFlops(flops=tflops * 1e12, device=device, dtype="given", shape=(0, 0, 0), num_repeats=0,
                     label=f"given: {tflops:g} TFLOP/s (--peak-tflops)", source="given")


def peak_flops(device: str = "auto", size: int | None = None, num_repeats: int = 10,
               num_warmups: int = 3) -> PeakFlops:
    """Time a square GEMM with random inputs (zeros would let the hardware cheat on power/clock) and return
    the median FLOP/s. CUDA: bf16 8192^3 timed with CUDA events. CPU: fp32 (default 1024^3) after warm-up,
    timed with perf_counter; labelled as a CPU figure, not comparable with any GPU's."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    is_cuda = device.startswith("cuda")
    n = size or (8192 if is_cuda else 1024)
    dtype = torch.bfloat16 if is_cuda else torch.float32
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    times = []
    if is_cuda:
        for _ in range(num_warmups):
            torch.mm(a, b)
        torch.cuda.synchronize(device)
        for _ in range(num_repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.mm(a, b)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        name = torch.cuda.get_device_name(device)
        label = f"bf16 GEMM {n}^3 on {name} (CUDA events, median of {num_repeats})"
    else:
        import time

        for _ in range(num_warmups):
            torch.mm(a, b)
        for _ in range(num_repeats):
            t = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - t)
        label = (f"CPU fp32 GEMM {n}^3, {torch.get_num_threads()} threads (median of {num_repeats}); "
                 "a CPU figure, not comparable with a GPU's bf16 peak")
    del a, b
    if is_cuda:
        torch.cuda.empty_cache()
    flops = 2.0 * n**3 / statistics.median(times)
    return PeakFlops(flops=flops, device="cuda" if is_cuda else "cpu",
                     dtype=str(dtype).removeprefix("torch."), shape=(n, n, n), num_repeats=num_repeats,
                     label=label)


def copy_bandwidth_gbs(device: str = "cuda", nbytes: int = 1 << 30, num_repeats: int = 20,
                       num_warmups: int = 3) -> float:
    """The card's device-to-device copy bandwidth in GB/s, read + write bytes counted (a copy of nbytes
    moves 2 x nbytes): the yardstick memory-bound kernels are held against. Median of CUDA-event timings of
    random data (a CPU figure when device is cpu, timed with perf_counter)."""
    import time

    import torch

    src = torch.randn(max(1, nbytes // 4), device=device)
    dst = torch.empty_like(src)
    is_cuda = str(device).startswith("cuda")
    for _ in range(num_warmups):
        dst.copy_(src)
    times = []
    for _ in range(num_repeats):
        if is_cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - t)
    moved = 2 * src.numel() * src.element_size()
    del src, dst
    if is_cuda:
        torch.cuda.empty_cache()
    return moved / statistics.median(times) / 1e9
