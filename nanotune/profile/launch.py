"""How long a stream idles between two kernels of a layer: launched one by one from Python (eager), and
replayed from a CUDA graph (what the engine does for every iteration whose bucket it has captured).

The ops' alone times (the Timer, queued behind a GPU sleep) are GPU time only, back to back. A real
iteration adds something between kernels: the host's launch of each op when eager, much less in a graph.
The performance model adds that gap after every kernel, so the profile measures it per kernel, on the rig,
for a decode-only layer in the engine's op order (no prefill attention) at a few batch sizes:
- sum: the layer's ops timed alone, summed;
- eager: `EAGER_LAYERS` layers launched one after another (rotating weights), host wall clock between two
  synchronizes, per layer (the host launches while earlier kernels run, as an eager iteration does);
- graph: `GRAPH_LAYERS` such layers captured in one CUDA graph, its replays timed by the Timer, per layer.
gap = (layer time - sum) / ops. Small batches show the host's floor; large ones how much a graph still adds.
"""

from __future__ import annotations

import time

import torch

from engine.plan import LAYER_OPS
from nanotune.profile.measure import runner_for
from nanotune.profile.rig import LayerRig
from nanotune.profile.timing import Timer

EAGER_LAYERS = 64
GRAPH_LAYERS = 8


def launch_points(grid) -> tuple[tuple[int, int], ...]:
    """(decode batch, context) of each measured layer: the grid's smallest, middle and largest decode batch."""
    batches = sorted(set(grid.decode_batches))
    context = min(grid.decode_contexts)
    return tuple((b, context) for b in sorted({batches[0], batches[len(batches) // 2], batches[-1]}))


def layer_points(batch: int, context: int) -> list[tuple[str, dict]]:
    """A decode-only layer's ops in the engine's order with their input points."""
    return [(op, {"batch": batch, "context": context} if op == "decode_attn" else {"tokens": batch})
            for op in LAYER_OPS if op != "prefill_attn"]


def chain(fns):
    """One call that runs each timed op fn(i) in turn: a layer, on copy i of every op's inputs."""
    def layer(i: int) -> None:
        for f in fns:
            f(i)

    return layer


def measure_launch(rig: LayerRig, timer: Timer, l2_bytes: int, points, step=None) -> dict:
    """{"points": [{batch, context, ops, sum_alone_ms, eager_layer_ms, eager_gap_ms, graph_layer_ms,
    graph_gap_ms}], "method"}; the graph fields are None off a GPU (no CUDA graphs there)."""
    out = []
    for batch, context in points:
        fns = [runner_for(rig, op, pt, None, l2_bytes) for op, pt in layer_points(batch, context)]
        alone = sum(timer.time(f).ms for f in fns)
        layer = chain(fns)
        eager = _eager_layer_ms(rig.device, layer)
        graph = _graph_layer_ms(rig.device, timer, layer) if rig.device.type == "cuda" else None
        n = len(fns)
        out.append({"batch": batch, "context": context, "ops": n, "sum_alone_ms": round(alone, 5),
                    "eager_layer_ms": round(eager, 5), "eager_gap_ms": round((eager - alone) / n, 5),
                    "graph_layer_ms": None if graph is None else round(graph, 5),
                    "graph_gap_ms": None if graph is None else round((graph - alone) / n, 5)})
        if step:
            step("launch")
    return {"points": out,
            "method": f"decode-only layer (ops: {', '.join(op for op, _ in layer_points(1, 1))}); eager: "
                      f"{EAGER_LAYERS} layers launched back to back, host clock between synchronizes; graph: "
                      f"{GRAPH_LAYERS} layers in one CUDA graph, replays timed with CUDA events behind a sleep; "
                      "gap = (per-layer time - sum of the ops alone) / ops"}


def _eager_layer_ms(device: torch.device, layer) -> float:
    for i in range(3):  # compiled and warm
        layer(i)
    _sync(device)
    t0 = time.perf_counter()
    for i in range(EAGER_LAYERS):
        layer(i)
    _sync(device)
    return 1e3 * (time.perf_counter() - t0) / EAGER_LAYERS


def _graph_layer_ms(device: torch.device, timer: Timer, layer) -> float:
    g = capture_layers(device, layer, GRAPH_LAYERS)
    return timer.time(lambda i: g.replay()).ms / GRAPH_LAYERS


def capture_layers(device: torch.device, layer, count: int) -> torch.cuda.CUDAGraph:
    """`count` calls of layer(i) (i = 0..count-1, rotating weights) captured in one CUDA graph."""
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # compiles and cuBLAS's choices outside the capture
        for i in range(count):
            layer(i)
    torch.cuda.current_stream(device).wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(count):
            layer(i)
    return g


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
