"""Interference: two ops a plan can overlap, timed alone and together on two CUDA streams.

Pairs: each GEMM (qkv, o_proj, gate_up, down) beside decode attention at several SM budgets and KV sizes,
beside prefill attention, and beside each memory-bound op. The GEMM runs on stream 0 at the full GPU (torch
/ cuBLAS gives no SM control); the other op on stream 1, confined to its budget where it has one. Both are
released by one event after the host has enqueued them (timing.Timer.pair), so neither gets a head start.

For each pair: both alone, the makespan together, each op's own span on its stream while the other runs
(its slowdown = span / alone), and the prediction from the alone times: ideal overlap = max(a, b) against
back to back = a + b. How far `together` lands from `predicted` is the interference a performance model must
account for. `micro_pair` repeats issue 4's experiment (a 1024-token gate_up + down beside decode attention
over 1 GiB of KV) at every budget, with the best gain over running them back to back.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from nanotune.profile.measure import Grid, decode_point_for_kv, error_record, prefill_point, runner_for
from nanotune.profile.ops import MEMORY_OPS
from nanotune.profile.timing import PairStats, Stats, Timer


@dataclass(frozen=True)
class PairCase:
    a: str  # the GEMM, stream 0, full GPU
    a_point: dict
    b: str  # stream 1
    b_point: dict
    b_sm_budget: int | None = None


def pair_cases(grid: Grid, kv_bytes_per_token: int) -> list[PairCase]:
    decode = [decode_point_for_kv(b, grid.pair_context, kv_bytes_per_token) for b in grid.pair_kv_bytes]
    cases = []
    for a in grid.pair_gemms:
        for t in grid.pair_tokens:
            cases += [PairCase(a, {"tokens": t}, "decode_attn", p, sm) for p in decode for sm in grid.pair_budgets]
        for t in grid.pair_memory_tokens:
            cases += [PairCase(a, {"tokens": t}, "prefill_attn", prefill_point(pt, pc, grid.prefill_chunk))
                      for pt, pc in grid.pair_prefill]
            cases += [PairCase(a, {"tokens": t}, m, {"tokens": t}) for m in MEMORY_OPS]
    return cases


def _r(x: float | None, nd: int = 5) -> float | None:
    return None if x is None else round(x, nd)


def pair_record(case: PairCase, alone_a: Stats, alone_b: Stats, together: PairStats,
                alone_b_full: Stats | None = None) -> dict:
    """Bookkeeping of one pair from its timings (pure: tested with made-up numbers)."""
    a, b, tog = alone_a.ms, alone_b.ms, together.together.ms
    predicted, b2b = max(a, b), a + b
    rec = {"a": case.a, "b": case.b, "a_point": case.a_point, "b_point": case.b_point,
           "b_sm_budget": case.b_sm_budget, "alone_a_ms": _r(a), "alone_b_ms": _r(b), "together_ms": _r(tog),
           "a_ms": _r(together.a.ms), "b_ms": _r(together.b.ms),
           "slowdown_a": _r(together.a.ms / a, 4), "slowdown_b": _r(together.b.ms / b, 4),
           "predicted_ms": _r(predicted), "back_to_back_ms": _r(b2b),
           "error_vs_predicted": _r(tog / predicted - 1, 4),
           # share of the ideal saving (b2b - predicted) that was realized; < 0: slower than back to back
           "overlap_realized": _r((b2b - tog) / (b2b - predicted), 4) if b2b > predicted else None,
           "concurrent": together.concurrent}
    if alone_b_full is not None:  # what the sequential engine runs: b on the whole GPU, after a
        rec["alone_b_full_ms"] = _r(alone_b_full.ms)
        rec["gain_vs_sequential"] = _r((a + alone_b_full.ms) / tog, 4)
    return rec


def _key(op: str, point: dict, sm) -> str:
    return json.dumps([op, point, sm], sort_keys=True)


def measure_interference(rig, timer: Timer, cases: list[PairCase], l2_bytes: int,
                         step: Callable[[str], None], errors: list) -> list[dict]:
    """Every case alone (each alone time measured once and reused) and together."""
    runners: dict[str, Callable] = {}
    alone: dict[str, Stats] = {}

    def timed(op, point, sm, ws_offset):
        k = _key(op, point, sm)
        if k not in runners:
            runners[k] = runner_for(rig, op, point, sm, l2_bytes, ws_offset)
            alone[k] = timer.time(runners[k])
        return runners[k], alone[k]

    out = []
    for c in cases:
        try:
            fa, sa = timed(c.a, c.a_point, None, 0)
            fb, sb = timed(c.b, c.b_point, c.b_sm_budget, 1)  # another workspace: no shared buffers
            full = timed(c.b, c.b_point, None, 1)[1] if c.b_sm_budget is not None else None
            out.append(pair_record(c, sa, sb, timer.pair(fa, fb), full))
        except Exception as exc:  # keep the other pairs
            errors.append(error_record(f"{c.a}+{c.b}", c.b_point, c.b_sm_budget, exc))
        step(f"{c.a} x {c.b}")
    return out


def micro_pair_record(tokens: int, attn_point: dict, kv_bytes: int, mlp: Stats, attn_full: Stats,
                      back_to_back: Stats, variants: list[tuple[int | None, Stats, PairStats]]) -> dict:
    """variants: (decode budget, decode alone at it, the pair together). Pure bookkeeping."""
    rows = []
    for sm, alone, ps in variants:
        rows.append({"sm_budget": sm, "attn_alone_ms": _r(alone.ms), "together_ms": _r(ps.together.ms),
                     "mlp_ms": _r(ps.a.ms), "attn_ms": _r(ps.b.ms), "predicted_ms": _r(max(mlp.ms, alone.ms)),
                     "gain_vs_back_to_back": _r(back_to_back.ms / ps.together.ms, 4)})
    best = max(rows, key=lambda r: r["gain_vs_back_to_back"]) if rows else None
    return {
        "mlp": {"ops": ["gate_up", "down"], "tokens": tokens, "ms": _r(mlp.ms)},
        "attn": {"op": "decode_attn", **attn_point, "kv_gib": round(kv_bytes / 2**30, 3), "ms": _r(attn_full.ms)},
        "back_to_back_ms": _r(back_to_back.ms), "sum_alone_ms": _r(mlp.ms + attn_full.ms),
        "two_stream": rows,
        "best": None if best is None else {"sm_budget": best["sm_budget"], "together_ms": best["together_ms"],
                                           "gain_vs_back_to_back": best["gain_vs_back_to_back"]},
        "concurrent": all(ps.concurrent for _, _, ps in variants),
        "note": "back to back = MLP then attention on one stream (full grid); two_stream = the MLP on stream 0 "
                "and attention on stream 1 at each budget (null = full grid); gain = back_to_back / together",
    }


def measure_micro_pair(rig, timer: Timer, grid: Grid, l2_bytes: int) -> dict:
    t = grid.micro_tokens
    gate_up = runner_for(rig, "gate_up", {"tokens": t}, None, l2_bytes)
    down = runner_for(rig, "down", {"tokens": t}, None, l2_bytes)

    def mlp(i: int) -> None:
        gate_up(i)
        down(i)

    point = decode_point_for_kv(grid.micro_kv_bytes, grid.micro_context, rig.kv_bytes_per_token)
    kv_bytes = point["batch"] * point["context"] * rig.kv_bytes_per_token
    budgets = [None] + [b for b in grid.micro_budgets if b is not None]
    attn = {sm: runner_for(rig, "decode_attn", point, sm, l2_bytes, ws_offset=1) for sm in budgets}
    mlp_st = timer.time(mlp)
    attn_alone = {sm: timer.time(fn) for sm, fn in attn.items()}

    def back_to_back(i: int) -> None:
        mlp(i)
        attn[None](i)

    b2b = timer.time(back_to_back)
    variants = [(sm, attn_alone[sm], timer.pair(mlp, attn[sm])) for sm in budgets]
    return micro_pair_record(t, point, kv_bytes, mlp_st, attn_alone[None], b2b, variants)
