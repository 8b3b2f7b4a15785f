"""How much Python the engine spends per step against the GPU time of that step (the host-time target of
issue 14), read through the engine's observer API, plus an optional cProfile of the steady steps.

A case runs one workload offline with async scheduling (as bench runs it) and records, for every launched
step: its composition, host phases (engine/observe.py), the GPU time of its iteration (CUDA events around
forward + logits + sampling) and whether it replayed a CUDA graph. The steady window is the steps whose
sequence count is at least `steady_frac` of the case's largest (ramp-up and drain excluded); its summary
gives mean host ms, mean GPU ms and their ratio, split into decode-only and mixed steps, with the steps that
captured a graph counted apart (a capture is a one-time host cost).
"""

from __future__ import annotations

import cProfile
import io
import pstats
import statistics
import time

import numpy as np

PHASES = ("schedule", "launch", "resolve", "wait", "host")


def _mean(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return round(statistics.fmean(vals), 3) if vals else None


def summarize(rows: list[dict]) -> dict:
    """Mean phases, GPU ms and host/GPU over a set of step rows."""
    if not rows:
        return {"num_steps": 0}
    out = {"num_steps": len(rows), "mean_tokens": _mean(rows, "tokens"), "mean_seqs": _mean(rows, "seqs"),
           "replayed_share": round(sum(r["replayed"] for r in rows) / len(rows), 4),
           **{f"mean_{k}_ms": _mean(rows, f"{k}_ms") for k in PHASES}, "mean_gpu_ms": _mean(rows, "gpu_ms")}
    if out["mean_gpu_ms"]:
        out["host_over_gpu"] = round(out["mean_host_ms"] / out["mean_gpu_ms"], 4)
    return out


def top_functions(prof: cProfile.Profile, n: int = 30) -> list[dict]:
    """The n functions with the most own time (cProfile inflates every call; read shares, not ms)."""
    st = pstats.Stats(prof, stream=io.StringIO())
    rows = []
    for (file, line, fn), (_cc, nc, tt, ct, _callers) in st.stats.items():
        rows.append({"function": f"{'/'.join(file.rsplit('/', 2)[-2:])}:{line}({fn})",
                     "calls": nc, "tottime_s": round(tt, 4), "cumtime_s": round(ct, 4)})
    rows.sort(key=lambda r: -r["tottime_s"])
    return rows[:n]


def run_case(engine, requests, steady_frac: float = 0.9, profile_steps: int = 0, seed: int = 0) -> dict:
    """Run `requests` (workloads TraceRequests) to completion on `engine`; -> per-step summary dict.

    profile_steps > 0: cProfile that many steps once the batch first reaches the steady window."""
    rng = np.random.default_rng(seed)
    from engine import SamplingParams

    for r in requests:
        ids = list(r.prompt_ids) if r.prompt_ids else rng.integers(0, engine.vocab_size, r.prompt_len).tolist()
        engine.add_request(ids, SamplingParams(max_tokens=r.output_len, ignore_eos=True))
    rows: list[dict] = []
    records = []
    mg = engine.runner.mixed_graphs
    dg_before = [0]

    def observe(rec) -> None:
        if not rec.launched:
            return
        captured = False
        if mg is not None:  # a mixed step that ran in a bucket's layout without replaying: it captured
            runs = mg.num_runs - mg.num_replays
            captured, dg_before[0] = runs > dg_before[0], runs
        records.append(rec)
        rows.append({"tokens": rec.num_tokens, "decode": rec.num_decode, "seqs": rec.num_seqs,
                     "replayed": rec.replayed, "captured": captured,
                     **{f"{k}_ms": 1e3 * getattr(rec, f"{k}_s") for k in PHASES}})

    engine.add_observer(observe, gpu_time=True)
    prof = cProfile.Profile() if profile_steps else None
    profiled, t0 = 0, time.perf_counter()
    try:
        while engine.has_unfinished():
            steady_now = prof is not None and profiled < profile_steps and \
                len(engine.scheduler.running) >= steady_frac * engine.config.max_num_seqs
            if steady_now:
                prof.enable()
            engine.step()
            if steady_now:
                prof.disable()
                profiled += 1
    finally:
        engine.remove_observer(observe)
    wall = time.perf_counter() - t0
    for row, rec in zip(rows, records, strict=True):
        row["gpu_ms"] = rec.gpu_ms()  # read after the run: reading one waits for its iteration
    peak = max((r["seqs"] for r in rows), default=0)
    steady = [r for r in rows if r["seqs"] >= steady_frac * peak and not r["captured"]]
    out = {"num_requests": len(requests), "wall_s": round(wall, 3), "num_steps": len(rows), "peak_seqs": peak,
           "num_captures": sum(r["captured"] for r in rows),
           "capture_host_ms_total": round(sum(r["host_ms"] for r in rows if r["captured"]), 1),
           "all_steps": summarize(rows),
           "steady": {"decode_only": summarize([r for r in steady if r["tokens"] == r["decode"]]),
                      "mixed": summarize([r for r in steady if r["tokens"] > r["decode"]]),
                      "all": summarize(steady)}}
    if prof is not None:
        out["profile"] = {"steps": profiled, "top_by_own_time": top_functions(prof)}
    return out
