"""The whole profile pipeline on CPU (tiny preset, the engine's torch kernels), interference bookkeeping on
made-up timings, plots, and the CLI's one-line exits."""

import json

import pytest
import torch
from click.testing import CliRunner

from engine.plan import LAYER_OPS
from nanotune.cli import main
from nanotune.profile import load_profile
from nanotune.profile.interference import PairCase, micro_pair_record, pair_cases, pair_record
from nanotune.profile.measure import default_grid, max_kv_blocks, op_points, quick_grid, sm_budgets, tiny_grid
from nanotune.profile.plots import write_plots
from nanotune.profile.run import ProfileOptions, run_profile
from nanotune.profile.testing import synthetic_profile
from nanotune.profile.timing import PairStats, Stats
from nanotune.profile.view import summary_lines, summary_table


def st(ms):
    return Stats(ms=ms, ms_min=ms, ms_p90=ms, repeats=3)


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("profile")
    profile, run_dir = run_profile(ProfileOptions(model="tiny-llama-micro", device="cpu", out=str(out),
                                                  progress=False))
    return profile, run_dir


def test_cpu_pipeline_end_to_end(cpu_run):
    profile, run_dir = cpu_run
    assert profile["errors"] == [] and profile["partial"] is False
    loaded = load_profile(run_dir / "profile.json")  # the file passes the schema search reads it with
    assert loaded["model"] == "tiny-llama-micro" and loaded["gpu"]["name"] == "cpu"
    grid = tiny_grid()
    for op in LAYER_OPS:  # every op, at every point of the grid, through the real engine code
        pts = loaded["ops"][op]["points"]
        assert len(pts) == len(op_points(grid, op)), op
        assert all(p["ms"] > 0 and p["flops"] > 0 and p["bytes"] > 0 for p in pts)
    assert {p["sm_budget"] for p in loaded["ops"]["decode_attn"]["points"]} == {2, None}
    assert len(loaded["interference"]) == len(pair_cases(grid, 2 * 2 * 16 * 4))
    assert all(r["concurrent"] is False for r in loaded["interference"])
    mp = loaded["micro_pair"]
    assert [r["sm_budget"] for r in mp["two_stream"]] == [None, 2] and mp["best"]["gain_vs_back_to_back"] > 0
    assert loaded["method"]["kernels"] == "torch" and loaded["method"]["weight_layers"] >= 2
    # launch gaps: a decode-only layer at the grid's decode batches; off a GPU the eager side only
    lp = loaded["launch"]["points"]
    assert [(p["batch"], p["context"]) for p in lp] == [(2, 16), (4, 16)]
    assert all(p["ops"] == len(LAYER_OPS) - 1 and p["sum_alone_ms"] > 0 and p["eager_layer_ms"] > 0
               and p["eager_gap_ms"] == pytest.approx((p["eager_layer_ms"] - p["sum_alone_ms"]) / p["ops"], abs=1e-4)
               and p["graph_gap_ms"] is None for p in lp)
    assert loaded["sustained"]["points"] == []  # sustained load: a GPU's power limit, nothing to see on CPU
    assert any("device cpu" in n for n in loaded["notes"]) and any("GEMMs" in n for n in loaded["notes"])
    assert sorted(loaded["plots"]) == ["decode_sm.png", "interference.png", "micro_pair.png", "ops_tokens.png",
                                       "roofline.png"]
    for name in loaded["plots"]:
        assert (run_dir / name).read_bytes()[:4] == b"\x89PNG"
    assert loaded["nvml"]["available"] in (True, False) and isinstance(loaded["throttled"], bool)


def test_summary_of_a_run(cpu_run):
    profile, _ = cpu_run
    assert summary_table(profile).row_count == len(LAYER_OPS)
    lines = summary_lines(profile)
    assert any(line.startswith("GEMM x decode_attn") for line in lines)
    assert any(line.startswith("micro pair") for line in lines)


