"""Synthetic profiles for the search tests (schema "nanotune.profile/1"), written into tmp_path.

`toy_profile`: round numbers for schedules computed by hand. `h200_like_profile`: llama-3-8b shapes with
times of the right order, from a roofline calibrated on the measured sequential run (results/reference/
h200/engine-sequential.json: e.g. gate_up 0.276 ms at 739 tokens, decode attention 0.37 ms per layer over
243 sequences of ~1,280 tokens) and interference that makes plain-stream overlap lose, as it did.
"""

import json

from nanotune.search.profiledata import load_profile, prefill_attended

TOY_MS = {"attn_norm": 1, "qkv": 2, "rope_kv": 1, "o_proj": 2, "mlp_norm": 1, "gate_up": 4, "silu_mul": 1,
          "down": 2}  # at 100 tokens, linear in tokens
TOY_DECODE_MS = 4  # 100 sequences x 10 tokens of context
KINDS = {"qkv": "gemm", "o_proj": "gemm", "gate_up": "gemm", "down": "gemm", "attn_norm": "memory",
         "rope_kv": "memory", "mlp_norm": "memory", "silu_mul": "memory", "decode_attn": "attention",
         "prefill_attn": "attention"}


def _pair(a, b, ap, bp, sa, sb, budget=None):
    return {"a": a, "b": b, "a_point": ap, "b_point": bp, "b_sm_budget": budget, "alone_a_ms": 1.0,
            "alone_b_ms": 1.0, "together_ms": max(sa, sb), "a_ms": sa, "b_ms": sb, "slowdown_a": sa,
            "slowdown_b": sb}


def toy_profile_dict(slowdown: float | None = 1.0, num_layers: int = 2, tp: int = 1) -> dict:
    """Two layers; every op linear in its size; a pair table of `slowdown` for each kind pair that can
    overlap in the test plans (None: no table, the documented default applies)."""
    ops = {op: {"kind": KINDS[op], "points": [{"tokens": 50, "sm_budget": None, "ms": ms / 2},
                                              {"tokens": 100, "sm_budget": None, "ms": ms}]}
           for op, ms in TOY_MS.items()}
    ops["decode_attn"] = {"kind": "attention", "points": [
        {"batch": 50, "context": 10, "sm_budget": None, "ms": TOY_DECODE_MS / 2},
        {"batch": 100, "context": 10, "sm_budget": None, "ms": TOY_DECODE_MS}]}
    ops["prefill_attn"] = {"kind": "attention",
                           "points": [{"tokens": 100, "context": 100, "seqs": 1, "sm_budget": None, "ms": 1.0}]}
    table = []
    if slowdown is not None:
        table = [_pair("gate_up", "decode_attn", {"tokens": 50}, {"batch": 50, "context": 10}, slowdown, slowdown),
                 _pair("attn_norm", "decode_attn", {"tokens": 50}, {"batch": 50, "context": 10}, slowdown,
                       slowdown)]
    return envelope("toy", tp, {"hidden": 64, "heads": 4, "kv_heads": 2, "head_dim": 16, "intermediate": 128,
                                "vocab": 512, "num_layers": num_layers, "params_per_gpu": 100_000},
                    {"name": "Toy GPU", "num_sms": 100}, {"bf16_tflops": 100.0, "copy_gb_s": 1000.0}, ops, table)


def envelope(model, tp, shapes, gpu, peaks, ops, table) -> dict:
    """The fields nanotune.profile.schema.load_profile requires around the ones search reads."""
    return {"schema": "nanotune.profile/1", "kind": "profile", "model": model, "tp": tp, "shapes": shapes,
            "gpu": gpu, "peaks": peaks, "ops": ops, "interference": table, "micro_pair": None,
            "collectives": {} if tp == 1 else {"all_reduce": {"after": ["o_proj", "down"], "per_layer": 2,
                                                              "bytes_per_token": 2 * shapes["hidden"],
                                                              "ranks": tp, "measured": False}},
            "nvml": {"available": False}, "throttled": False, "notes": ["synthetic (tests)"], "wall_s": 1.0}


