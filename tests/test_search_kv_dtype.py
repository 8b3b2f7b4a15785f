"""`nanotune search --kv-cache-dtype`: the performance model's decode attention and KV capacity at the cache's
bytes, the refusal of a profile measured over another dtype, a reference profile used with only the bytes
facts scaled, and the tuned config carrying the dtype into the engine and bench."""

import json

import pytest
from click.testing import CliRunner
from test_search_cli import cpu, invoke, one_line_error, run_dir_of_excluding  # noqa: F401  (fixture)
from test_search_helpers import h200_like_profile_dict, write

from engine import EngineConfig, LLMEngine
from engine.errors import EngineConfigError
from engine.plan import PipelinePlan
from engine.sizing import kv_blocks_that_fit
from engine.tuned import TunedConfig, kv_cache_dtype_with, load_tuned
from nanotune.cli import main
from nanotune.profile.ops import Shard, decode_cost
from nanotune.search import kv_dtype
from nanotune.search.capacity import kv_capacity
from nanotune.search.perfmodel import BatchShape, predict
from nanotune.search.profiledata import load_profile


@pytest.fixture
def profile(tmp_path):
    return load_profile(write(tmp_path, h200_like_profile_dict(), "bf16.json"))  # no kv_cache_dtype: "auto"


def decode_ms(profile, batch: BatchShape) -> float:
    return predict(PipelinePlan.sequential(), profile, batch).busy_ms()["decode_attn"]


def test_fp8_decode_attention_reads_half_the_bytes(profile):
    batch = BatchShape(num_decode=128, decode_context=2048)
    bf16 = decode_ms(profile, batch)
    choice = kv_dtype.choose(profile, "fp8", is_reference=True)
    fp8 = decode_ms(profile, batch)
    assert choice.ratio == 0.5 and profile.kv_bytes_ratio == 0.5
    # the ratio the bytes formula gives (K/V at 1 byte against 2; q and block tables unchanged) ...
    s = Shard.of(profile.shapes)
    want = decode_cost(s, 128, 2048, e=2, kv_e=1)[1] / decode_cost(s, 128, 2048, e=2)[1]
    # ... up to the profile's fixed per-launch time (0.008 ms of every point in this fixture)
    assert fp8 / bf16 == pytest.approx(want, rel=0.03)
    assert fp8 / bf16 < 0.55
    # the GEMMs and prefill attention are not a bytes fact of the cache: unchanged
    mixed = BatchShape(num_decode=64, decode_context=1024, num_prefill=512, prefill_context=700)
    t8 = predict(PipelinePlan.sequential(), profile, mixed).busy_ms()
    profile.kv_bytes_ratio = 1.0
    t16 = predict(PipelinePlan.sequential(), profile, mixed).busy_ms()
    for op in ("qkv", "gate_up", "prefill_attn", "rope_kv"):
        assert t8[op] == pytest.approx(t16[op], rel=1e-9), op


def test_fp8_kv_capacity_from_engine_sizing(profile):
    s = Shard.of(profile.shapes)
    bf16 = kv_capacity(s, 139.8, 0.9, 2048, 512, 16, kv_dtype_bytes=2)
    fp8 = kv_capacity(s, 139.8, 0.9, 2048, 512, 16, kv_dtype_bytes=1)
    assert fp8.budget_bytes == bf16.budget_bytes  # weights and workspace stay bf16
    assert fp8.num_blocks == kv_blocks_that_fit(fp8.budget_bytes, s.num_layers, s.kv_size, 16, 1)
    assert bf16.num_blocks == kv_blocks_that_fit(bf16.budget_bytes, s.num_layers, s.kv_size, 16, 2)
    assert fp8.num_blocks in (2 * bf16.num_blocks, 2 * bf16.num_blocks + 1)  # floor of twice as many
    assert kv_capacity(s, 139.8).num_blocks == bf16.num_blocks  # the default is the model dtype's bytes


def test_profile_of_another_dtype_is_refused_one_line(cpu, tmp_path):  # noqa: F811
    bf16 = write(tmp_path, h200_like_profile_dict(), "bf16.json")
    line = one_line_error(invoke("--profile", str(bf16), "--kv-cache-dtype", "fp8", "--results-dir",
                                 str(cpu / "res"), "--n-trials", "2"))
    assert "bf16.json: profile measured KV cache dtype auto, not --kv-cache-dtype fp8" in line
    fp8 = write(tmp_path, {**h200_like_profile_dict(), "kv_cache_dtype": "fp8", "kv_element_bytes": 1}, "f8.json")
    line = one_line_error(invoke("--profile", str(fp8), "--results-dir", str(cpu / "res"), "--n-trials", "2"))
    assert "f8.json: profile measured KV cache dtype fp8, not --kv-cache-dtype auto" in line


def search_result(cpu, *args):  # noqa: F811
    res = invoke(*args, "--results-dir", str(cpu / "res"), "--n-trials", "4", "--trace", "constant:1024:512")
    assert res.exit_code == 0, res.output
    d = max((p for p in (cpu / "res").iterdir() if p.name not in ("search", "reference")),
            key=lambda p: p.stat().st_mtime_ns)
    return res.output, json.loads((d / "result.json").read_text()), load_tuned(d / "tuned.json"), d


# a power section: the bound has its rates
POWER = {"gemm": {"tflops": 600.0}, "together": [{"sum": 1.05, "gemm_fraction": 0.5, "read_fraction": 0.55}],
         "read": [{"kernel": "probe_tma", "gb_s": 4500.0, "programs": None}]}


