"""`nanotune profile`'s one entry point: peaks, every op alone, interference, the micro pair, NVML
throughout; writes `profile.json` (schema.py) and the plots into one run directory."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.markup import escape

from engine.presets import get_preset
from nanotune.errors import UserError
from nanotune.profile.interference import measure_interference, measure_micro_pair, pair_cases
from nanotune.profile.launch import launch_points, measure_launch
from nanotune.profile.measure import (
    Grid,
    count_points,
    decode_point_for_kv,
    default_grid,
    max_kv_blocks,
    measure_ops,
    measure_peaks,
    quick_grid,
    tiny_grid,
)
from nanotune.profile.nvml import NvmlSampler
from nanotune.profile.ops import GEMM_OPS, Shard, collectives, shard, shard_config
from nanotune.profile.power import measure_power, num_measurements
from nanotune.profile.rig import BLOCK_SIZE, LayerRig, num_rotations
from nanotune.profile.schema import PROFILE_FILE, SCHEMA
from nanotune.profile.sustained import measure_sustained, sustained_layers
from nanotune.profile.timing import Timer
from nanotune.profile.view import Steps

NUM_WORKSPACES = 3  # activation buffers rotated (a pair's two ops always use different ones)
KV_MEMORY_SHARE = 0.6  # of the memory left after weights and workspaces the KV cache may take


@dataclass(frozen=True)
class ProfileOptions:
    model: str
    tp: int = 1
    quick: bool = False
    device: str = "cuda"
    out: str | None = None  # a directory (gets profile.json + plots), or a .json path (plots beside it,
    #                         named <stem>-<plot>.png); default: a new results/<run-id>/
    results_dir: str | None = None
    plots: bool = True
    progress: bool = True
    grid: Grid | None = None  # tests pass a tiny one
    seed: int = 0
    sections: tuple[str, ...] | None = None  # only these measured sections (peaks and build always run)
    kv_cache_dtype: str = "auto"  # EngineConfig.kv_cache_dtype: attention and rope_kv run over this cache


def gpu_info(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"name": "cpu", "num_sms": None, "l2_mib": None, "memory_gib": None}
    p = torch.cuda.get_device_properties(device)
    l2 = getattr(p, "L2_cache_size", 0) or 0
    return {"name": p.name, "num_sms": p.multi_processor_count, "l2_mib": round(l2 / 2**20, 1),
            "memory_gib": round(p.total_memory / 2**30, 1)}


def _max_tokens(grid: Grid, kv_per_token: int) -> int:
    decode = [decode_point_for_kv(b, grid.pair_context, kv_per_token)["batch"] for b in grid.pair_kv_bytes]
    decode.append(decode_point_for_kv(grid.micro_kv_bytes, grid.micro_context, kv_per_token)["batch"])
    return max(grid.tokens + grid.pair_tokens + grid.pair_memory_tokens + grid.prefill_tokens
               + grid.decode_batches + tuple(decode) + tuple(t for t, _ in grid.pair_prefill) + (grid.micro_tokens,))


def build_rig(cfg, sh: Shard, device: torch.device, dtype: torch.dtype, grid: Grid, l2_bytes: int,
              notes: list[str], seed: int, kv_cache_dtype: str = "auto") -> LayerRig:
    """The engine model of the shard with enough layers, workspaces and KV blocks to rotate past L2."""
    from engine.config import kv_cache_dtype_bytes

    e = dtype.itemsize
    min_weight = min(n * k for n, k in map(sh.gemm_nk, GEMM_OPS)) * e
    layers = num_rotations(min_weight, l2_bytes, cap=8, floor=2)
    kv_per_token = 2 * sh.kv_heads * sh.head_dim * kv_cache_dtype_bytes(kv_cache_dtype, e)
    blocks = max_kv_blocks(grid, kv_per_token, l2_bytes)
    max_tokens = _max_tokens(grid, kv_per_token)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        h, q, kv, i = sh.hidden, sh.heads * sh.head_dim, sh.kv_heads * sh.head_dim, sh.intermediate
        per_layer = h * (q + 2 * kv) + q * h + 3 * h * i
        weights = ((1 + layers) * per_layer + 2 * sh.vocab * h) * e
        workspaces = NUM_WORKSPACES * max_tokens * (3 * h + q + 2 * kv + q + 3 * i) * e
        budget = int(KV_MEMORY_SHARE * (free - weights - workspaces - (2 << 30)))
        block_bytes = BLOCK_SIZE * kv_per_token
        if blocks * block_bytes > budget:
            blocks = max(1, budget // block_bytes)
            notes.append(f"KV cache capped at {blocks * block_bytes / 2**30:.1f} GiB by free memory: the largest "
                         "attention points rotate over fewer KV regions, or are left out (see errors)")
    rig = LayerRig(shard_config(cfg, sh, 1 + layers), device, dtype, num_kv_blocks=blocks, max_tokens=max_tokens,
                   num_workspaces=NUM_WORKSPACES, seed=seed, kv_cache_dtype=kv_cache_dtype)
    if l2_bytes:
        notes.append(f"cold operands: weights rotate over {layers} layers, activations over {NUM_WORKSPACES} "
                     f"workspaces, KV over up to 8 disjoint regions ({blocks * BLOCK_SIZE * kv_per_token / 2**30:.2f}"
                     f" GiB cache), so repeats do not find their bytes in L2 ({l2_bytes / 2**20:.0f} MiB)")
    return rig


STATIC_NOTES = [
    "GEMMs (qkv, o_proj, gate_up, down) are timed at the full GPU only: torch/cuBLAS has no SM-partition control "
    "that the engine uses, so no per-SM-budget curve is invented for them",
    "sm_budget is decode attention's max_programs (a persistent grid of that many programs on a plain stream), "
    "the engine's SM-partitioning method today; green contexts and cuBLAS SM targets are not measured",
    "memory-bound ops and prefill attention ignore SM budgets in the engine today: timed at their full grid",
    "attn_norm and mlp_norm are timed as layers >= 1 run them (fused residual add + RMSNorm); layer 0's "
    "embedding lookup, the final norm, lm_head and sampling (once per iteration, not per layer) are not profiled",
    "interference: the GEMM runs at the full GPU on stream 0, so the 'ideal partition' of DESIGN.md (a GEMM on "
    "part of the SMs) cannot be predicted from this profile; predicted_ms = max of the alone times",
]


def run_profile(opts: ProfileOptions, console=None) -> tuple[dict, Path]:
    t_start = time.perf_counter()
    cfg = get_preset(opts.model)
    try:
        sh = shard(cfg, opts.tp)
    except ValueError as e:
        raise UserError(str(e)) from None
    device = torch.device(opts.device)
    if device.type == "cuda":
        device = torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
        torch.cuda.set_device(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    kv_dtype = _kv_dtype(opts.kv_cache_dtype, dtype, device)
    gpu = gpu_info(device)
    l2_bytes = int((gpu["l2_mib"] or 0) * 2**20)
    grid = opts.grid or (tiny_grid() if device.type != "cuda" else
                         quick_grid(gpu["num_sms"]) if opts.quick else default_grid(gpu["num_sms"]))
    run_dir, file = output_paths(opts, cfg.name)
    notes = list(STATIC_NOTES) + list(grid.notes)
    from nanotune.profile.collectives import peers_missing

    no_peers = peers_missing(sh.tp, device.type) if sh.tp > 1 else None
    if no_peers:
        notes.append(f"tp {sh.tp}: shard shapes measured on one GPU; the all-reduces after o_proj and down are "
                     f"listed under collectives but not measured ({no_peers}; scripts/tp_bench.py and a profile "
                     "on a machine with the GPUs time it over real ranks)")
    if device.type != "cuda":
        notes.append("device cpu: a code-path check with the torch reference kernels; the times say nothing "
                     "about any GPU, and interference ran each pair one op after the other (no streams)")
    from nanotune.results import environment

    profile = {"schema": SCHEMA, "kind": "profile", "run_id": file.stem if file.name != PROFILE_FILE else run_dir.name,
               "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "partial": True, "model": cfg.name, "tp": sh.tp,
               "quick": opts.quick, "grid": grid.name, "device": str(device), "shapes": sh.to_dict(), "gpu": gpu,
               "kv_cache_dtype": opts.kv_cache_dtype, "kv_element_bytes": kv_dtype.itemsize,
               "environment": environment(), "peaks": {}, "ops": {}, "interference": [], "micro_pair": None,
               "launch": None, "sustained": None, "power": None,
               "collectives": collectives(sh), "errors": [], "notes": notes}
    timer = Timer(device, grid.warmup, grid.repeats)
    errors = profile["errors"]
    state = {}

    def peaks():
        profile["peaks"] = measure_peaks(device, timer, grid)
        steps.done("peaks", f"{profile['peaks']['bf16_tflops']:.1f} TFLOP/s, {profile['peaks']['copy_gb_s']:.0f} GB/s")

    def comm():  # before the rig: the ranks' GPUs are still empty
        from nanotune.profile.collectives import PROFILE_SIZES_MIB, measure_allreduce, profile_entry

        sizes = PROFILE_SIZES_MIB if device.type == "cuda" else PROFILE_SIZES_MIB[:2]
        steps.start("all-reduce", 1)
        m = measure_allreduce(sh.tp, "nccl", device.type, sizes, repeats=10 if opts.quick else 20)
        wrong = [r["size_mib"] for r in m["sizes"] if not r["correct"]]
        if wrong:
            raise RuntimeError(f"all-reduce over {sh.tp} ranks summed wrongly at {wrong} MiB: not recorded")
        profile["collectives"]["all_reduce"] = profile_entry(profile["collectives"]["all_reduce"], m)
        steps.advance("all-reduce")

    def build():
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the peak's buffers, before free memory sizes the KV cache
        state["rig"] = rig = build_rig(cfg, sh, device, dtype, grid, l2_bytes, notes, opts.seed,
                                       opts.kv_cache_dtype)
        profile["method"] = _method(timer, rig, l2_bytes)

    def alone():
        steps.start("ops alone", count_points(grid))
        profile["ops"] = measure_ops(state["rig"], timer, sh, grid, l2_bytes, steps.advance, errors, nv.section)

    def pairs():
        cases = pair_cases(grid, state["rig"].kv_bytes_per_token)
        steps.start("interference", len(cases))
        profile["interference"] = measure_interference(state["rig"], timer, cases, l2_bytes, steps.advance, errors)

    def launch():
        points = launch_points(grid)
        steps.start("launch gaps", len(points))
        profile["launch"] = measure_launch(state["rig"], timer, l2_bytes, points, steps.advance)

    def sustained():
        layers = sustained_layers(grid)
        steps.start("sustained load", len(layers))
        profile["sustained"] = measure_sustained(state["rig"], timer, l2_bytes, layers, step=steps.advance)

    def power():
        steps.start("power limits", num_measurements(gpu["num_sms"], opts.quick, device.type == "cuda"))
        profile["power"] = measure_power(state["rig"], sh, grid, l2_bytes, opts.quick, nv, step=steps.advance)

    def micro():
        steps.start("micro pair", 1)
        profile["micro_pair"] = measure_micro_pair(state["rig"], timer, grid, l2_bytes)
        steps.advance("micro pair")

    with NvmlSampler(device.index or 0) as nv, Steps(console, opts.progress) as steps:
        try:
            ok = True
            comm_section = [("collectives", comm)] if sh.tp > 1 and not no_peers else []
            for name, fn in (("peaks", peaks), *comm_section, ("build", build), ("ops", alone),
                             ("interference", pairs),
                             ("micro_pair", micro), ("launch", launch),
                             ("sustained", sustained), ("power", power)):
                if name not in ("peaks", "collectives", "build") and "rig" not in state:
                    break  # nothing to measure on without the model
                if opts.sections is not None and name not in ("peaks", "build") and name not in opts.sections:
                    continue
                with nv.section(name):
                    ok = _guarded(name, fn, errors, steps) and ok
            profile["partial"] = not ok
        except KeyboardInterrupt:
            notes.append("interrupted: this profile is partial")
    profile["nvml"] = nv.summary()
    profile["throttled"] = bool(profile["nvml"].get("throttled"))
    if not nv.available:
        notes.append(f"NVML unavailable ({nv.why}): clocks, power and throttling are unknown")
    elif profile["throttled"]:
        notes.append("the GPU throttled during: " + ", ".join(profile["nvml"].get("throttled_sections", [])))
    if errors:
        notes.append(f"{len(errors)} points failed and are left out (see errors)")
    profile["wall_s"] = round(time.perf_counter() - t_start, 1)
    from nanotune.results import write_json_atomic

    write_json_atomic(file, profile)  # the measurements are safe before any plotting
    if opts.plots and profile["ops"]:
        from nanotune.profile.plots import write_plots

        try:
            prefix = "" if file.name == PROFILE_FILE else f"{file.stem}-"
            profile["plots"] = [p.name for p in write_plots(profile, run_dir, prefix)]
        except Exception as e:  # a plot is not worth losing the run over
            notes.append(f"plots failed: {type(e).__name__}: {e}"[:300])
        write_json_atomic(file, profile)
    return profile, run_dir


def _kv_dtype(name: str, dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The cache's torch dtype, through the engine's own resolution; a card without fp8 is one line, exit 2."""
    from engine.errors import EngineConfigError
    from engine.runner import resolve_kv_cache_dtype

    try:
        return resolve_kv_cache_dtype(name, dtype, device)
    except EngineConfigError as e:
        raise UserError(f"--kv-cache-dtype {name}: {e}") from None


