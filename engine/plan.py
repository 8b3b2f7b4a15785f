"""PipelinePlan: how one layer's ops are cut into nano-batches and placed on streams. Data, not code.

A plan lists op instances in issue order. Each instance runs one op of the layer on a row range of the
dense batch (fractions of its tokens; decode tokens come first, then prefill tokens), on a stream, and
optionally confined to an SM budget. Dependencies are not written in the plan: they follow from the
layer's dataflow (which op reads what another writes) and from row overlap, so any valid plan computes
the same function as the sequential plan. The sequential engine is the plan with one instance per op,
all on stream 0.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from engine.errors import EngineConfigError, read_json

PARTITIONS = ("grid", "cublas", "green")  # see engine/partition.py
GEMM_OPS = ("qkv", "o_proj", "gate_up", "down")  # the layer's matmuls (cuBLAS)

# A Llama layer, in dataflow order. Values: the ops (same layer) whose output each op reads.
# attn_norm also reads the previous layer's `down` (handled by the executor across layers).
LAYER_OPS: dict[str, tuple[str, ...]] = {
    "attn_norm": (),
    "qkv": ("attn_norm",),
    "rope_kv": ("qkv",),
    "decode_attn": ("rope_kv",),
    "prefill_attn": ("rope_kv",),  # reads the KV of earlier rows of its sequences too (prefix rule)
    "o_proj": ("decode_attn", "prefill_attn"),
    "mlp_norm": ("o_proj",),
    "gate_up": ("mlp_norm",),
    "silu_mul": ("gate_up",),
    "down": ("silu_mul",),
}
# Tensor-parallel collectives, each after the row-parallel GEMM whose partial sums it adds over the ranks
# (in place, in the same rows). A plan may place them (own stream, own row ranges); a plan that omits them
# gets each one right after its producer's instances, on the producer's stream (with_collectives). At TP 1
# they are no-ops.
COLLECTIVE_OPS: dict[str, str] = {"o_allreduce": "o_proj", "down_allreduce": "down"}
# The dataflow with the collectives: their consumers read the reduced rows (and the GEMM's, the same rows).
DATAFLOW: dict[str, tuple[str, ...]] = {**LAYER_OPS, "mlp_norm": ("o_proj", "o_allreduce"),
                                        **{op: (src,) for op, src in COLLECTIVE_OPS.items()}}
# Ops whose dependency on their producer covers every row before theirs, not just the overlapping ones.
PREFIX_DEPS = {"prefill_attn"}


@dataclass(frozen=True)
class OpInstance:
    op: str
    lo: float = 0.0  # row range [lo, hi) as fractions of the dense batch's tokens
    hi: float = 1.0
    stream: int = 0
    sm_budget: int | None = None  # SMs the op may use (how: the plan's partition); None = whole GPU


@dataclass(frozen=True)
class PipelinePlan:
    name: str
    ops: tuple[OpInstance, ...]
    num_streams: int = 1
    align: int = 1  # row boundaries rounded to a multiple of this (GEMM tiles like 64 or 128)
    stream_priorities: tuple[int, ...] = ()  # CUDA stream priority per stream (lower = higher priority)
    # How sm_budget is enforced (engine/partition.py): "grid" bounds decode attention's persistent grid;
    # "cublas" also gives GEMMs an SM-count target; "green" runs stream k in a green context of
    # stream_sms[k] SMs (None = all).
    partition: str = "grid"
    stream_sms: tuple[int | None, ...] = ()
    meta: dict = field(default_factory=dict)

    # ---- identity: what runs, not what it is called -------------------------------------------------
    def key(self) -> tuple:
        """Everything that decides how the plan executes; name and meta (notes, provenance) excluded."""
        return (self.ops, self.num_streams, self.align, self.stream_priorities, self.partition, self.stream_sms)

    def __eq__(self, other) -> bool:
        return isinstance(other, PipelinePlan) and self.key() == other.key()

    def __hash__(self) -> int:
        return hash(self.key())

    # ---- construction -------------------------------------------------------------------------------
    @staticmethod
    def sequential() -> PipelinePlan:
        return PipelinePlan("sequential", tuple(OpInstance(op) for op in LAYER_OPS))

    @property
    def num_nano_batches(self) -> int:
        return max(sum(1 for i in self.ops if i.op == op) for op in LAYER_OPS)

    def rows(self, inst: OpInstance, num_tokens: int) -> tuple[int, int]:
        """The instance's token rows [a, b) in a dense batch of num_tokens tokens."""
        return self._edge(inst.lo, num_tokens), self._edge(inst.hi, num_tokens)

    def _edge(self, frac: float, n: int) -> int:
        if frac >= 1.0:
            return n
        return min(n, int(round(frac * n / self.align)) * self.align)

    # ---- dependencies -------------------------------------------------------------------------------
    def producers(self, index: int) -> list[int]:
        """Indices of earlier-or-later instances (same layer) whose output instance `index` reads."""
        me = self.ops[index]
        out = []
        for j, other in enumerate(self.ops):
            if other.op in DATAFLOW[me.op]:
                lo = 0.0 if me.op in PREFIX_DEPS else me.lo
                if other.lo < me.hi and lo < other.hi:
                    out.append(j)
        return out

    def first_layer_deps(self, index: int) -> list[int]:
        """For attn_norm instances: the previous layer's `down` (and `down_allreduce`) instances overlapping
        its rows."""
        me = self.ops[index]
        return [j for j, o in enumerate(self.ops)
                if o.op in ("down", "down_allreduce") and o.lo < me.hi and me.lo < o.hi]

    def with_collectives(self) -> PipelinePlan:
        """This plan with every collective it omits placed right after each instance of its producer, on the
        producer's stream and rows (what a plan without collective ops means under tensor parallelism)."""
        present = {i.op for i in self.ops}
        missing = {op: src for op, src in COLLECTIVE_OPS.items() if op not in present}
        if not missing:
            return self
        ops = []
        for inst in self.ops:
            ops.append(inst)
            ops += [OpInstance(op, inst.lo, inst.hi, inst.stream) for op, src in missing.items() if inst.op == src]
        return replace(self, ops=tuple(ops))

    @property
    def collective_ops(self) -> tuple[OpInstance, ...]:
        return tuple(i for i in self.ops if i.op in COLLECTIVE_OPS)

    # ---- validation ---------------------------------------------------------------------------------
    def validate(self, num_sms: int | None = None, where: str = "plan") -> None:
        """Raise EngineConfigError naming the first problem; return None if the plan is valid."""
        if self.num_streams < 1:
            raise EngineConfigError(f"{where}: num_streams must be >= 1")
        if self.align < 1:
            raise EngineConfigError(f"{where}: align must be >= 1")
        for k, inst in enumerate(self.ops):
            at = f"{where}: ops[{k}] ({inst.op})"
            if inst.op not in DATAFLOW:
                raise EngineConfigError(f"{at}: unknown op (known: {', '.join(DATAFLOW)})")
            if not 0.0 <= inst.lo < inst.hi <= 1.0:
                raise EngineConfigError(f"{at}: range [{inst.lo}, {inst.hi}) must satisfy 0 <= lo < hi <= 1")
            if not 0 <= inst.stream < self.num_streams:
                raise EngineConfigError(f"{at}: stream {inst.stream} not in 0..{self.num_streams - 1}")
            if inst.sm_budget is not None and (inst.sm_budget < 1 or (num_sms and inst.sm_budget > num_sms)):
                raise EngineConfigError(f"{at}: sm_budget {inst.sm_budget} outside 1..{num_sms or 'SMs'}")
        placed = [op for op in COLLECTIVE_OPS if any(i.op == op for i in self.ops)]  # the others are implied
        for op in (*LAYER_OPS, *placed):  # each op's instances tile [0, 1) exactly once
            pieces = sorted((i.lo, i.hi) for i in self.ops if i.op == op)
            if not pieces:
                raise EngineConfigError(f"{where}: op '{op}' has no instance; every op must run")
            edge = 0.0
            for lo, hi in pieces:
                if abs(lo - edge) > 1e-9:
                    kind = "overlap" if lo < edge else "gap"
                    raise EngineConfigError(f"{where}: op '{op}' instances leave a {kind} at {min(lo, edge)}")
                edge = hi
            if abs(edge - 1.0) > 1e-9:
                raise EngineConfigError(f"{where}: op '{op}' instances end at {edge}, not 1.0")
        for k in range(len(self.ops)):  # issue order must be topological
            late = [j for j in self.producers(k) if j > k]
            if late:
                inst, dep = self.ops[k], self.ops[late[0]]
                raise EngineConfigError(f"{where}: ops[{k}] ({inst.op} [{inst.lo}, {inst.hi})) is issued "
                                        f"before ops[{late[0]}] ({dep.op}), whose output it reads")
        if self.stream_priorities and len(self.stream_priorities) != self.num_streams:
            raise EngineConfigError(f"{where}: stream_priorities has {len(self.stream_priorities)} "
                                    f"entries for {self.num_streams} streams")
        if self.partition not in PARTITIONS:
            raise EngineConfigError(f"{where}: partition '{self.partition}' is not one of {', '.join(PARTITIONS)}")
        if self.stream_sms and len(self.stream_sms) != self.num_streams:
            raise EngineConfigError(f"{where}: stream_sms has {len(self.stream_sms)} entries for "
                                    f"{self.num_streams} streams")
        if self.stream_sms and self.partition != "green":
            raise EngineConfigError(f"{where}: stream_sms needs partition 'green' (it is '{self.partition}')")
        for k, n in enumerate(self.stream_sms):
            if n is not None and (n < 1 or (num_sms and n > num_sms)):
                raise EngineConfigError(f"{where}: stream_sms[{k}] = {n} outside 1..{num_sms or 'SMs'}")

    # ---- JSON ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["ops"] = [{k: v for k, v in asdict(i).items() if v is not None} for i in self.ops]
        d["stream_priorities"] = list(self.stream_priorities)
        d["stream_sms"] = list(self.stream_sms)
        return d

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @staticmethod
    def from_dict(d: dict, where: str = "plan") -> PipelinePlan:
        if not isinstance(d, dict) or "ops" not in d:
            raise EngineConfigError(f"{where}: expected an object with an 'ops' list")
        ops = []
        for k, o in enumerate(d["ops"]):
            if not isinstance(o, dict) or "op" not in o:
                raise EngineConfigError(f"{where}: ops[{k}]: expected an object with field 'op'")
            unknown = set(o) - {"op", "lo", "hi", "stream", "sm_budget"}
            if unknown:
                raise EngineConfigError(f"{where}: ops[{k}]: unknown field '{sorted(unknown)[0]}'")
            try:
                ops.append(OpInstance(str(o["op"]), float(o.get("lo", 0.0)), float(o.get("hi", 1.0)),
                                      int(o.get("stream", 0)),
                                      None if o.get("sm_budget") is None else int(o["sm_budget"])))
            except (TypeError, ValueError) as e:
                raise EngineConfigError(f"{where}: ops[{k}]: {e}") from None
        try:
            sms = d.get("stream_sms", ())
            plan = PipelinePlan(name=str(d.get("name", Path(where).stem)), ops=tuple(ops),
                                num_streams=int(d.get("num_streams", 1)), align=int(d.get("align", 1)),
                                stream_priorities=tuple(int(p) for p in d.get("stream_priorities", ())),
                                partition=str(d.get("partition", "grid")),
                                stream_sms=tuple(None if n is None else int(n) for n in sms),
                                meta=dict(d.get("meta", {})))
        except (TypeError, ValueError) as e:
            raise EngineConfigError(f"{where}: {e}") from None
        plan.validate(where=where)
        return plan

    @staticmethod
    def load(path: str | Path) -> PipelinePlan:
        return PipelinePlan.from_dict(read_json(path, "no such plan file"), where=str(path))
