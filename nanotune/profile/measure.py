"""What a profile measures alone: the grid of input points per op, the card's peaks, and each op's time.

SM budgets: decode attention is the engine's one partition-aware kernel today (a persistent grid of
max_programs programs), so it is timed at several budgets (None = its full, non-persistent grid). GEMMs go
through torch/cuBLAS, which has no SM control the engine uses, and the Triton memory-bound kernels and prefill
attention ignore the budget: those are recorded at the full GPU (sm_budget null), not at invented partitions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from engine.plan import LAYER_OPS
from nanotune.profile.ops import GEMM_OPS, KINDS, Shard, op_cost, op_shape
from nanotune.profile.rig import BLOCK_SIZE, LayerRig, kv_blocks, num_rotations
from nanotune.profile.timing import Timer

MAX_KV_COPIES = 8


@dataclass(frozen=True)
class Grid:
    name: str
    tokens: tuple[int, ...]  # GEMMs and memory-bound ops
    decode_batches: tuple[int, ...]
    decode_contexts: tuple[int, ...]
    budgets: tuple[int | None, ...]  # decode attention max_programs; None = full grid
    prefill_tokens: tuple[int, ...]
    prefill_contexts: tuple[int, ...]
    pair_tokens: tuple[int, ...]  # GEMM side of each interference pair
    pair_kv_bytes: tuple[int, ...]  # decode side: batches of pair_context tokens holding about this much KV
    pair_budgets: tuple[int | None, ...]
    pair_prefill: tuple[tuple[int, int], ...]  # (tokens, context) of prefill attention beside a GEMM
    pair_memory_tokens: tuple[int, ...]
    micro_budgets: tuple[int | None, ...]
    warmup: int
    repeats: int
    prefill_chunk: int = 512  # a prefill point's tokens are split into sequences of at most this many
    pair_context: int = 2048
    pair_gemms: tuple[str, ...] = GEMM_OPS
    micro_tokens: int = 1024  # issue 4's pair: a 1024-token gate_up + down beside decode over 1 GiB of KV
    micro_kv_bytes: int = 1 << 30
    micro_context: int = 4096
    gemm_peak_size: int = 8192
    copy_bytes: int = 1 << 30
    notes: tuple[str, ...] = field(default=())


def sm_budgets(num_sms: int, fractions) -> tuple[int | None, ...]:
    """Budgets as fractions of the SMs (1/8, 1/4, ... of 132 -> 16, 33, ...), then None (full grid)."""
    return tuple(sorted({max(1, round(num_sms * f)) for f in fractions})) + (None,)


def quick_grid(num_sms: int) -> Grid:
    return Grid(
        name="quick", tokens=(64, 256, 1024, 4096), decode_batches=(64, 256), decode_contexts=(1024, 4096),
        budgets=sm_budgets(num_sms, (1 / 4, 1 / 2, 1)), prefill_tokens=(512, 2048), prefill_contexts=(0, 2048),
        pair_tokens=(1024,), pair_kv_bytes=(1 << 29,), pair_budgets=sm_budgets(num_sms, (1 / 2,)),
        pair_prefill=((1024, 1024),), pair_memory_tokens=(1024,),
        micro_budgets=sm_budgets(num_sms, (1 / 4, 1 / 3, 1 / 2)), warmup=3, repeats=10)


def default_grid(num_sms: int) -> Grid:
    return Grid(
        name="default",
        tokens=(32, 64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192),
        decode_batches=(4, 16, 32, 64, 128, 256), decode_contexts=(512, 1024, 2048, 4096),
        budgets=sm_budgets(num_sms, (1 / 8, 1 / 4, 1 / 3, 1 / 2, 2 / 3, 1)),
        prefill_tokens=(128, 256, 512, 1024, 2048, 4096), prefill_contexts=(0, 1024, 4096),
        pair_tokens=(512, 1024, 2048), pair_kv_bytes=(1 << 28, 1 << 29, 1 << 30),
        pair_budgets=sm_budgets(num_sms, (1 / 4, 1 / 3, 1 / 2, 2 / 3)),
        pair_prefill=((512, 0), (1024, 2048)), pair_memory_tokens=(1024,),
        micro_budgets=sm_budgets(num_sms, (1 / 8, 1 / 4, 1 / 3, 1 / 2, 2 / 3, 1)), warmup=5, repeats=25)


def tiny_grid() -> Grid:
    """A code-path check on CPU with a tiny preset (tests, `--device cpu`): times mean nothing."""
    return Grid(
        name="tiny", tokens=(8, 32), decode_batches=(2, 4), decode_contexts=(16, 40), budgets=(2, None),
        prefill_tokens=(16,), prefill_contexts=(0, 16), pair_tokens=(16,), pair_kv_bytes=(8 << 10,),
        pair_budgets=(2,), pair_prefill=((16, 8),), pair_memory_tokens=(16,), micro_budgets=(2,), warmup=1,
        repeats=3, prefill_chunk=8, pair_context=32, micro_tokens=16, micro_kv_bytes=16 << 10, micro_context=32,
        gemm_peak_size=128, copy_bytes=1 << 20)


def prefill_point(tokens: int, context: int, chunk: int) -> dict:
    return {"tokens": tokens, "context": context, "seqs": max(1, tokens // chunk)}


def decode_point_for_kv(kv_bytes: int, context: int, kv_bytes_per_token: int) -> dict:
    """The decode batch of `context`-token sequences holding about kv_bytes of K and V (one layer)."""
    return {"batch": max(1, round(kv_bytes / (context * kv_bytes_per_token))), "context": context}


def op_points(grid: Grid, op: str) -> list[tuple[dict, int | None]]:
    """(input point, sm_budget) pairs an op is timed at alone."""
    if op == "decode_attn":
        return [({"batch": b, "context": c}, sm) for b in grid.decode_batches for c in grid.decode_contexts
                for sm in grid.budgets]
    if op == "prefill_attn":
        return [(prefill_point(t, c, grid.prefill_chunk), None) for t in grid.prefill_tokens
                for c in grid.prefill_contexts]
    return [({"tokens": t}, None) for t in grid.tokens]


def kv_copies(kv_bytes_per_token: int, op: str, point: dict, l2_bytes: int) -> int:
    """KV regions to rotate through for an attention point (1 copy when it alone is far larger than L2)."""
    if op == "decode_attn":
        kv = point["batch"] * point["context"] * kv_bytes_per_token
    elif op == "prefill_attn":
        kv = (point.get("seqs", 1) * point["context"] + point["tokens"]) * kv_bytes_per_token
    else:
        return 2  # GEMM / memory ops: a couple of position/slot sets; their weights rotate by layer
    return num_rotations(kv, l2_bytes, MAX_KV_COPIES)


def runner_for(rig: LayerRig, op: str, point: dict, sm_budget, l2_bytes: int,
               ws_offset: int = 0) -> Callable[[int], None]:
    """The timed fn(i) for one point, with as many KV copies as fit in the rig's cache."""
    blocks = max(1, kv_blocks(op, point))
    count = max(1, min(kv_copies(rig.kv_bytes_per_token, op, point, l2_bytes), rig.num_kv_blocks // blocks))
    return rig.runner(op, rig.batches(op, point, count), sm_budget, ws_offset)


def measure_peaks(device: torch.device, timer: Timer, grid: Grid) -> dict:
    """bf16 GEMM peak (nanotune.results.peak_flops, 8192^3 on a GPU) and device-to-device copy bandwidth
    (read + write bytes), both measured now on this card."""
    from nanotune.results import peak_flops

    pk = peak_flops(str(device), size=grid.gemm_peak_size)
    copy = _copy_ms(device, timer, grid.copy_bytes // 4)
    # 4 significant digits: a CPU's figure is a fraction of a TFLOP/s and must not round to zero
    return {"bf16_tflops": float(f"{pk.tflops:.4g}"), "copy_gb_s": float(f"{2 * grid.copy_bytes / copy.ms / 1e6:.4g}"),
            "gemm": pk.label, "copy": f"{grid.copy_bytes / 2**20:g} MiB device-to-device copy, read + write "
                                      f"bytes counted, median of {copy.repeats}"}


def _copy_ms(device, timer: Timer, numel: int):
    src = torch.randn(numel, device=device)  # freed on return, before the rig takes its memory
    dst = torch.empty_like(src)
    return timer.time(lambda i: dst.copy_(src))


def point_record(shard: Shard, op: str, point: dict, sm_budget, stats, e: int, kv_e: int | None = None) -> dict:
    flops, nbytes = op_cost(shard, op, point, e=e, kv_e=kv_e)
    ms = stats.ms
    return {**point, "sm_budget": sm_budget, **stats.to_dict(), "flops": flops, "bytes": nbytes,
            "tflops": round(flops / ms / 1e9, 3) if ms > 0 else None,
            "gb_s": round(nbytes / ms / 1e6, 2) if ms > 0 else None}


def measure_ops(rig: LayerRig, timer: Timer, shard: Shard, grid: Grid, l2_bytes: int,
                step: Callable[[str], None], errors: list, section: Callable | None = None) -> dict:
    """Every op of the layer alone at every point: {op: {kind, shape, points}} in the engine's op order.

    step(op) is called after each point (progress); a point that fails is skipped and noted in errors."""
    e, kv_e = rig.dtype.itemsize, rig.kv_dtype.itemsize
    ops = {}
    for op in LAYER_OPS:
        entry = ops[op] = {"kind": KINDS[op], "shape": op_shape(shard, op), "points": []}
        with section(op) if section else contextlib.nullcontext():
            for point, sm in op_points(grid, op):
                try:
                    st = timer.time(runner_for(rig, op, point, sm, l2_bytes))
                    entry["points"].append(point_record(shard, op, point, sm, st, e, kv_e))
                except Exception as exc:  # one bad point (e.g. out of memory) must not lose the others
                    errors.append(error_record(op, point, sm, exc))
                    _recover(rig.device)
                step(op)
    return ops


def count_points(grid: Grid) -> int:
    return sum(len(op_points(grid, op)) for op in LAYER_OPS)


def error_record(what: str, point: dict, sm_budget, exc: BaseException) -> dict:
    return {"op": what, "point": point, "sm_budget": sm_budget, "error": f"{type(exc).__name__}: {exc}"[:300]}


def _recover(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def max_kv_blocks(grid: Grid, kv_bytes_per_token: int, l2_bytes: int) -> int:
    """KV blocks the grid's attention points need with their rotation copies (the cache is sized to this)."""
    cases = [(op, p) for op in ("decode_attn", "prefill_attn") for p, _ in op_points(grid, op)]
    cases += [("decode_attn", decode_point_for_kv(b, grid.pair_context, kv_bytes_per_token))
              for b in grid.pair_kv_bytes]
    cases += [("decode_attn", decode_point_for_kv(grid.micro_kv_bytes, grid.micro_context, kv_bytes_per_token))]
    cases += [("prefill_attn", prefill_point(t, c, grid.prefill_chunk)) for t, c in grid.pair_prefill]
    need = max(kv_blocks(op, p) * kv_copies(kv_bytes_per_token, op, p, l2_bytes) for op, p in cases)
    slots = -(-max(grid.tokens + grid.pair_memory_tokens) // BLOCK_SIZE) * 2  # rope_kv's slot sets
    return max(need, slots)