def _guarded(name: str, fn, errors: list, steps) -> bool:
    """Run one section; a failure is recorded (with the end of its traceback) and the run goes on, so one
    broken section does not cost the others' measurements."""
    try:
        fn()
        return True
    except Exception as exc:
        tb = traceback.format_exc(limit=-3)
        steps.console.print(f"[red]section {name} failed:[/] {escape(tb)}", highlight=False)
        errors.append({"op": f"section:{name}", "point": {}, "sm_budget": None,
                       "error": f"{type(exc).__name__}: {exc} | {tb[-400:]}"[:700]})
        _recover()
        return False


def _recover() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _method(timer: Timer, rig: LayerRig, l2_bytes: int) -> dict:
    how = ("CUDA events around each repeat, all repeats queued behind a GPU sleep so host launch gaps are not "
           "timed; kernels under 50 us run several calls per repeat" if timer.is_cuda else "host perf_counter")
    return {"timer": how, "warmup": timer.warmup, "repeats": timer.repeats, "statistic": "median",
            "dtype": str(rig.dtype).removeprefix("torch."), "kv_dtype": str(rig.kv_dtype).removeprefix("torch."),
            "kernels": rig.kernels, "block_size": BLOCK_SIZE,
            "weight_layers": len(rig.layers), "workspaces": len(rig.workspaces), "kv_blocks": rig.num_kv_blocks,
            "l2_mib": round(l2_bytes / 2**20, 1)}


def output_paths(opts: ProfileOptions, model: str) -> tuple[Path, Path]:
    """(directory, profile file): --out DIR, --out FILE.json (e.g. results/reference/h100/
    profile-llama-3-8b-tp1.json, where search looks), or a new results/<run-id>/."""
    if opts.out:
        path = Path(opts.out)
        if path.suffix == ".json":
            path.parent.mkdir(parents=True, exist_ok=True)
            return path.parent, path
        path.mkdir(parents=True, exist_ok=True)
        return path, path / PROFILE_FILE
    from nanotune.results import new_run_dir

    label = f"{model}-tp{opts.tp}" + ("-quick" if opts.quick else "") + ("" if opts.kv_cache_dtype == "auto"
                                                                          else f"-kv{opts.kv_cache_dtype}")
    run_dir = new_run_dir("profile", label, root=opts.results_dir)
    return run_dir, run_dir / PROFILE_FILE
