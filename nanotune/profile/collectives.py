"""The all-reduce over real peers: bus bandwidth over sizes, alone and beside a GEMM, per implementation.

One process per rank (spawned here, the engine's environment: multicast off, the implementation's NCCL
settings). Each size is all-reduced alone (median of repeats), a GEMM runs alone, then both at once on two
CUDA streams; `overlap_work` = (all-reduce alone + GEMM alone) / together, the work done together over back to
back (1.0: no gain; NCCL's kernels take SMs from the GEMM). On CPU (gloo) there are no streams: only the
alone times are measured and `together_ms` is None.

Implementations are engine.parallel.comm's (nccl, nccl-channels:N and the symmetric-memory ones, which need
CUDA GPUs); the others it names are refused there.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

SIZES_MIB = (1, 8, 32, 128)
# what `nanotune profile --tp N` times: a Llama-70B row is 16 KiB of bf16, so 1/16 MiB .. 64 MiB spans 4 to 4,096
# rows (a decode step's few sequences up to a full dense batch)
PROFILE_SIZES_MIB = (1 / 16, 1 / 4, 1, 4, 16, 64)


def _time(fn, is_cuda: bool, repeats: int) -> float:
    import torch

    for _ in range(2):
        fn()
    out = []
    for _ in range(repeats):
        if is_cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if is_cuda:
            torch.cuda.synchronize()
        out.append(1e3 * (time.perf_counter() - t))
    return statistics.median(out)


def _rank(rank: int, tp: int, env: dict, device_type: str, sizes_mib, gemm_n: int, repeats: int, out: str):
    os.environ.update({**env, "RANK": str(rank), "LOCAL_RANK": str(rank)})
    import torch

    from engine.parallel.comm import init_group

    device = torch.device("cuda", rank) if device_type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    g = init_group(device, env.get("NANOTUNE_ALLREDUCE", "nccl"))
    is_cuda = device.type == "cuda"
    dtype = torch.bfloat16 if is_cuda else torch.float32
    g.reserve(int(max(sizes_mib) * 2**20) // dtype.itemsize, dtype, device)  # as the engine does before its steps
    a = torch.randn(gemm_n, gemm_n, device=device, dtype=dtype)
    b = torch.randn(gemm_n, gemm_n, device=device, dtype=dtype)
    gemm = lambda: torch.mm(a, b)
    gemm_ms = _time(gemm, is_cuda, repeats)
    rows = []
    for mib in sizes_mib:
        # correct first: rank r contributes r + 1 everywhere, so every element must read tp (tp + 1) / 2 (exact
        # in bf16 at these sizes)
        x = torch.full((int(mib * 2**20) // dtype.itemsize,), rank + 1.0, device=device, dtype=dtype)
        g.all_reduce_(x)
        correct = bool((x == tp * (tp + 1) / 2).all())
        x.normal_()
        ar = lambda x=x: g.all_reduce_(x)
        ar_ms = _time(ar, is_cuda, repeats)
        together = None
        if is_cuda:
            s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()

            def both(s1=s1, s2=s2, ar=ar):
                with torch.cuda.stream(s1):
                    gemm()
                with torch.cuda.stream(s2):
                    ar()

            together = _time(both, True, repeats)
        bus = 2 * (tp - 1) / tp * mib * 2**20 / (ar_ms * 1e-3) / 1e9
        rows.append({"size_mib": mib, "bytes": x.numel() * dtype.itemsize, "correct": correct,
                     "allreduce_ms": ar_ms, "bus_gb_s": bus, "gemm_ms": gemm_ms,
                     "together_ms": together,
                     "overlap_work": (ar_ms + gemm_ms) / together if together else None})
    if rank == 0:
        Path(out).write_text(json.dumps(rows))
    torch.distributed.destroy_process_group()


def measure_allreduce(tp: int, impl: str = "nccl", device_type: str = "cuda", sizes_mib=SIZES_MIB,
                      gemm_n: int | None = None, repeats: int = 20) -> dict:
    """-> {"impl", "backend" (the process group's), "ranks", "gemm_n", "sizes": [per size: size_mib, bytes,
    correct (rank 0's sum of known values), allreduce_ms, bus_gb_s, gemm_ms, together_ms, overlap_work]}.
    Raises EngineConfigError for an implementation engine.parallel.comm refuses (or one that needs CUDA on CPU)."""
    import socket

    import torch.multiprocessing as mp

    from engine.errors import EngineConfigError
    from engine.parallel.comm import FUSED_NORM, NO_MULTICAST_ENV, allreduce_env, check_impl

    check_impl(impl, device_type)
    if impl == FUSED_NORM:
        raise EngineConfigError(f"allreduce '{impl}': its op also adds the residual and normalizes, so this probe of "
                                "plain all-reduces does not time it (tp_bench.py times it inside the engine)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(tp),
           "NANOTUNE_ALLREDUCE": impl, **NO_MULTICAST_ENV, **allreduce_env(impl)}
    gemm_n = gemm_n or (8192 if device_type == "cuda" else 256)
    out = Path(tempfile.mkdtemp(prefix="nanotune-ar-")) / "rank0.json"
    mp.start_processes(_rank, args=(tp, env, device_type, tuple(sizes_mib), gemm_n, repeats, str(out)),
                       nprocs=tp, start_method="spawn")
    return {"impl": impl, "backend": "nccl" if device_type == "cuda" else "gloo", "ranks": tp, "gemm_n": gemm_n,
            "sizes": json.loads(out.read_text())}


def peers_missing(tp: int, device_type: str) -> str | None:
    """Why the all-reduce cannot be timed over real ranks here, or None: on CUDA each rank needs a GPU of its
    own; on CPU the ranks are gloo processes (a code-path check, the times say nothing about a GPU)."""
    if device_type != "cuda":
        return None
    import torch

    n = torch.cuda.device_count()
    return None if n >= tp else f"{n} GPU(s) here, {tp} ranks needed"


def profile_entry(listed: dict, m: dict) -> dict:
    """The profile's all_reduce entry (nanotune.profile.ops.collectives) with measure_allreduce's result: one
    point per message size, which the search's performance model interpolates by bytes."""
    entry = {k: v for k, v in listed.items() if k != "why"}
    entry.update(measured=True, impl=m["impl"], backend=m["backend"], gemm_n=m["gemm_n"],
                 points=[{"bytes": r["bytes"], "ms": r["allreduce_ms"], "bus_gb_s": r["bus_gb_s"],
                          "gemm_ms": r["gemm_ms"], "together_ms": r["together_ms"],
                          "overlap_work": r["overlap_work"]} for r in m["sizes"]])
    return entry
