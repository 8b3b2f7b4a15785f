"""Timing statistics, the CPU timer, the CUDA timer's bookkeeping (on fake events), rotation sizes, NVML."""

import contextlib
import time
import types

import pytest
import torch

from nanotune.profile import timing
from nanotune.profile.nvml import NvmlSampler, nvml_index, reason_names, summarize_samples
from nanotune.profile.rig import num_rotations
from nanotune.profile.timing import Timer, group_size, summarize


def test_summarize_median_min_p90():
    st = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (st.ms, st.ms_min, st.repeats) == (3.0, 1.0, 5)
    assert st.ms_p90 == 5.0
    assert summarize([1.0, 2.0, 3.0, 100.0]).ms == 2.5  # a stray slow repeat moves the median little
    xs = [float(i) for i in range(1, 21)]
    assert summarize(xs).ms_p90 == 18.0  # nearest rank: ceil(0.9 * 20) = 18th
    with pytest.raises(ValueError):
        summarize([])
    assert summarize([1.23456789]).to_dict()["ms"] == 1.23457


def test_group_size():
    assert group_size(0.2, 0.05) == 1
    assert group_size(0.004, 0.05) == 13
    assert group_size(0.0001, 0.05, max_group=16) == 16
    assert group_size(0.0, 0.05, max_group=8) == 8


def test_num_rotations():
    assert num_rotations(33.5e6, 50 * 2**20, cap=8, floor=2) == 5  # Llama-3-8B's o_proj on an H100
    assert num_rotations(4 * 2**30, 50 * 2**20, cap=8) == 1  # far larger than L2: no copies needed
    assert num_rotations(1e3, 50 * 2**20, cap=8) == 8
    assert num_rotations(1e3, 0, cap=8, floor=2) == 2  # CPU: no L2 figure


def test_cpu_timer_calls_with_rotating_indices():
    seen = []
    t = Timer(torch.device("cpu"), warmup=2, repeats=4)
    st = t.time(lambda i: (seen.append(i), time.sleep(0.001)))
    assert seen == list(range(6)) and st.repeats == 4 and st.ms >= 0.9
    ps = t.pair(lambda i: time.sleep(0.002), lambda i: time.sleep(0.001))
    assert ps.concurrent is False and ps.together.ms >= ps.a.ms + ps.b.ms - 0.1
    assert ps.a.ms > ps.b.ms


class FakeEvent:
    """A CUDA event on the host clock: the ops run synchronously on CPU, so spans are real."""

    def __init__(self, enable_timing=False):
        self.t = None

    def record(self, stream=None):
        self.t = time.perf_counter()

    def elapsed_time(self, other):
        return 1e3 * (other.t - self.t)


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda's event/stream API on the host, so the GPU code path of Timer runs here."""
    calls = {"sleep": [], "sync": 0, "waits": 0}

    class FakeStream:
        def __init__(self, device=None, priority=0):
            pass

        def wait_event(self, ev):
            calls["waits"] += 1

    def sync(device=None):
        calls["sync"] += 1

    fake = types.SimpleNamespace(Event=FakeEvent, Stream=FakeStream, stream=lambda s: contextlib.nullcontext(),
                                 current_stream=lambda device=None: FakeStream(), synchronize=sync,
                                 _sleep=lambda cycles: calls["sleep"].append(cycles))
    monkeypatch.setattr(timing, "cuda", fake)
    return calls


def test_gpu_timer_path_on_fake_events(fake_cuda):
    t = Timer(torch.device("cpu"), warmup=2, repeats=5, min_rep_ms=0.05)
    t.is_cuda, t._has_sleep = True, True
    seen = []
    st = t.time(lambda i: (seen.append(i), time.sleep(0.002)))
    # warm-up 0-1, calibration 2-7, then 5 repeats of one call each (2 ms > 0.05 ms: no grouping)
    assert seen == list(range(13)) and st.repeats == 5 and 1.8 < st.ms < 20
    assert len(fake_cuda["sleep"]) == 2 and min(fake_cuda["sleep"]) > 0
    assert fake_cuda["sleep"][0] <= timing.MAX_SLEEP_S * timing.GPU_CLOCK_HZ

    fast = []
    st = t.time(lambda i: fast.append(i))  # ~microseconds: several calls per timed repeat
    assert len(fast) > 8 + 5 and st.ms < 1.0


def test_gpu_pair_path_on_fake_events(fake_cuda):
    t = Timer(torch.device("cpu"), warmup=1, repeats=3)
    t.is_cuda = True
    ia, ib = [], []
    ps = t.pair(lambda i: (ia.append(i), time.sleep(0.003)), lambda i: (ib.append(i), time.sleep(0.001)))
    assert ps.concurrent is True and ps.together.repeats == 3
    assert ia == ib == [0, 1, 2, 3, 4]  # warm-up, host-time probe, 3 repeats: both sides see the same index
    assert ps.a.ms > ps.b.ms and ps.together.ms >= ps.a.ms + ps.b.ms - 0.5  # serial here: fake streams
    assert fake_cuda["waits"] == 4 * 5  # per launch: both streams wait on the fork, main on both ends (join)


