"""The profile's power section: its CPU path end to end (rates timed on the host, no `together` without
streams), the sustained loop and NVML windows on made-up inputs, the read probe under the Triton interpreter
against its torch reference, the schema's one-line errors and the table; the GPU run is marked gpu."""

import importlib

import pytest
import torch

from nanotune.errors import UserError
from nanotune.profile import load_profile, validate_profile
from nanotune.profile.power import nvml_window, power_budgets, run_sustained
from nanotune.profile.power_view import power_table
from nanotune.profile.run import ProfileOptions, run_profile
from nanotune.results.bound import rates_from_profile


@pytest.fixture(scope="module")
def cpu_power(tmp_path_factory):
    out = tmp_path_factory.mktemp("power") / "p.json"
    profile, _ = run_profile(ProfileOptions(model="tiny-llama-micro", device="cpu", out=str(out), progress=False,
                                            plots=False, sections=("power",)))
    return profile, out


def test_cpu_power_section(cpu_power):
    profile, out = cpu_power
    assert profile["errors"] == [] and profile["ops"] == {}  # --power-only: no op timings
    p = load_profile(out)["power"]  # written, and passes the schema
    assert p["gemm"]["op"] == "gate_up" and p["gemm"]["tflops"] > 0
    kinds = {r["kernel"] for r in p["read"]}
    assert kinds == {"torch_sum", "decode_attn"}  # no Triton probe on CPU
    assert all(r["gb_s"] > 0 and r["bytes"] > 0 for r in p["read"])
    assert p["together"] == [] and "streams" in p["why"]
    rates = rates_from_profile(profile, str(out))
    assert rates.overlap is None and rates.read_bytes_per_s == max(r["gb_s"] for r in p["read"]) * 1e9


def test_power_table_renders(cpu_power):
    from rich.console import Console

    console = Console(width=140, record=True)
    console.print(power_table(cpu_power[0]["power"], "cpu"))
    text = console.export_text()
    assert "GEMM gate_up" in text and "HBM read torch_sum" in text and "together not measured" in text
    assert power_table(None) is None


def test_schema_names_a_bad_power_field(cpu_power):
    import copy

    bad = copy.deepcopy(cpu_power[0])
    bad["power"]["read"][0]["gb_s"] = -1
    with pytest.raises(UserError, match=r"field 'power.read\[0\].gb_s': expected a positive number"):
        validate_profile(bad, "p.json")
    bad["power"] = {"read": []}
    with pytest.raises(UserError, match="missing field 'power.gemm'"):
        validate_profile(bad, "p.json")


def test_sustained_loop_times_the_second_half():
    calls = []

    def fn(i):
        calls.append(i)
        x = torch.ones(64, 64)
        x @ x

    res = run_sustained([fn], 0.05, is_cuda=False)
    assert len(res["ms"]) == 1 and res["ms"][0] > 0 and res["window"][0] < res["window"][1]
    assert len(calls) > 4


def test_nvml_window_medians_inside_only():
    samples = [{"t": 0.0, "power_w": 100.0}, {"t": 1.0, "power_w": 600.0, "sm_clock_mhz": 1500},
               {"t": 2.0, "power_w": 700.0, "sm_clock_mhz": 1400}, {"t": 3.0, "power_w": 50.0}]
    assert nvml_window(samples, (0.5, 2.5)) == {"power_w": 650.0, "sm_clock_mhz": 1450.0}
    assert nvml_window(samples, (5, 6)) == {"power_w": None, "sm_clock_mhz": None}


def test_budgets():
    assert power_budgets(132, quick=True) == (33, 66, 132)
    assert power_budgets(132, quick=False) == (16, 33, 44, 66, 132)
    assert power_budgets(None, quick=True) == (2,)


def test_read_probe_matches_its_reference():
    from engine.kernels.testing import triton_test_device

    device = triton_test_device()
    if device is None:
        pytest.skip("triton is not importable here")
    import nanotune.profile.readprobe as rp

    rp = importlib.reload(rp)  # jit functions made under TRITON_INTERPRET when on CPU
    x = rp.read_buffer(4 * rp.ROWS * rp.COLS * 2, device, seed=1)  # 4 tiles
    for programs in (1, 3):
        fn, out = rp.read_fn(x, programs, "ptr")
        fn()
        torch.testing.assert_close(out, rp.read_reference(x, programs), rtol=1e-4, atol=1e-2)


@pytest.mark.gpu
def test_gpu_power_section_quick(tmp_path):
    profile, _ = run_profile(ProfileOptions(model="llama-3-8b", quick=True, out=str(tmp_path / "p.json"),
                                            progress=False, plots=False, sections=("power",)))
    p = profile["power"]
    assert p["errors"] == [] or all("tma" in e for e in p["errors"])
    assert p["gemm"]["tflops"] > 50
    kinds = {r["kernel"] for r in p["read"]}
    assert {"torch_sum", "probe_ptr", "decode_attn"} <= kinds
    assert p["together"] and all(0 < t["sum"] < 2.5 for t in p["together"])
    if torch.cuda.get_device_capability()[0] >= 9:  # the TMA probe reads what the pointer one reads
        import nanotune.profile.readprobe as rp

        x = rp.read_buffer(64 << 20, "cuda")
        fn, out = rp.read_fn(x, 66, "tma")
        fn()
        torch.testing.assert_close(out, rp.read_reference(x, 66), rtol=1e-3, atol=1.0)