def write(tmp_path, data: dict, name: str = "profile.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def toy_profile(tmp_path, **kw):
    return load_profile(write(tmp_path, toy_profile_dict(**kw)))


# ---- a realistic llama-3-8b / H200-like profile ---------------------------------------------------------
GEMM_TFLOPS = {64: 140, 128: 272, 256: 542, 512: 668, 1024: 700, 2048: 705, 4096: 705, 8192: 705}  # DESIGN.md
TOKENS = sorted(GEMM_TFLOPS)
DECODE_BW_FRAC = {16: 0.125, 33: 0.267, 44: 0.358, 66: 0.535, 132: 0.827, None: 0.939}  # kernel_check.json
COPY_GB_S = 4245.0


def h200_like_profile_dict(model: str = "llama-3-8b", tp: int = 1, shapes: dict | None = None) -> dict:
    s = shapes or {"hidden": 4096, "heads": 32, "kv_heads": 8, "head_dim": 128, "intermediate": 14336,
                   "vocab": 128256, "num_layers": 32}
    h, d = s["hidden"], s["head_dim"]
    heads, kv, inter = s["heads"] // tp, max(1, s["kv_heads"] // tp), s["intermediate"] // tp
    gemms = {"qkv": (h, (heads + 2 * kv) * d), "o_proj": (heads * d, h), "gate_up": (h, 2 * inter),
             "down": (inter, h)}
    ops = {}
    for op, (k, n) in gemms.items():
        pts = [{"tokens": t, "sm_budget": None,
                "ms": 0.004 + max(2 * t * k * n / (GEMM_TFLOPS[t] * 1e9), k * n * 2 / (COPY_GB_S * 1e6))}
               for t in TOKENS]
        ops[op] = {"kind": "gemm", "points": pts}
    for op, width in (("attn_norm", 3 * h), ("rope_kv", (heads + 2 * kv) * d), ("mlp_norm", 3 * h),
                      ("silu_mul", 3 * inter)):
        ops[op] = {"kind": "memory", "points": [{"tokens": t, "sm_budget": None,
                                                 "ms": 0.03 + t * width * 2 / (COPY_GB_S * 1e6)} for t in TOKENS]}
    dec = []
    for batch in (16, 64, 256, 512):
        for ctx in (256, 1024, 4096):
            for budget, frac in DECODE_BW_FRAC.items():
                gb = batch * ctx * kv * d * 2 * 2 / 1e9
                dec.append({"batch": batch, "context": ctx, "sm_budget": budget,
                            "ms": 0.008 + gb / (frac * COPY_GB_S) * 1e3})
    ops["decode_attn"] = {"kind": "attention", "points": dec}
    ops["prefill_attn"] = {"kind": "attention", "points": [  # 4 FLOPs per head dim per attended key, 300 TF/s
        {"tokens": t, "context": c, "seqs": t // 512 or 1, "sm_budget": None,
         "ms": 0.01 + 4 * t * prefill_attended({"tokens": t, "context": c, "seqs": t // 512 or 1}) * heads * d / 300e9}
        for t in (128, 512, 2048) for c in (0, 1024, 4096)]}
    table = []
    for g in ("qkv", "gate_up", "down", "o_proj"):
        for t in (256, 1024):
            table.append(_pair(g, "decode_attn", {"tokens": t}, {"batch": 256, "context": 1024}, 1.9, 1.7))
            table.append(_pair(g, "decode_attn", {"tokens": t}, {"batch": 256, "context": 1024}, 1.25, 1.1, 44))
    for m in ("attn_norm", "rope_kv", "mlp_norm", "silu_mul"):
        table.append(_pair(m, "decode_attn", {"tokens": 512}, {"batch": 256, "context": 1024}, 2.2, 1.5))
    table.append(_pair("gate_up", "prefill_attn", {"tokens": 512}, {"tokens": 512, "context": 2048, "seqs": 1},
                       1.9, 1.9))
    params = {"llama-3-8b": 8_030_261_248, "llama-3-70b": 70_553_706_496}.get(model, 8_000_000_000)
    shard = {**s, "heads": heads, "kv_heads": kv, "intermediate": inter, "params_per_gpu": params // tp}
    return envelope(model, tp, shard, {"name": "NVIDIA H200", "num_sms": 132},
                    {"bf16_tflops": 792.0, "copy_gb_s": COPY_GB_S}, ops, table)


LLAMA_70B_SHAPES = {"hidden": 8192, "heads": 64, "kv_heads": 8, "head_dim": 128, "intermediate": 28672,
                    "vocab": 128256, "num_layers": 80}


def test_fixtures_load_and_answer():
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        p = load_profile(write(Path(tmp), h200_like_profile_dict()))
        t = p.alone_ms("gate_up", {"tokens": 739})
        assert 0.2 < t < 0.35  # measured 0.276 ms per layer at 739 tokens
        dec = p.alone_ms("decode_attn", {"batch": 243, "context": 1280})
        assert 0.25 < dec < 0.45  # measured 0.367 ms per layer