def test_pair_record_bookkeeping():
    case = PairCase("gate_up", {"tokens": 1024}, "decode_attn", {"batch": 64, "context": 2048}, 44)
    together = PairStats(together=st(0.6), a=st(0.55), b=st(0.5), concurrent=True)
    r = pair_record(case, alone_a=st(0.4), alone_b=st(0.3), together=together, alone_b_full=st(0.25))
    assert r["predicted_ms"] == 0.4 and r["back_to_back_ms"] == 0.7
    assert r["slowdown_a"] == pytest.approx(1.375) and r["slowdown_b"] == pytest.approx(5 / 3, abs=1e-4)
    assert r["error_vs_predicted"] == pytest.approx(0.5)
    assert r["overlap_realized"] == pytest.approx(1 / 3, abs=1e-4)  # saved 0.1 of an ideal 0.3
    assert r["gain_vs_sequential"] == pytest.approx(0.65 / 0.6, abs=1e-4) and r["alone_b_full_ms"] == 0.25
    worse = pair_record(case, st(0.4), st(0.3), PairStats(st(0.8), st(0.7), st(0.6), True))
    assert worse["overlap_realized"] < 0 and "gain_vs_sequential" not in worse


def test_micro_pair_bookkeeping():
    variants = [(None, st(0.49), PairStats(st(1.05), st(0.9), st(1.0), True)),
                (44, st(0.71), PairStats(st(0.8), st(0.7), st(0.75), True))]
    mp = micro_pair_record(1024, {"batch": 64, "context": 4096}, 2**30, st(0.46), st(0.49), st(0.98), variants)
    assert mp["back_to_back_ms"] == 0.98 and mp["sum_alone_ms"] == pytest.approx(0.95)
    assert mp["two_stream"][0]["gain_vs_back_to_back"] == pytest.approx(0.98 / 1.05, abs=1e-4)
    assert mp["best"] == {"sm_budget": 44, "together_ms": 0.8, "gain_vs_back_to_back": pytest.approx(1.225)}
    assert mp["attn"]["kv_gib"] == 1.0 and mp["two_stream"][1]["predicted_ms"] == 0.71


def test_grids():
    assert sm_budgets(132, (1 / 8, 1 / 4, 1 / 3, 1 / 2, 2 / 3, 1)) == (16, 33, 44, 66, 88, 132, None)
    g = default_grid(132)
    assert len(op_points(g, "decode_attn")) == 6 * 4 * 7 and None in g.pair_budgets
    cases = pair_cases(g, 4096)  # Llama-3-8B: 4 KiB of KV per token per layer
    dec = [c for c in cases if c.b == "decode_attn"]
    assert {c.a for c in dec} == {"qkv", "o_proj", "gate_up", "down"}
    assert {c.b_point["batch"] for c in dec} == {32, 64, 128}  # 0.25 / 0.5 / 1 GiB at 2048 tokens each
    assert {c.b for c in cases} >= {"prefill_attn", "attn_norm", "silu_mul"}
    assert len(quick_grid(132).tokens) < len(g.tokens)
    # the cache holds the largest decode case (256 x 4096 = 4 GiB) once, small ones several times over
    assert max_kv_blocks(g, 4096, 50 * 2**20) == 256 * 4096 // 16


def test_plots_from_a_synthetic_profile(tmp_path):
    made = write_plots(synthetic_profile("llama-3-70b", tp=4, quick=True), tmp_path)
    assert len(made) == 5 and all(p.read_bytes()[:4] == b"\x89PNG" for p in made)
    empty = synthetic_profile(quick=True)
    empty.update(interference=[], micro_pair=None)
    assert {p.name for p in write_plots(empty, tmp_path / ".")} == {"decode_sm.png", "ops_tokens.png",
                                                                  "roofline.png"}


def invoke(*args):
    return CliRunner().invoke(main, ["profile", *args])


def test_cli_without_gpu_exits_2_with_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    res = invoke("--model", "llama-3-8b", "--results-dir", str(tmp_path))
    assert res.exit_code == 2
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "needs a CUDA GPU; none found" in lines[0] and "results/reference/" in lines[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, expected", [
    (["--model", "llama-9000"], "unknown model 'llama-9000'"),
    (["--model", "qwen2-7b", "--tp", "8", "--device", "cpu"], "code-path check for the tiny presets"),
    (["--model", "llama-3-8b", "--device", "tpu"], "expected cuda or cuda:N"),
])
def test_cli_user_errors(args, expected):
    res = invoke(*args)
    assert res.exit_code == 2 and expected in res.output and len(res.output.strip().splitlines()) == 1


