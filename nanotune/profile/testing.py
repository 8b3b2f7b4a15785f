"""A synthetic profile for tests (plots, schema, search on a machine without a GPU): the real grid and op
list of a preset, with times from a plain roofline model of a made-up GPU instead of measurements.

Not a measurement of anything: gpu.name says "synthetic" and a note says so. The numbers only have the right
shape (GEMMs reach the peak with tokens, decode attention needs about half the SMs for full bandwidth, pairs
overlap imperfectly), so code that reads profiles can be tested on realistic sizes.
"""

from __future__ import annotations

from engine.plan import LAYER_OPS
from engine.presets import get_preset
from nanotune.profile.interference import micro_pair_record, pair_cases, pair_record
from nanotune.profile.measure import decode_point_for_kv, default_grid, op_points, point_record, quick_grid
from nanotune.profile.nvml import summarize_samples
from nanotune.profile.ops import KINDS, collectives, op_cost, op_shape, shard
from nanotune.profile.schema import SCHEMA
from nanotune.profile.timing import PairStats, Stats

PEAK_TFLOPS, COPY_GB_S, LAUNCH_MS = 750.0, 4000.0, 0.004


def _stats(ms: float) -> Stats:
    return Stats(ms=ms, ms_min=0.97 * ms, ms_p90=1.03 * ms, repeats=25)


def model_ms(s, op: str, point: dict, sm_budget: int | None, num_sms: int) -> float:
    """Roofline time; GEMMs lose efficiency below ~512 tokens; decode bandwidth grows with its budget."""
    flops, nbytes = op_cost(s, op, point)
    eff = min(1.0, point.get("tokens", 512) / 512) * 0.9 if KINDS[op] == "gemm" else 0.5
    bw = 0.85 * COPY_GB_S
    if op == "decode_attn":
        bw *= min(1.0, (sm_budget or num_sms) / (0.5 * num_sms))
    return LAUNCH_MS + max(flops / (PEAK_TFLOPS * 1e9 * max(eff, 0.05)), nbytes / (bw * 1e6))


def synthetic_profile(model: str = "llama-3-8b", tp: int = 1, num_sms: int = 132, quick: bool = False) -> dict:
    cfg = get_preset(model)
    s = shard(cfg, tp)
    grid = quick_grid(num_sms) if quick else default_grid(num_sms)
    ops = {}
    for op in LAYER_OPS:
        pts = [point_record(s, op, p, sm, _stats(model_ms(s, op, p, sm, num_sms)), 2) for p, sm in op_points(grid, op)]
        ops[op] = {"kind": KINDS[op], "shape": op_shape(s, op), "points": pts}
    interference = []
    for c in pair_cases(grid, 2 * s.kv_heads * s.head_dim * 2):
        a = model_ms(s, c.a, c.a_point, None, num_sms)
        b = model_ms(s, c.b, c.b_point, c.b_sm_budget, num_sms)
        full = model_ms(s, c.b, c.b_point, None, num_sms)
        # the GEMM slows by the share of SMs the other op holds; the other by memory contention
        share = (c.b_sm_budget or num_sms) / num_sms
        sa, sb = a * (1 + 0.6 * share), b * 1.25
        together = PairStats(_stats(max(sa, sb)), _stats(sa), _stats(sb), concurrent=True)
        interference.append(pair_record(c, _stats(a), _stats(b), together, _stats(full) if c.b_sm_budget else None))
    mlp = sum(model_ms(s, op, {"tokens": grid.micro_tokens}, None, num_sms) for op in ("gate_up", "down"))
    point = decode_point_for_kv(grid.micro_kv_bytes, grid.micro_context, 2 * s.kv_heads * s.head_dim * 2)
    attn = {sm: model_ms(s, "decode_attn", point, sm, num_sms) for sm in grid.micro_budgets}
    variants = [(sm, _stats(ms), PairStats(_stats(1.1 * max(mlp * 1.3, ms)), _stats(mlp * 1.3), _stats(ms * 1.2),
                                           True)) for sm, ms in attn.items()]
    micro = micro_pair_record(grid.micro_tokens, point, grid.micro_kv_bytes, _stats(mlp), _stats(attn[None]),
                              _stats(mlp + attn[None]), variants)
    return {
        "schema": SCHEMA, "kind": "profile", "run_id": "synthetic", "created": "1970-01-01T00:00:00+0000",
        "partial": False, "model": cfg.name, "tp": tp, "quick": quick, "grid": grid.name, "device": "synthetic",
        "shapes": s.to_dict(), "gpu": {"name": "synthetic", "num_sms": num_sms, "l2_mib": 50.0, "memory_gib": 80.0},
        "environment": {}, "peaks": {"bf16_tflops": PEAK_TFLOPS, "copy_gb_s": COPY_GB_S, "gemm": "synthetic",
                                     "copy": "synthetic"},
        "ops": ops, "interference": interference, "micro_pair": micro, "collectives": collectives(s),
        "nvml": summarize_samples([], available=False, why="synthetic"), "throttled": False, "errors": [],
        "notes": ["synthetic: a roofline model of a made-up GPU, not a measurement"], "wall_s": 0.0,
    }
