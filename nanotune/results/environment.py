"""The environment block written into every result: an absolute number means something only with its GPU
(and software) named next to it (DESIGN.md, "Measuring performance honestly")."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path


def git_sha(path: str | os.PathLike | None = None) -> str | None:
    """HEAD of the repo holding `path` (default: this package's checkout), `+dirty` if it has changes."""
    cwd = Path(path) if path else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}+dirty" if dirty else sha or None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # not installed, or broken in a way that must not stop a benchmark
        return None


def _gpus() -> list[dict]:
    """Per-GPU name, SM count and memory via torch; driver, clocks and power limit via NVML when present."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    gpus = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        gpus.append({"index": i, "name": p.name, "num_sms": p.multi_processor_count,
                     "memory_gib": round(p.total_memory / 2**30, 1),
                     "capability": f"{p.major}.{p.minor}"})
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            driver = pynvml.nvmlSystemGetDriverVersion()
            for g in gpus:
                h = pynvml.nvmlDeviceGetHandleByIndex(g["index"])
                g["driver"] = driver.decode() if isinstance(driver, bytes) else driver
                g["max_sm_clock_mhz"] = pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM)
                g["power_limit_w"] = pynvml.nvmlDeviceGetPowerManagementLimit(h) / 1000
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # NVML missing or refusing (containers): the torch fields are still worth keeping
        pass
    return gpus


def environment(repo: str | os.PathLike | None = None) -> dict:
    """Machine and software this run happened on; cheap enough to call once per result."""
    gpus = _gpus()
    torch_cuda = None
    try:
        import torch

        torch_cuda = torch.version.cuda
    except ImportError:
        pass
    return {
        "gpu": gpus[0]["name"] if gpus else None,
        "num_sms": gpus[0]["num_sms"] if gpus else None,
        "driver": gpus[0].get("driver") if gpus else None,
        "num_gpus": len(gpus),
        "gpus": gpus,
        "cpu": _cpu_name(),
        "num_cpus": os.cpu_count(),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": _version("torch"),
        "cuda": torch_cuda,
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        "nanotune": _version("nanotune"),
        "git_sha": git_sha(repo),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