def test_cli_tp_that_does_not_divide(monkeypatch):
    res = invoke("--model", "tiny-llama-micro", "--tp", "3", "--device", "cpu")
    assert res.exit_code == 2 and "do not divide over --tp 3" in res.output


def test_cli_cpu_code_path_check(tmp_path):
    res = invoke("--model", "tiny", "--device", "cpu", "--results-dir", str(tmp_path), "--no-progress",
                 "--no-plots")
    assert res.exit_code == 0, res.output
    (run_dir,) = tmp_path.iterdir()
    assert run_dir.name.endswith("-profile-tiny-llama-tp1")
    profile = json.loads((run_dir / "profile.json").read_text())
    assert profile["model"] == "tiny-llama" and "plots" not in profile
    assert "wrote" in res.output and "decode_attn" in res.output


def test_cli_out_json_file_for_reference_profiles(tmp_path):
    target = tmp_path / "reference" / "cpu" / "profile-tiny-llama-micro-tp1.json"
    res = invoke("--model", "tiny-llama-micro", "--device", "cpu", "--out", str(target), "--no-progress")
    assert res.exit_code == 0, res.output
    assert load_profile(target)["run_id"] == "profile-tiny-llama-micro-tp1"
    assert (target.parent / "profile-tiny-llama-micro-tp1-decode_sm.png").exists()
    assert f"wrote {target} and 5 plots" in " ".join(res.output.split())


def test_a_failing_section_is_recorded_and_the_rest_written(monkeypatch, tmp_path):
    import nanotune.profile.run as run

    def boom(*a, **k):
        raise RuntimeError("no streams today")

    monkeypatch.setattr(run, "measure_interference", boom)
    res = invoke("--model", "tiny-llama-micro", "--device", "cpu", "--out", str(tmp_path), "--no-progress",
                 "--no-plots")
    assert res.exit_code == 1 and "section:interference" in res.output
    profile = load_profile(tmp_path)
    assert profile["partial"] is True and profile["ops"]["qkv"]["points"] and profile["micro_pair"]
    assert profile["errors"][0]["op"] == "section:interference" and "no streams today" in profile["errors"][0]["error"]


def test_tp2_profile_times_the_allreduce_over_real_ranks(tmp_path):
    """`profile --tp 2` where the ranks can run (here two gloo processes; on CUDA two GPUs): the all-reduce is
    measured, checked and recorded per message size, the search reads it back, and no note says it is not."""
    from nanotune.search.perfmodel import allreduce_ms
    from nanotune.search.profiledata import load_profile as load_for_search

    opts = ProfileOptions(model="tiny-llama-micro", tp=2, device="cpu", out=str(tmp_path), progress=False,
                          plots=False, sections=("ops", "collectives"))
    profile, run_dir = run_profile(opts)
    assert profile["errors"] == [], profile["errors"]
    ar = load_profile(run_dir / "profile.json")["collectives"]["all_reduce"]
    assert ar["measured"] is True and ar["impl"] == "nccl" and ar["backend"] == "gloo" and ar["ranks"] == 2
    assert "why" not in ar
    assert [p["bytes"] for p in ar["points"]] == [2**16, 2**18] and all(p["ms"] > 0 for p in ar["points"])
    assert all(p["together_ms"] is None for p in ar["points"])  # no streams off a GPU
    assert not any("all-reduces after o_proj and down" in n for n in profile["notes"])
    assert any(line.startswith("all-reduce over 2 ranks (nccl, gloo): 0.0625 MiB") for line in summary_lines(profile))
    p = load_for_search(str(run_dir / "profile.json"))
    tokens = 2**16 // ar["bytes_per_token"]
    assert allreduce_ms(p, tokens) == pytest.approx(ar["points"][0]["ms"])


def test_tp_profile_without_the_ranks_gpus_says_so(monkeypatch):
    from nanotune.profile import collectives

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert collectives.peers_missing(2, "cuda") == "1 GPU(s) here, 2 ranks needed"
    assert collectives.peers_missing(2, "cpu") is None
