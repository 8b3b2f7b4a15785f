"""How much slower the GPU runs a layer under sustained load than in the profile's short measurements.

The profile times each op for a few milliseconds at a time, queued behind a sleep: the card is cool and at
its boost clock. A serving run keeps it busy for minutes at its power limit, where the SM clock drops (an
H200 at 700 W: sw_power_cap). Compute-bound kernels slow with the clock; memory-bound ones much less. So
the profile measures both kinds of layer, as a CUDA graph of GRAPH_LAYERS layers:
- cold: its replays timed like any op (behind a sleep, short);
- sustained: replayed back to back for SUSTAIN_S seconds, CUDA events around every chunk of replays, the
  median of the second half;
for a compute-bound layer (a prefill chunk of the grid's largest pair size: GEMMs and prefill attention) and
a memory-bound one (the grid's largest decode batch: weight- and KV-bound). The performance model divides
the sustained time by the sum of the layer's ops' alone times (search.profiledata.sustained_factor) and
scales each op by the factor of the bound its point is under. `vs_cold` (sustained / cold) only shows how
fast the cap engages: on an H200 the cold replays (a few hundred ms) were already at the capped clock while
the ops' own short timings were not (the figures: README and the reference profiles' sustained section).
"""

from __future__ import annotations

import statistics
import time

import torch

from engine.plan import LAYER_OPS
from nanotune.profile.launch import GRAPH_LAYERS, capture_layers, chain
from nanotune.profile.measure import prefill_point, runner_for
from nanotune.profile.rig import LayerRig
from nanotune.profile.timing import Timer

SUSTAIN_S = 3.0
CHUNK_MS = 5.0  # replays between two events (event resolution; the queue stays short)
MAX_AHEAD = 20  # chunks the host may enqueue ahead of the GPU


def sustained_layers(grid) -> dict[str, list[tuple[str, dict]]]:
    """The two layers: {"compute": prefill-only ops at the grid's largest pair size, "memory": the
    grid's largest decode batch at its longest context}."""
    tokens = max(grid.pair_tokens)
    prefill = prefill_point(tokens, 0, grid.prefill_chunk)
    compute = [(op, prefill if op == "prefill_attn" else {"tokens": tokens}) for op in LAYER_OPS
               if op != "decode_attn"]
    batch, context = max(grid.decode_batches), max(grid.decode_contexts)
    memory = [(op, {"batch": batch, "context": context} if op == "decode_attn" else {"tokens": batch})
              for op in LAYER_OPS if op != "prefill_attn"]
    return {"compute": compute, "memory": memory}


def measure_sustained(rig: LayerRig, timer: Timer, l2_bytes: int, layers: dict, seconds: float | None = None,
                      step=None) -> dict:
    """{"points": [{bound, ops, points, cold_layer_ms, sustained_layer_ms, vs_cold}], "seconds", "method"}; no
    points off a GPU (nothing throttles a CPU's torch ops the same way, and there are no graphs)."""
    out = []
    seconds = SUSTAIN_S if seconds is None else seconds
    if rig.device.type == "cuda":
        for bound, points in layers.items():
            layer = chain([runner_for(rig, op, pt, None, l2_bytes) for op, pt in points])
            g = capture_layers(rig.device, layer, GRAPH_LAYERS)
            cold = timer.time(lambda i, g=g: g.replay()).ms
            hot = _sustained_ms(g, cold, seconds)
            out.append({"bound": bound, "ops": [op for op, _ in points], "points": [pt for _, pt in points],
                        "cold_layer_ms": round(cold / GRAPH_LAYERS, 5),
                        "sustained_layer_ms": round(hot / GRAPH_LAYERS, 5), "vs_cold": round(hot / cold, 4)})
            if step:
                step("sustained")
    return {"points": out, "seconds": seconds,
            "method": f"{GRAPH_LAYERS} layers in one CUDA graph; cold: replays behind a sleep (the op timer); "
                      f"sustained: replayed back to back for {seconds:g} s, the median replay of the second "
                      "half; the model's factor = sustained / the sum of the ops alone"}


def _sustained_ms(g, cold_ms: float, seconds: float) -> float:
    chunk = max(1, round(CHUNK_MS / max(cold_ms, 1e-3)))
    marks = []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for _ in range(chunk):
            g.replay()
        e1.record()
        marks.append((e0, e1))
        if len(marks) > MAX_AHEAD:
            marks[-MAX_AHEAD][1].synchronize()  # the clock measures the GPU's time, not the host's queue
    torch.cuda.synchronize()
    late = marks[len(marks) // 2:]
    return statistics.median(e0.elapsed_time(e1) / chunk for e0, e1 in late)