def test_nvml_reasons_and_index(monkeypatch):
    assert reason_names(0x1 | 0x4) == ["gpu_idle", "sw_power_cap"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert nvml_index(1) == 5 and nvml_index(4) == 4
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-abc")
    assert nvml_index(0) == 0


def test_nvml_summary_flags_throttling():
    samples = [{"section": "ops", "sm_clock_mhz": 1980, "power_w": 500.0, "reasons": 0x1},
               {"section": "ops", "sm_clock_mhz": 1700, "power_w": 700.0, "reasons": 0x4},
               {"section": "peaks", "sm_clock_mhz": 1980, "reasons": 0}]
    s = summarize_samples(samples)
    assert s["throttled"] is True and s["throttled_sections"] == ["ops"]
    assert s["overall"]["sm_clock_mhz"] == {"min": 1700, "median": 1980, "max": 1980}
    assert s["sections"]["ops"]["reasons"] == {"gpu_idle": 0.5, "sw_power_cap": 0.5}
    assert s["sections"]["peaks"]["throttled"] is False
    assert summarize_samples(samples[:1])["throttled"] is False  # idle is not throttling
    assert summarize_samples([], available=False, why="no driver") == {"available": False, "why": "no driver",
                                                                        "throttled": None}


class FakeNvml:
    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetClockInfo(self, h, which):
        return 1980 if which == 1 else 2619

    def nvmlDeviceGetPowerUsage(self, h):
        return 650_000

    def nvmlDeviceGetTemperature(self, h, which):
        return 61

    def nvmlDeviceGetUtilizationRates(self, h):
        return types.SimpleNamespace(gpu=100, memory=40)

    def nvmlDeviceGetMemoryInfo(self, h):
        raise RuntimeError("not supported")  # one failing query leaves only its field out

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h):  # the pre-12.2 name only
        return 0x4


def test_nvml_sampler_thread_with_fake_nvml():
    with NvmlSampler(0, interval_s=0.005, nvml=FakeNvml()) as s:
        with s.section("decode_attn"):
            time.sleep(0.05)
    summary = s.summary()
    assert s.available and summary["available"] and summary["throttled"] is True
    dec = summary["sections"]["decode_attn"]
    assert dec["samples"] >= 2 and dec["power_w"]["max"] == 650.0 and dec["sm_clock_mhz"]["min"] == 1980
    assert "memory_used_gib" not in dec and dec["reasons"] == {"sw_power_cap": 1.0}


def test_nvml_sampler_unavailable():
    class Broken:
        def nvmlInit(self):
            raise OSError("libnvidia-ml.so.1: cannot open")

    with NvmlSampler(0, nvml=Broken()) as s:
        with s.section("x"):
            pass
    assert not s.available and "libnvidia-ml" in s.summary()["why"]


def test_measurements_through_the_gpu_timer_path(fake_cuda):
    """The engine's ops on a tiny CPU rig, timed by the GPU branch of Timer (fake events): the same calls the
    GPU run makes, short of real streams."""
    from engine.presets import get_preset
    from nanotune.profile.interference import measure_interference, measure_micro_pair, pair_cases
    from nanotune.profile.measure import measure_ops, op_points, tiny_grid
    from nanotune.profile.ops import shard, shard_config
    from nanotune.profile.rig import LayerRig

    cfg = get_preset("tiny-llama-micro")
    s = shard(cfg, 1)
    rig = LayerRig(shard_config(cfg, s, 3), torch.device("cpu"), torch.float32, num_kv_blocks=64, max_tokens=64,
                   num_workspaces=3)
    grid = tiny_grid()
    t = Timer(torch.device("cpu"), warmup=1, repeats=2)
    t.is_cuda, t._has_sleep = True, True
    errors, steps = [], []
    ops = measure_ops(rig, t, s, grid, 1 << 20, steps.append, errors)
    assert errors == [] and len(steps) == sum(len(op_points(grid, op)) for op in ops)
    assert all(p["ms"] > 0 for e in ops.values() for p in e["points"])
    pairs = measure_interference(rig, t, pair_cases(grid, rig.kv_bytes_per_token), 1 << 20, steps.append, errors)
    assert errors == [] and pairs and all(r["concurrent"] for r in pairs)
    mp = measure_micro_pair(rig, t, grid, 1 << 20)
    assert mp["concurrent"] and len(mp["two_stream"]) == 2
    assert len(fake_cuda["sleep"]) > len(pairs)  # every measurement queued behind a sleep
