"""A rank's communicator: torch.distributed process groups (NCCL on CUDA, gloo on CPU) and the selectable
all-reduce implementation the plan's collective ops call.

All-reduce implementations (EngineConfig.allreduce):
  "nccl"            torch.distributed.all_reduce as NCCL comes (gloo on CPU). The default.
  "nccl-channels:N" the same with NCCL_MIN_NCHANNELS = NCCL_MAX_NCHANNELS = N set in every rank's environment
                    before NCCL starts (fewer channels: fewer SMs taken from the GEMMs beside it).
Named and refused (not implemented; never silently replaced by another):
  "symm-mem-one-shot", "symm-mem-two-shot" (torch symmetric memory, without multicast), "copy-engine",
  "fused-rmsnorm" (the all-reduce fused with the next residual-add + RMSNorm).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch

from engine.errors import EngineConfigError

NOT_IMPLEMENTED = ("symm-mem-one-shot", "symm-mem-two-shot", "copy-engine", "fused-rmsnorm")
# NVLink multicast stays off on the lent machines, in every process a launcher starts
NO_MULTICAST_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
DEFAULT_TIMEOUT_S = 600.0  # a collective waits this long for its peers, then fails instead of hanging


def timeout_s() -> float:
    return float(os.environ.get("NANOTUNE_TP_TIMEOUT_S", DEFAULT_TIMEOUT_S))


def allreduce_env(impl: str) -> dict[str, str]:
    """Environment an implementation needs in every rank before the process group starts; refuses unknown
    or unimplemented names with one line."""
    if impl == "nccl":
        return {}
    if impl.startswith("nccl-channels:"):
        n = impl.split(":", 1)[1]
        if not n.isdigit() or int(n) < 1:
            raise EngineConfigError(f"allreduce '{impl}': expected nccl-channels:N with N >= 1")
        return {"NCCL_MIN_NCHANNELS": n, "NCCL_MAX_NCHANNELS": n}
    if impl in NOT_IMPLEMENTED:
        raise EngineConfigError(f"allreduce '{impl}': not implemented (implemented: nccl, nccl-channels:N)")
    raise EngineConfigError(f"allreduce '{impl}': unknown (implemented: nccl, nccl-channels:N; "
                            f"named, not implemented: {', '.join(NOT_IMPLEMENTED)})")


@dataclass
class TPGroup:
    """This process's place in the tensor-parallel group."""

    rank: int
    size: int
    group: object  # the device group (NCCL on CUDA, gloo on CPU): the model's collectives
    cpu_group: object  # a gloo group: commands from rank 0 and small host-side agreements

    def all_reduce_(self, x: torch.Tensor) -> None:
        """Sum x in place over the ranks (on the current stream; legal inside a CUDA graph capture on NCCL)."""
        torch.distributed.all_reduce(x, group=self.group)

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
    return TPGroup(dist.get_rank(), dist.get_world_size(), group, cpu_group)
