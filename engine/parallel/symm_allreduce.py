"""All-reduce through torch symmetric memory, without multicast (engine/parallel/comm.py names the
implementations and says what each does).

Every rank allocates the same buffer through torch.distributed._symmetric_memory and every peer maps it over
NVLink. A call copies the rank's partial sums x [rows, h] into its buffer, then:
  symm-mem-one-shot  torch.ops.symm_mem.one_shot_all_reduce_out: each rank reads all ranks' rows and sums them;
  symm-mem-two-shot  torch.ops.symm_mem.two_shot_all_reduce_out: each rank sums 1/tp of the rows, then gathers;
  copy-engine        a device barrier, each peer's rows copied into a local staging row by cudaMemcpy (copy
                     engines, no SMs), a second barrier (the peers have read this rank's buffer, so the next
                     call may overwrite it), then the ranks' rows summed in rank order into x.
  fused-rmsnorm      (add_rms_norm_, not __call__) a device barrier, then one kernel per rank reads every rank's
                     rows through their buffers' addresses, sums them in rank order, adds the residual and
                     applies the next RMSNorm (engine/kernels/norm.peer_sum_add_rms_norm), then a second barrier.
The result lands in x on every rank with the same bits (the sums run in one order everywhere).

One buffer (and one set of device signal pads) serves every call, so the calls must not overlap: the runner
refuses a plan that puts collective ops on more than one stream (engine/parallel/comm.check_plan_streams).
"""

from __future__ import annotations

import torch


class SymmAllReduce:
    def __init__(self, impl: str, group, rank: int, size: int):
        self.impl, self.group, self.rank, self.size = impl, group, rank, size
        self.group_name = group.group_name
        self.buf: torch.Tensor | None = None  # [numel] this rank's symmetric buffer
        self.handle = None  # the _SymmetricMemory over every rank's buffer
        self.staging: torch.Tensor | None = None  # copy-engine: [size, numel] the peers' rows, copied here
        self.peers: torch.Tensor | None = None  # fused-rmsnorm: [size] int64 every rank's buffer address

    def reserve(self, numel: int, dtype: torch.dtype, device: torch.device) -> None:
        """Make the buffer hold messages of up to `numel` elements. Collective: every rank calls it with the same
        arguments (they run the same batches); not inside a CUDA graph capture (a rendezvous is host work)."""
        if self.buf is not None and self.buf.numel() >= numel and self.buf.dtype == dtype:
            return
        if device.type != "cuda":
            raise RuntimeError(f"allreduce '{self.impl}' needs CUDA tensors, got {device}")
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError(f"allreduce '{self.impl}': a {numel}-element message outgrew the symmetric buffer "
                               "inside a CUDA graph capture (the runner reserves the workspace's rows first)")
        import warnings

        import torch.distributed._symmetric_memory as symm_mem

        if not symm_mem.is_symm_mem_enabled_for_group(self.group_name):
            with warnings.catch_warnings():  # needed by older torch; newer ones do it themselves and warn
                warnings.simplefilter("ignore", FutureWarning)
                symm_mem.enable_symm_mem_for_group(self.group_name)
        self.buf = symm_mem.empty(numel, dtype=dtype, device=device)
        self.handle = symm_mem.rendezvous(self.buf, self.group_name)
        if self.impl == "copy-engine":
            self.staging = torch.empty((self.size, numel), dtype=dtype, device=device)
        if self.impl == "fused-rmsnorm":
            self.peers = torch.tensor(list(self.handle.buffer_ptrs), dtype=torch.int64, device=device)

    def __call__(self, x: torch.Tensor) -> None:
        """x: contiguous [rows, h] partial sums on this rank -> the sum over the ranks, in place."""
        n = x.numel()
        self.reserve(n, x.dtype, x.device)  # a no-op after the runner's reservation
        mine = self.buf[:n]
        mine.copy_(x.view(-1))
        if self.impl == "symm-mem-one-shot":
            torch.ops.symm_mem.one_shot_all_reduce_out(mine, "sum", self.group_name, x.view(-1))
        elif self.impl == "symm-mem-two-shot":
            torch.ops.symm_mem.two_shot_all_reduce_out(mine, "sum", self.group_name, x.view(-1))
        elif self.impl == "copy-engine":
            self._copy_engine(x.view(-1), mine)
        else:
            raise ValueError(f"not a symmetric-memory all-reduce: {self.impl}")

    def add_rms_norm_(self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                      out: torch.Tensor) -> None:
        """fused-rmsnorm: x [rows, h] this rank's partial sums; residual [rows, h] += the sum over the ranks, in
        place; out [rows, h] = RMSNorm(residual) * weight. x is left as it was (nothing reads it after)."""
        from engine.kernels.norm import peer_sum_add_rms_norm

        n = x.numel()
        self.reserve(n, x.dtype, x.device)
        mine = self.buf[:n]
        mine.copy_(x.view(-1))
        self.handle.barrier(channel=0)  # every rank's rows are in its buffer
        peer_sum_add_rms_norm(self.peers, mine.view(x.shape), residual, weight, eps, out=out, residual_out=residual)
        self.handle.barrier(channel=1)  # every rank has read this rank's buffer: it may be written again

    def _copy_engine(self, out: torch.Tensor, mine: torch.Tensor) -> None:
        n = mine.numel()
        self.handle.barrier(channel=0)  # every rank's rows are in its buffer
        parts = []
        for r in range(self.size):
            if r == self.rank:
                parts.append(mine)
                continue
            peer = self.handle.get_buffer(r, (n,), mine.dtype)  # rank r's buffer, mapped here
            self.staging[r, :n].copy_(peer)  # device-to-device over NVLink: a copy-engine transfer
            parts.append(self.staging[r, :n])
        self.handle.barrier(channel=1)  # every peer holds this rank's rows: the buffer may be written again
        torch.add(parts[0], parts[1], out=out)  # rank order on every rank: identical bits everywhere
        for p in parts[2:]:
            out.add_(p)
