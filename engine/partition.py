"""Ways to give an op a share of the GPU's SMs, named by a plan's `partition` field.

- "grid": a partition-aware Triton kernel (decode attention) runs min(work, sm_budget) programs; other ops
  ignore the budget. Works on plain streams.
- "cublas": as "grid", and cuBLAS GEMMs with a budget run with an SM-count target of sm_budget SMs
  (torch's experimental SM carveout = num_sms - sm_budget, read when the matmul is launched, so it holds
  inside CUDA graph capture too). torch 2.11 applies the carveout on cuBLASLt paths only (plain torch.mm
  went through cuBLAS and ignored it), so the confined matmuls also run through cuBLASLt.
- "green": each stream of the plan belongs to a CUDA green context of `stream_sms[k]` SMs
  (torch.cuda.green_contexts); every kernel on that stream is confined by the driver.

Which wins is measured, not assumed (README, "Measured"; results/reference/h200/partition-probe*.json): none
beat plain streams with full grids yet. The plan only names one.
"""

from __future__ import annotations

import contextlib

import torch


def has_cublas_carveout() -> bool:
    return hasattr(torch._C, "_set_sm_carveout_experimental")


def has_green_contexts() -> bool:
    try:
        from torch.cuda import green_contexts
    except ImportError:
        return False
    return bool(getattr(green_contexts, "SUPPORTED", False))


@contextlib.contextmanager
def cublas_sm_budget(sm_budget: int | None, num_sms: int):
    """Within the block, cuBLAS matmuls aim at sm_budget SMs (None or >= num_sms: the whole GPU)."""
    if sm_budget is None or sm_budget >= num_sms or not has_cublas_carveout() or not torch.cuda.is_available():
        yield
        return
    prev = torch._C._get_sm_carveout_experimental()
    prev_lib = torch.backends.cuda.preferred_blas_library()
    torch._C._set_sm_carveout_experimental(num_sms - max(1, sm_budget))
    torch.backends.cuda.preferred_blas_library("cublaslt")
    try:
        yield
    finally:
        torch.backends.cuda.preferred_blas_library(prev_lib)
        torch._C._set_sm_carveout_experimental(prev)


def green_context(num_sms: int, device: torch.device):
    """A CUDA green context holding num_sms SMs of the device; its .Stream() runs kernels on those SMs only.
    The caller keeps the context alive as long as its stream is used."""
    from torch.cuda.green_contexts import GreenContext

    return GreenContext.create(num_sms=num_sms, device_id=torch.device(device).index or 0)
