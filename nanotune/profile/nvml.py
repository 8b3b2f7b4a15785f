"""NVML sampling in a background thread while the profile measures: clocks, power, temperature,
utilization, memory, and the reasons the clocks are held down.

A time means little if the card was throttling while it was taken, so every sample is tagged with the
measurement section running at that moment and the profile reports, per section, the ranges seen and any
throttle reasons. Without NVML (no driver, a container that hides it, an old pynvml) the profile says
"unavailable" and goes on; a single query that fails is left out of its sample.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import threading
import time

# NVML clocks-event (throttle) reason bits, from nvml.h (stable since NVML 5).
REASONS = {0x1: "gpu_idle", 0x2: "applications_clocks_setting", 0x4: "sw_power_cap", 0x8: "hw_slowdown",
           0x10: "sync_boost", 0x20: "sw_thermal_slowdown", 0x40: "hw_thermal_slowdown",
           0x80: "hw_power_brake_slowdown", 0x100: "display_clock_setting"}
# the reasons that mean "slower than it could be": idle, user clock settings and sync boost do not count
THROTTLING = {"sw_power_cap", "hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown",
              "hw_power_brake_slowdown"}
FIELDS = ("sm_clock_mhz", "mem_clock_mhz", "power_w", "temperature_c", "gpu_util_pct", "mem_util_pct",
          "memory_used_gib")


def reason_names(mask: int) -> list[str]:
    return [name for bit, name in REASONS.items() if mask & bit]


def nvml_index(cuda_index: int) -> int:
    """NVML numbers every GPU on the host; CUDA only the visible ones, in CUDA_VISIBLE_DEVICES order."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
    try:
        return int(visible[cuda_index])
    except (ValueError, IndexError):
        return cuda_index


class NvmlSampler:
    """with NvmlSampler(index) as s: ... with s.section("decode_attn"): ...; s.summary()"""

    def __init__(self, cuda_index: int = 0, interval_s: float = 0.05, nvml=None):
        self.interval_s = interval_s
        self.samples: list[dict] = []
        self.available, self.why = False, None
        self._section = "setup"
        self._stop = threading.Event()
        self._thread = None
        self._nvml = nvml
        self._index = nvml_index(cuda_index)

    def __enter__(self) -> NvmlSampler:
        try:
            if self._nvml is None:
                import pynvml

                self._nvml = pynvml
            self._nvml.nvmlInit()
            self._handle = self._nvml.nvmlDeviceGetHandleByIndex(self._index)
            self.available = True
        except Exception as e:  # no NVML here: the profile still runs, and says so
            self.why = f"{type(e).__name__}: {e}"[:200]
            return self
        self._thread = threading.Thread(target=self._run, name="nvml-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self.available:
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()

    @contextlib.contextmanager
    def section(self, name: str):
        prev, self._section = self._section, name
        try:
            yield
        finally:
            self._section = prev

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.sample())
            self._stop.wait(self.interval_s)

    def sample(self) -> dict:
        n, h = self._nvml, self._handle
        s = {"t": time.monotonic(), "section": self._section}
        queries = {
            "sm_clock_mhz": lambda: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM),
            "mem_clock_mhz": lambda: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_MEM),
            "power_w": lambda: n.nvmlDeviceGetPowerUsage(h) / 1000.0,
            "temperature_c": lambda: n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU),
            "gpu_util_pct": lambda: n.nvmlDeviceGetUtilizationRates(h).gpu,
            "mem_util_pct": lambda: n.nvmlDeviceGetUtilizationRates(h).memory,
            "memory_used_gib": lambda: n.nvmlDeviceGetMemoryInfo(h).used / 2**30,
            "reasons": self._reasons,
        }
        for key, query in queries.items():
            with contextlib.suppress(Exception):
                s[key] = query()
        return s

    def _reasons(self) -> int:
        # renamed in NVML 12.2 (clocks "event" reasons); older pynvml only has the throttle name
        fn = getattr(self._nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
            self._nvml.nvmlDeviceGetCurrentClocksThrottleReasons
        return int(fn(self._handle))

    def summary(self) -> dict:
        return summarize_samples(self.samples, self.available, self.why, self.interval_s)


def _ranges(samples: list[dict]) -> dict:
    out = {}
    for f in FIELDS:
        xs = [s[f] for s in samples if isinstance(s.get(f), (int, float))]
        if xs:
            out[f] = {"min": round(min(xs), 2), "median": round(statistics.median(xs), 2), "max": round(max(xs), 2)}
    reasons: dict[str, int] = {}
    for s in samples:
        for name in reason_names(s.get("reasons", 0) or 0):
            reasons[name] = reasons.get(name, 0) + 1
    out["reasons"] = {k: round(v / len(samples), 3) for k, v in sorted(reasons.items())}  # share of samples
    out["throttled"] = any(r in THROTTLING for r in reasons)
    out["samples"] = len(samples)
    return out


def summarize_samples(samples: list[dict], available: bool = True, why: str | None = None,
                      interval_s: float = 0.05) -> dict:
    """{"available", "interval_s", "overall": ranges, "sections": {name: ranges}, "throttled": bool}."""
    if not available:
        return {"available": False, "why": why or "unavailable", "throttled": None}
    if not samples:
        return {"available": True, "interval_s": interval_s, "overall": {}, "sections": {}, "throttled": False}
    by_section: dict[str, list[dict]] = {}
    for s in samples:
        by_section.setdefault(s.get("section", "?"), []).append(s)
    sections = {name: _ranges(ss) for name, ss in by_section.items()}
    overall = _ranges(samples)
    return {"available": True, "interval_s": interval_s, "overall": overall, "sections": sections,
            "throttled": overall["throttled"],
            "throttled_sections": sorted(n for n, r in sections.items() if r["throttled"])}
