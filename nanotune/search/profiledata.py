"""A profile ("nanotune.profile/1", written by `nanotune profile`) as the performance model reads it:
an op's time alone at a size and SM budget, and its slowdown beside another op.

    profile = load_profile("results/reference/h200/profile-llama-3-8b-tp1.json")
    profile.alone_ms("gate_up", {"tokens": 1024})
    profile.alone_ms("decode_attn", {"batch": 256, "context": 1280}, sm_budget=44)
    profile.slowdown("gate_up", {"tokens": 512}, None, "decode_attn", {"batch": 128, "context": 1280}, 44)
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from nanotune.errors import UserError
from nanotune.profile.ops import KINDS, gemm_cost
from nanotune.search.interp import curve, interp_budget, interp_loglog

SCHEMA = "nanotune.profile/1"
# the layer's op kinds come from their owner (nanotune.profile.ops); the profile also times these
DEFAULT_KINDS = {**KINDS, "lm_head": "gemm", "all_reduce": "comm", "all_gather": "comm"}
# Slowdown of each of two kernels overlapped on plain streams when the profile measured neither the pair
# nor any pair of the same kinds: 2.0 = each runs at half speed, so overlap gains nothing over running back
# to back. Chosen because that is what was measured on an H200 (a GEMM pair beside a decode attention on two
# plain streams took no less than back to back: results/reference/h200/partition-probe.json); assuming ideal
# overlap would send the search after plans that lose on the GPU (the two-nano-batch plan measured slower
# than sequential: engine-overlap*.json).
DEFAULT_SLOWDOWN = 2.0
# Collectives use few SMs and mostly the links: a mild default when the profile has no comm pair.
DEFAULT_COMM_SLOWDOWN = 1.1


def read_profile_json(path: str | Path) -> dict:
    """The profile as a dict, through nanotune.profile's own loader (which validates its schema), so the
    writer and this reader agree on one format."""
    from nanotune.profile.schema import load_profile

    loaded = load_profile(Path(path))
    return loaded if isinstance(loaded, dict) else loaded.to_dict()


def _x(op: str, point: dict) -> float:
    """The size an op's time grows with: tokens for GEMMs and element-wise ops, KV read (batch x context)
    for decode attention, query-key pairs (tokens x mean keys attended) for prefill attention."""
    if op == "decode_attn":
        return float(point.get("batch", 0)) * float(point.get("context", 0))
    if op == "prefill_attn":
        return float(point.get("tokens", 0)) * prefill_attended(point)
    return float(point.get("tokens", 0))


def prefill_attended(point: dict) -> float:
    """Mean keys a query row attends. A batch's instance names it ("attended"); a profiled point is `seqs`
    chunks of tokens/seqs rows after `context` cached tokens each, so row i of a chunk of c sees
    context + i keys (i = 1..c), a mean of context + (c + 1) / 2."""
    if "attended" in point:
        return float(point["attended"])
    tokens = float(point.get("tokens", 0))
    if tokens <= 0:
        return 0.0
    c = tokens / max(float(point.get("seqs", 1)), 1.0)
    return float(point.get("context", 0)) + (c + 1) / 2


@dataclass
class Profile:
    data: dict
    path: str = ""
    _curves: dict = field(default_factory=dict, repr=False)
    _slow: dict = field(default_factory=dict, repr=False)
    _sustained: dict | None = field(default=None, repr=False)  # bound -> factor, computed once
    # bytes per K/V element of the cache searched for over the profile's (kv_dtype.KvDtypeChoice): decode
    # attention is read at the profiled size holding the same KV bytes (1 when the profile measured that cache)
    kv_bytes_ratio: float = 1.0

    # ---- identity ---------------------------------------------------------------------------------------
    @property
    def model(self) -> str:
        return str(self.data.get("model", ""))

    @property
    def tp(self) -> int:
        return int(self.data.get("tp", 1))

    @property
    def shapes(self) -> dict:
        return self.data["shapes"]

    @property
    def gpu_name(self) -> str:
        return str(self.data.get("gpu", {}).get("name", "unknown GPU"))

    @property
    def num_sms(self) -> int:
        return int(self.data.get("gpu", {}).get("num_sms") or 132)

    @property
    def peaks(self) -> dict:
        return self.data.get("peaks", {})

    @property
    def allreduce_points(self) -> list[dict]:
        """The all-reduce timed over real ranks (profile collectives.all_reduce.points); [] when not measured."""
        return list(((self.data.get("collectives") or {}).get("all_reduce") or {}).get("points") or [])

    @property
    def allreduce_curve(self) -> list[tuple[float, float]]:
        """Sorted (message bytes, ms) of the measured all-reduce; [] when not measured."""
        return curve([(p["bytes"], p["ms"]) for p in self.allreduce_points])

    def comm_slowdown(self, comm_point: dict) -> float | None:
        """The slowdown of an all-reduce and the kernel beside it, from the profile's all-reduce x GEMM
        measurement at the size nearest this message; None when not measured concurrently.

        Both are taken to slow by one factor s while they overlap: with A the longer alone time, B the shorter
        and T the two together, the shorter one runs B s, the longer does B of its work meanwhile and the rest
        alone, so T = B s + (A - B) and s = (T - A + B) / B."""
        pts = [p for p in self.allreduce_points if p.get("together_ms")]
        if not pts:
            return None
        entry = (self.data.get("collectives") or {}).get("all_reduce") or {}
        size = float(comm_point.get("tokens", 0)) * float(entry.get("bytes_per_token") or 2 * self.shapes["hidden"])
        p = min(pts, key=lambda q: abs(math.log(max(size, 1.0) / q["bytes"])))
        a, b = max(p["ms"], p["gemm_ms"]), min(p["ms"], p["gemm_ms"])
        return max(1.0, (float(p["together_ms"]) - a + b) / b) if b > 0 else None

    def has_op(self, op: str) -> bool:
        return bool(self.data.get("ops", {}).get(op, {}).get("points"))

    def launch_gap_ms(self, mode: str) -> float | None:
        """Measured ms between two kernels of a layer beyond their alone times ("graph": a CUDA-graph replay;
        "eager": launched one by one from Python), the median over the profile's launch points (negative:
        back to back in a graph they take less than alone); None when not measured."""
        gaps = [p.get(f"{mode}_gap_ms") for p in (self.data.get("launch") or {}).get("points", [])]
        gaps = [float(g) for g in gaps if g is not None]
        return statistics.median(gaps) if gaps else None

    def host_launch_ms(self) -> float | None:
        """The host's cost of launching one op eagerly: the per-op wall time of the profile's smallest eager
        layer, where the kernels are shortest and the host sets the pace; None when not measured."""
        pts = [p for p in (self.data.get("launch") or {}).get("points", []) if p.get("eager_layer_ms")]
        if not pts:
            return None
        p = min(pts, key=lambda q: q.get("batch", 0))
        return float(p["eager_layer_ms"]) / max(int(p.get("ops", 1)), 1)

    def sustained_factor(self, op: str, point: dict) -> float:
        """How much longer the op takes in a busy serving run than the profile timed it alone: the factor of
        the bound its point is under (sustained_factors), 1 when not measured."""
        return self.sustained_factors().get(self.bound(op, point), 1.0)

    def sustained_factors(self) -> dict[str, float]:
        """{"compute" | "memory": factor} from the profile's `sustained` section: each measured layer's time
        replayed back to back for seconds, less its graph gaps, over the sum of its ops' alone times as this
        profile interpolates them. The alone times are short bursts at boost clock; a card kept busy runs
        at its power limit's clock."""
        if self._sustained is None:
            gap = self.launch_gap_ms("graph") or 0.0
            self._sustained = {}
            for p in (self.data.get("sustained") or {}).get("points", []):
                alone = sum(self.alone_ms(o, pt, as_profiled=True)  # the layer ran over the profile's cache
                            for o, pt in zip(p["ops"], p["points"], strict=True))
                if alone > 0:
                    self._sustained[p["bound"]] = (float(p["sustained_layer_ms"]) - len(p["ops"]) * gap) / alone
        return self._sustained

    def bound(self, op: str, point: dict) -> str:
        """"compute" or "memory": prefill attention is compute-bound and decode attention and the element-wise
        ops memory-bound at every size the engine runs; a GEMM of t rows over an [n, k] weight is
        compute-bound when its FLOPs at the bf16 peak take longer than its bytes at the copy bandwidth."""
        kind = self.kind(op)
        if op == "prefill_attn":
            return "compute"
        if kind != "gemm":
            return "memory"
        shape = self.data.get("ops", {}).get(op, {}).get("shape") or {}
        n, k, t = int(shape.get("n", 0)), int(shape.get("k", 0)), int(point.get("tokens", 0))
        if not (n and k and t):
            return "memory"
        flops, nbytes = gemm_cost(t, n, k)  # the profile's own cost of a GEMM point (bf16)
        tflops = float(self.peaks.get("bf16_tflops") or 700.0)
        gb_s = float(self.peaks.get("copy_gb_s") or 3000.0)
        return "compute" if flops / (tflops * 1e9) > nbytes / (gb_s * 1e6) else "memory"

    def kind(self, op: str) -> str:
        return self.data.get("ops", {}).get(op, {}).get("kind") or DEFAULT_KINDS.get(op, "memory")

    # ---- alone ------------------------------------------------------------------------------------------
    def _budget_curves(self, op: str) -> dict[int, list[tuple[float, float]]]:
        """op -> {budget (0 = whole GPU): sorted (size, ms)}, built once."""
        if op not in self._curves:
            if not self.has_op(op):
                raise UserError(f"{self.path or 'profile'}: no points for op '{op}' (re-run `nanotune profile`)")
            by_budget: dict[int, list] = {}
            for p in self.data["ops"][op]["points"]:
                by_budget.setdefault(int(p.get("sm_budget") or 0), []).append((_x(op, p), float(p["ms"])))
            self._curves[op] = {b: curve(pts) for b, pts in by_budget.items() if curve(pts)}
        return self._curves[op]

    def alone_ms(self, op: str, point: dict, sm_budget: int | None = None, as_profiled: bool = False) -> float:
        """The op's time alone at `point` ({"tokens"} or {"batch", "context"}) and SM budget. Decode attention
        is memory-bound (bound()): over another KV dtype than the profile's (kv_bytes_ratio) its time is the
        profiled one of the size reading as many KV bytes; `as_profiled`: over the profile's own cache."""
        ratio = self.kv_bytes_ratio if op == "decode_attn" and not as_profiled else 1.0
        x = _x(op, point) * ratio
        if x <= 0:
            return 0.0
        curves = self._budget_curves(op)
        times = {b: interp_loglog(pts, x) for b, pts in curves.items()}
        return interp_budget(times, sm_budget, self.num_sms)

    # ---- together ---------------------------------------------------------------------------------------
    def slowdown(self, a: str, a_point: dict, a_budget: int | None, b: str, b_point: dict,
                 b_budget: int | None) -> float:
        """How much longer `a` takes while `b` runs beside it (>= 1 normally), from the nearest measured
        pair: the same two ops, else two ops of the same kinds, else DEFAULT_SLOWDOWN."""
        key = (a, _freeze(a_point), a_budget, b, _freeze(b_point), b_budget)
        if key not in self._slow:
            self._slow[key] = self._lookup(a, a_point, a_budget, b, b_point, b_budget)
        return self._slow[key]

    def _lookup(self, a, a_point, a_budget, b, b_point, b_budget) -> float:
        # pairs that did not run concurrently (a CPU profile's code-path check) say nothing about overlap
        table = [e for e in self.data.get("interference") or [] if e.get("concurrent", True) is not False]
        for same in (lambda x, y: x == y, lambda x, y: self.kind(x) == self.kind(y)):
            best, best_d = None, math.inf
            for e in table:
                # the entry as (this op's point, its budget, the other's point, its budget, this op's slowdown)
                if same(e["a"], a) and same(e["b"], b):
                    cand = (e.get("a_point", {}), e.get("a_sm_budget"), e.get("b_point", {}), e.get("b_sm_budget"),
                            overlap_slowdowns(e)[0])
                elif same(e["b"], a) and same(e["a"], b):
                    cand = (e.get("b_point", {}), e.get("b_sm_budget"), e.get("a_point", {}), e.get("a_sm_budget"),
                            overlap_slowdowns(e)[1])
                else:
                    continue
                if cand[4] is None:
                    continue
                d = (_distance(a_point, cand[0]) + _distance(b_point, cand[2])
                     + self._budget_distance(a_budget, cand[1]) + self._budget_distance(b_budget, cand[3]))
                if d < best_d:
                    best, best_d = float(cand[4]), d
            if best is not None:
                return max(best, 1e-3)
        if self.kind(a) == "comm" or self.kind(b) == "comm":
            measured = self.comm_slowdown(a_point if self.kind(a) == "comm" else b_point)
            return measured if measured is not None else DEFAULT_COMM_SLOWDOWN
        return DEFAULT_SLOWDOWN

    def _budget_distance(self, q: int | None, e: int | None) -> float:
        # a budget-confined kernel interferes less: a mismatch in budget weighs as much as one in size
        return abs(math.log((q or self.num_sms) / (e or self.num_sms)))