def test_fp8_profile_runs_as_measured_and_the_tuned_config_carries_it(cpu, tmp_path):  # noqa: F811
    base = {**h200_like_profile_dict(), "power": POWER}
    fp8 = write(tmp_path, {**base, "kv_cache_dtype": "fp8", "kv_element_bytes": 1}, "f8.json")
    out, result, tuned, _ = search_result(cpu, "--profile", str(fp8), "--kv-cache-dtype", "fp8")
    assert tuned.kv_cache_dtype == "fp8" and tuned.source["kv_cache"]["profile_kv_cache_dtype"] == "fp8"
    assert "scaled_by_bytes" not in tuned.source["kv_cache"] and "as the profile measured" in out
    assert result["engine"]["kv_cache_dtype"] == "fp8" and "--kv-cache-dtype fp8" in result["resume_command"]
    _, auto, _, _ = search_result(cpu, "--profile", str(write(tmp_path, base, "b.json")))
    # the bound charges the KV reads at the cache's bytes
    assert (result["bound"]["inputs"]["kv_dtype_bytes"], auto["bound"]["inputs"]["kv_dtype_bytes"]) == (1, 2)
    assert result["bound"]["decode_kv_bytes"] == auto["bound"]["decode_kv_bytes"] / 2


def test_reference_profile_scales_the_bytes_facts_and_says_so(cpu):  # noqa: F811
    ref = cpu / "res" / "reference" / "h200"
    ref.mkdir(parents=True)
    write(ref, h200_like_profile_dict(), "profile-llama-3-8b-tp1.json")
    out16, r16, t16, _ = search_result(cpu, "--gpu", "h200")
    out8, r8, t8, _ = search_result(cpu, "--gpu", "h200", "--kv-cache-dtype", "fp8")
    assert "measured over auto (2 B): KV capacity and decode attention (at equal KV bytes) scaled by 0.5" in \
        " ".join(out8.split())
    assert t16.kv_cache_dtype == "auto" and t8.kv_cache_dtype == "fp8"
    assert t8.source["kv_cache"]["scaled_by_bytes"] == ["kv_capacity", "decode_attn"]
    assert t8.source["kv_cache"]["as_measured"] == ["prefill_attn", "rope_kv"]
    seq16, seq8 = r16["baselines"]["sequential"], r8["baselines"]["sequential"]  # the engine's default limits
    assert seq8["kv_cache_tokens"] // 16 in (2 * (seq16["kv_cache_tokens"] // 16),
                                             2 * (seq16["kv_cache_tokens"] // 16) + 1)
    assert any("scaled by 0.5" in n for n in r8["notes"])


def tuned_file(tmp_path, kv):
    return TunedConfig(PipelinePlan.sequential(), 64, 8, model="tiny-llama-micro", kv_cache_dtype=kv).save(
        tmp_path / f"tuned-{kv}.json")


def test_tuned_config_round_trip_and_bad_value(tmp_path):
    path = tuned_file(tmp_path, "fp8")
    back = load_tuned(path)
    assert back.kv_cache_dtype == "fp8" and back.to_dict() == json.loads(path.read_text())
    old = {k: v for k, v in json.loads(path.read_text()).items() if k != "kv_cache_dtype"}
    assert TunedConfig.from_dict(old).kv_cache_dtype is None  # files from before the field: no constraint
    with pytest.raises(EngineConfigError, match="x.json: field 'kv_cache_dtype': expected one of"):
        TunedConfig.from_dict({**old, "kv_cache_dtype": "int4"}, "x.json")
    assert kv_cache_dtype_with(back, "auto") == "fp8" and kv_cache_dtype_with(back, "fp8") == "fp8"
    assert kv_cache_dtype_with(None, "fp8") == "fp8"
    conflict = "kv_cache_dtype bfloat16 conflicts with .*tuned for kv_cache_dtype fp8"
    with pytest.raises(EngineConfigError, match=conflict):
        kv_cache_dtype_with(back, "bfloat16")


def test_engine_runs_a_tuned_config_with_its_kv_dtype(tmp_path):
    import torch

    path = str(tuned_file(tmp_path, "fp8"))
    eng = LLMEngine(EngineConfig(model="tiny-llama-micro", device="cpu", plan=path, max_model_len=64))
    assert eng.config.kv_cache_dtype == "fp8" and eng.runner.kv_cache.dtype == torch.float8_e4m3fn
    with pytest.raises(EngineConfigError, match="conflicts with"):
        LLMEngine(EngineConfig(model="tiny-llama-micro", device="cpu", plan=path, kv_cache_dtype="float32"))


def bench(tmp_path, *args):
    return CliRunner().invoke(main, ["bench", "--device", "cpu", "-n", "3", "--max-output-len", "3",
                                     "--max-prompt-len", "20", "--num-warmups", "0", "--results-dir",
                                     str(tmp_path / "res"), "--no-progress", *args])


def test_bench_takes_the_tuned_kv_dtype_and_refuses_a_conflicting_flag(tmp_path):
    path = str(tuned_file(tmp_path, "fp8"))
    res = bench(tmp_path, "--plan", path, "--kv-cache-dtype", "auto")
    assert res.exit_code == 2 and "--kv-cache-dtype auto conflicts with" in res.output, res.output
    assert "Traceback" not in res.output
    res = bench(tmp_path, "--plan", path)
    assert res.exit_code == 0, res.output
    (d,) = (tmp_path / "res").iterdir()
    assert '"kv_cache_dtype": "fp8"' in (d / "result.json").read_text()
