"""Processes for tensor parallelism, and how rank 0 drives the others.

One process per rank. `LLMEngine(EngineConfig(tp=N))` in a plain process becomes rank 0 and starts ranks
1..N-1 itself (torch.multiprocessing, spawn); under torchrun (RANK and WORLD_SIZE set) every process is
already there. Ranks > 0 follow: they build the same engine, then replay rank 0's engine calls.

Scheduling: every rank runs its own scheduler, deterministically, on the same calls. Rank 0 sends each step's
engine calls (the requests added since the last step, then "step") in one small gloo broadcast; no batch,
block table or token crosses between ranks, because the logits are gathered on every rank and every rank
samples the same tokens. The alternative, rank 0 broadcasting each ScheduledBatch, would pickle every
scheduled sequence (ids, positions, block tables) each step and serialize the followers behind rank 0's
scheduler; replaying the calls costs each rank the scheduler's own host time, in parallel, plus one small
message (tests/test_tp.py measures it on CPU).

Faults: collectives time out (engine/parallel/comm.py). A worker that fails writes one line, "rank R: cause",
to its error file and exits; rank 0's next collective fails and raises TPWorkerError with that line (or the
exit signal), which the bench records as the run's error beside the partial result; close() ends every
worker this process started.
"""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.config import EngineConfig, ModelConfig
from engine.errors import EngineConfigError
from engine.parallel.comm import NO_MULTICAST_ENV, allreduce_env, check_impl
from engine.sizing import GIB, sampling_reserve_bytes, shard_shapes, workspace_bytes, workspace_rows


class TPWorkerError(RuntimeError):
    """A rank failed; the message is one line naming the rank and the cause."""


def preflight(config: EngineConfig, model_cfg: ModelConfig, device_type: str) -> None:
    """Refuse, before anything loads, a TP that does not divide the model, more ranks than GPUs, or a shard
    that does not fit the GPU (EngineConfigError, one line)."""
    s = shard_shapes(model_cfg, config.tp)  # raises naming what does not divide
    check_impl(config.allreduce, device_type)  # an unknown, unimplemented or CUDA-only one on CPU: refused
    if device_type != "cuda":
        return
    import torch

    if config.tp > torch.cuda.device_count():
        raise EngineConfigError(f"tp {config.tp}: only {torch.cuda.device_count()} CUDA GPUs here")
    total = torch.cuda.get_device_properties(0).total_memory
    dtype_bytes = 4 if config.dtype == "float32" else 2
    rows = workspace_rows(config.max_num_batched_tokens, config.max_num_seqs)
    need = (s.params_per_gpu * dtype_bytes + sampling_reserve_bytes(config.max_num_seqs, model_cfg.vocab_size)
            + workspace_bytes(s.hidden, s.q_size, s.kv_size, s.intermediate, rows, dtype_bytes))
    if need > config.gpu_memory_fraction * total:
        raise EngineConfigError(
            f"{model_cfg.name} at tp {config.tp}: {need / GIB:.1f} GiB per GPU of weights and workspace, more "
            f"than gpu_memory_fraction {config.gpu_memory_fraction} of {total / GIB:.1f} GiB (raise --tp)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_launched() -> bool:
    """Whether a launcher (torchrun, or our own spawn) set up this process's rank."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def _worker(rank: int, config: EngineConfig, env: dict, err_file: str) -> None:
    """A spawned rank: build the engine (which follows rank 0 until told to stop), then exit."""
    os.environ.update(env)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank))
    try:
        from engine.engine import LLMEngine

        LLMEngine(config)
    except SystemExit as e:
        if e.code in (0, None):
            return
        Path(err_file).write_text(f"rank {rank}: exit {e.code}")
        os._exit(1)
    except BaseException as e:  # noqa: BLE001 - any failure becomes the one line rank 0 reports
        Path(err_file).write_text(f"rank {rank}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        os._exit(1)


@dataclass
class Workers:
    """The ranks this process started (empty under torchrun)."""

    procs: dict[int, object] = field(default_factory=dict)
    err_dir: str = ""

    def failure(self, wait_s: float = 5.0) -> str | None:
        """One line for the first rank that failed (waiting up to wait_s for a dying one to exit)."""
        end = time.monotonic() + wait_s
        while True:
            for rank, p in sorted(self.procs.items()):
                if p.exitcode not in (None, 0):
                    f = Path(self.err_dir) / f"rank{rank}.err"
                    if f.exists() and f.read_text().strip():
                        return f.read_text().strip()
                    if p.exitcode < 0:
                        name = signal.Signals(-p.exitcode).name
                        why = " (out of memory?)" if -p.exitcode == signal.SIGKILL else ""
                        return f"rank {rank}: killed by {name}{why}"
                    return f"rank {rank}: exited with code {p.exitcode}"
            if time.monotonic() > end or not self.procs:
                return None
            time.sleep(0.1)

    def close(self, timeout_s: float = 30.0) -> None:
        end = time.monotonic() + timeout_s
        for p in self.procs.values():
            p.join(max(0.0, end - time.monotonic()))
        for p in self.procs.values():
            if p.is_alive():
                p.terminate()
                p.join(5)
            if p.is_alive():
                p.kill()
                p.join()
        self.procs.clear()


def start(config: EngineConfig, model_cfg: ModelConfig) -> tuple[int, Workers]:
    """Check the TP request, then make this process a rank: -> (rank, the workers it started)."""
    from engine.runner import resolve_device

    device = resolve_device(config.device)
    preflight(config, model_cfg, device.type)
    if is_launched():
        if int(os.environ["WORLD_SIZE"]) != config.tp:
            raise EngineConfigError(f"tp {config.tp}: the launcher started {os.environ['WORLD_SIZE']} processes")
        os.environ.update({**NO_MULTICAST_ENV, **allreduce_env(config.allreduce)})
        rank = int(os.environ["RANK"])
        if device.type == "cuda":
            import torch

            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
        return rank, Workers()
    import torch.multiprocessing as mp

    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": str(config.tp),
           "NANOTUNE_TP_SPAWNED": "1", **NO_MULTICAST_ENV, **allreduce_env(config.allreduce)}
    os.environ.update({**env, "RANK": "0", "LOCAL_RANK": "0"})
    if device.type == "cuda":
        import torch

        torch.cuda.set_device(0)
    err_dir = tempfile.mkdtemp(prefix="nanotune-tp-")
    ctx = mp.get_context("spawn")
    workers = Workers(err_dir=err_dir)
    for rank in range(1, config.tp):
        p = ctx.Process(target=_worker, args=(rank, config, env, str(Path(err_dir) / f"rank{rank}.err")),
                        daemon=True)
        p.start()
        workers.procs[rank] = p
    return 0, workers


def end_of_spawn_env() -> None:
    """Forget the rank this process took, so a later engine in it starts afresh."""
    if os.environ.pop("NANOTUNE_TP_SPAWNED", None):
        for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            os.environ.pop(k, None)