MAX_SLOWDOWN = 20.0


def overlap_slowdowns(e: dict) -> tuple[float | None, float | None]:
    """Each op's slowdown while both run, from a measured pair. The profile starts both together and records
    each one's span (a_ms, b_ms): the shorter ran beside the other throughout (slowdown = span / alone), the
    longer ran alone after the shorter ended, so its rate while overlapped is the alone-work it did in the
    shorter span. The simulation applies slowdowns only while ops overlap, so it needs these rates, not the
    raw span ratios (slowdown_a / slowdown_b) that mix in the tail. Clamped to [1, MAX_SLOWDOWN]: kernels
    sharing a GPU do not speed each other up (below 1 is timing noise)."""
    try:
        aa, ab, sa, sb = (float(e[k]) for k in ("alone_a_ms", "alone_b_ms", "a_ms", "b_ms"))
    except (KeyError, TypeError, ValueError):
        return e.get("slowdown_a"), e.get("slowdown_b")
    clamp = lambda x: min(max(x, 1.0), MAX_SLOWDOWN)
    if sa <= sb:
        done = ab - (sb - sa)  # b's alone-work done while a ran
        return clamp(sa / aa), clamp(sa / done if done > 0 else MAX_SLOWDOWN)
    done = aa - (sa - sb)  # a's alone-work done while b ran
    return clamp(sb / done if done > 0 else MAX_SLOWDOWN), clamp(sb / ab)


