"""A rank's communicator: torch.distributed process groups (NCCL on CUDA, gloo on CPU) and the selectable
all-reduce implementation the plan's collective ops call.

All-reduce implementations (EngineConfig.allreduce):
  "nccl"              torch.distributed.all_reduce as NCCL comes (gloo on CPU). The default.
  "nccl-channels:N"   the same with NCCL_MIN_NCHANNELS = NCCL_MAX_NCHANNELS = N set in every rank's environment
                      before NCCL starts (fewer channels: fewer SMs taken from the GEMMs beside it).
  "symm-mem-one-shot" torch symmetric memory (no multicast): each rank copies its partial sums into a buffer
                      every peer maps over NVLink, and one kernel on each rank reads all peers' rows and sums
                      them (fewest steps; every rank reads (tp - 1) x the message).
  "symm-mem-two-shot" the same buffer, reduce-scatter then all-gather in one kernel (each rank sums 1/tp of the
                      rows: the ring's bytes, without NCCL's channels).
  "copy-engine"       the same buffer; the peers' partial sums come over with cudaMemcpy (the GPU's copy
                      engines move them, no SMs), then one local sum kernel. Two device barriers per call.
  "fused-rmsnorm"     the same buffer; the all-reduce op also does the residual add and RMSNorm that follow it
                      (the plan's next norm op then has nothing left to do): one kernel per rank reads every
                      rank's rows, sums them, adds the residual and normalizes, between two device barriers.
                      On CPU (gloo) the same op layout runs the sum through the process group, then the add
                      and norm: there it exists for tests of that layout, not for speed.
The symmetric-memory ones need CUDA GPUs with peer access. Every implementation sums the ranks' rows in one
order on every rank, so every rank holds the same bits (the ranks sample the same tokens).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch

from engine.config import ALLREDUCE_IMPLS
from engine.errors import EngineConfigError

SYMM_MEM = ("symm-mem-one-shot", "symm-mem-two-shot", "copy-engine")  # need a symmetric-memory buffer (CUDA)
FUSED_NORM = "fused-rmsnorm"  # the all-reduce and the next residual add + RMSNorm in one op
ONE_BUFFER = (*SYMM_MEM, FUSED_NORM)  # one buffer per rank on CUDA: calls must not overlap
IMPLEMENTED = ALLREDUCE_IMPLS
assert set(ONE_BUFFER) <= set(IMPLEMENTED)
# NVLink multicast stays off on the lent machines, in every process a launcher starts
NO_MULTICAST_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
DEFAULT_TIMEOUT_S = 600.0  # a collective waits this long for its peers, then fails instead of hanging


def timeout_s() -> float:
    return float(os.environ.get("NANOTUNE_TP_TIMEOUT_S", DEFAULT_TIMEOUT_S))


def allreduce_env(impl: str) -> dict[str, str]:
    """Environment an implementation needs in every rank before the process group starts; refuses an unknown
    name with one line."""
    if impl == "nccl" or impl in ONE_BUFFER:
        return {}
    if impl.startswith("nccl-channels:"):
        n = impl.split(":", 1)[1]
        if not n.isdigit() or int(n) < 1:
            raise EngineConfigError(f"allreduce '{impl}': expected nccl-channels:N with N >= 1")
        return {"NCCL_MIN_NCHANNELS": n, "NCCL_MAX_NCHANNELS": n}
    raise EngineConfigError(f"allreduce '{impl}': unknown (implemented: {', '.join(IMPLEMENTED)})")


@dataclass
class TPGroup:
    """This process's place in the tensor-parallel group."""

    rank: int
    size: int
    group: object  # the device group (NCCL on CUDA, gloo on CPU): the model's collectives
    cpu_group: object  # a gloo group: commands from rank 0 and small host-side agreements
    impl: str = "nccl"  # EngineConfig.allreduce: what the plan's collective ops run
    symm: object = None  # engine/parallel/symm_allreduce.SymmAllReduce for the symmetric-memory ones (CUDA)

    @property
    def fuses_norm(self) -> bool:
        """The plan's all-reduce ops also do the residual add + RMSNorm after them (add_rms_norm_)."""
        return self.impl == FUSED_NORM

    def add_rms_norm_(self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                      out: torch.Tensor, add_rms_norm) -> None:
        """fused-rmsnorm's collective: residual += the sum of x [rows, h] over the ranks, out = RMSNorm of it.
        On CUDA one kernel per rank; elsewhere the sum through the process group, then `add_rms_norm` (the
        model's kernel, with its signature)."""
        if self.symm is not None:
            self.symm.add_rms_norm_(x, residual, weight, eps, out)
        else:
            torch.distributed.all_reduce(x, group=self.group)
            add_rms_norm(x, residual, weight, eps, out=out, residual_out=residual)

    def all_reduce_(self, x: torch.Tensor) -> None:
        """The plan's collective: sum x [rows, h] in place over the ranks with the selected implementation, on
        the current stream (legal inside a CUDA graph capture)."""
        if self.symm is not None:
            self.symm(x)
        else:
            torch.distributed.all_reduce(x, group=self.group)

    def all_reduce_group_(self, x: torch.Tensor) -> None:
        """Sum x in place through the process group (NCCL / gloo) whatever the plan's implementation: for sums
        outside the plan's collective ops (the embedding's), which may run beside them on another stream."""
        torch.distributed.all_reduce(x, group=self.group)

    def reserve(self, numel: int, dtype: torch.dtype, device: torch.device) -> None:
        """Collective: size the symmetric buffer for messages up to `numel` elements (no-op for NCCL)."""
        if self.symm is not None:
            self.symm.reserve(numel, dtype, device)

    def all_gather_last(self, x: torch.Tensor) -> torch.Tensor:
        """[S, n] on every rank -> [S, size * n], rank r's columns at [r n, (r + 1) n)."""
        parts = [torch.empty_like(x) for _ in range(self.size)]
        torch.distributed.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=-1)

    def min_int(self, value: int) -> int:
        t = torch.tensor([value], dtype=torch.int64)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN, group=self.cpu_group)
        return int(t.item())


def init_group(device: torch.device, impl: str = "nccl") -> TPGroup:
    """Join the process group named by the environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, as set
    by engine/parallel/launch.py or torchrun); idempotent."""
    import torch.distributed as dist

    # multicast stays off whatever the caller's environment says; NCCL reads these when it starts
    os.environ.update({**NO_MULTICAST_ENV, **allreduce_env(impl)})
    timeout = timedelta(seconds=timeout_s())
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kw = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, timeout=timeout, **kw)
    group = dist.group.WORLD
    cpu_group = dist.new_group(backend="gloo", timeout=timeout) if device.type == "cuda" else group
    symm = None
    if impl in SYMM_MEM or (impl == FUSED_NORM and device.type == "cuda"):
        from engine.parallel.symm_allreduce import SymmAllReduce

        symm = SymmAllReduce(impl, group, dist.get_rank(), dist.get_world_size())
    return TPGroup(dist.get_rank(), dist.get_world_size(), group, cpu_group, impl, symm)


def check_impl(impl: str, device_type: str) -> None:
    """Refuse (one line) an implementation that cannot run on this device type, before anything loads."""
    allreduce_env(impl)
    if impl in SYMM_MEM and device_type != "cuda":
        raise EngineConfigError(f"allreduce '{impl}': needs CUDA GPUs with peer access (symmetric memory); "
                                f"on {device_type} use nccl (gloo)")


def check_plan_streams(impl: str, plan, where: str = "plan") -> None:
    """A symmetric-memory all-reduce has one buffer and one set of signal pads: its calls must not overlap, so
    a plan's collective ops must share one stream (NCCL orders a communicator's collectives itself)."""
    streams = sorted({i.stream for i in plan.collective_ops})
    if impl in ONE_BUFFER and len(streams) > 1:
        raise EngineConfigError(f"{where}: allreduce '{impl}' needs every collective op on one stream; the plan "
                                f"puts them on streams {', '.join(map(str, streams))} (use nccl, or one stream)")