def _freeze(point: dict) -> tuple:
    return tuple(sorted((k, round(float(v), 3)) for k, v in point.items()))


def _distance(q: dict, e: dict) -> float:
    """Log-distance between two points over the sizes both name (tokens, batch, context)."""
    d = 0.0
    for k in ("tokens", "batch", "context"):
        if k in q and k in e and float(q[k]) > 0 and float(e[k]) > 0:
            d += abs(math.log(float(q[k]) / float(e[k])))
    return d


def load_profile(path: str | Path) -> Profile:
    """Read and check a profile; every problem is one line naming the file and the field."""
    data = read_profile_json(path)
    where = str(path)
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a JSON object")
    if data.get("schema") != SCHEMA:
        raise UserError(f"{where}: field 'schema': expected '{SCHEMA}', got {data.get('schema')!r}")
    for key in ("shapes", "ops"):
        if not isinstance(data.get(key), dict):
            raise UserError(f"{where}: missing field '{key}'")
    for key in ("hidden", "heads", "kv_heads", "head_dim", "intermediate", "vocab", "num_layers"):
        if key not in data["shapes"]:
            raise UserError(f"{where}: missing field 'shapes.{key}'")
    for op, entry in data["ops"].items():
        for k, p in enumerate(entry.get("points", [])):
            if "ms" not in p:
                raise UserError(f"{where}: ops.{op}.points[{k}]: missing field 'ms'")
    return Profile(data, where)
