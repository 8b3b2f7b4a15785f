"""Issue 18: bad input is one line and exit 2 before anything runs (never a traceback, never a hang)."""

import json

import click
import pytest
import torch
from click.testing import CliRunner

from nanotune.cli import checks, main, options

GIB = 2**30


@pytest.fixture
def eight_gib(monkeypatch):
    """A machine with 8 GiB free, so memory refusals do not depend on the test machine."""
    monkeypatch.setattr(options, "available_memory_bytes", lambda: 8 * GIB)


def one_line_exit_2(res, *needles):
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    err = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(err) == 1, res.output
    for n in needles:
        assert n in res.output, res.output
    return res.output


BENCH_BAD = [
    (["--mode", "online", "--request-rate", "nan"], "--request-rate"),
    (["--mode", "online", "--request-rate", "0"], "--request-rate"),
    (["--mode", "online", "--request-rate", "1e-9"], "--request-rate"),
    (["--burstiness", "nan"], "--burstiness"),
    (["--burstiness", "inf"], "--burstiness"),
    (["--seed", "-1"], "--seed"),
    (["--seed", str(2**40)], "--seed"),
    (["--input-len", "99999999999", "--trace", "constant"], "--input-len"),
    (["--max-num-batched-tokens", "99999999999"], "--max-num-batched-tokens"),
    (["--max-num-seqs", "99999999999"], "--max-num-seqs"),
    (["--plan", "nb0"], "nb0"),
    (["--plan", "nb99999"], "nb99999"),
    (["--hf-attn", "bogus", "--engine", "hf"], "bogus"),
    (["--endpoint", "http://127.0.0.1:9", "--num-params", "nan"], "--num-params"),
    (["--endpoint", "http://127.0.0.1:9", "--num-params", "inf"], "--num-params"),
    (["--peak-tflops", "nan"], "--peak-tflops"),
    (["--slo-attainment", "nan"], "--slo-attainment"),
    (["--mode", "offline", "--request-rate", "5"], "--mode offline"),
    (["--mode", "offline", "--sweep-rate", "1,2"], "--mode offline"),
    (["--endpoint", "http://127.0.0.1:9", "--engine", "hf"], "--endpoint"),
    (["--engine", "hf", "--plan", "nb2"], "--plan"),
    (["--kv-overcommit", "nan"], "--kv-overcommit"),
    (["--sweep-rate", "2,nan"], "--sweep-rate"),
    (["--allreduce", "copy-engine"], "--allreduce copy-engine: only with --tp > 1"),
    (["--tp", "2", "--device", "cpu", "--allreduce", "symm-mem-two-shot"], "needs CUDA GPUs"),
    (["--tp", "2", "--device", "cpu", "--allreduce", "nccl-channels:0"], "nccl-channels:N with N >= 1"),
]


@pytest.mark.parametrize("args,needle", BENCH_BAD, ids=[" ".join(a) for a, _ in BENCH_BAD])
def test_bench_bad_values_are_one_line(args, needle, tmp_path, eight_gib):
    res = CliRunner().invoke(main, ["bench", "--no-progress", "--results-dir", str(tmp_path), *args])
    one_line_exit_2(res, needle)
    assert not any(tmp_path.iterdir())  # refused before a run directory was made


def test_bench_huge_request_count_refused_against_memory(tmp_path, eight_gib):
    res = CliRunner().invoke(main, ["bench", "-n", "99999999999", "--results-dir", str(tmp_path)])
    one_line_exit_2(res, "-n 99,999,999,999", "GiB is free")


def test_bench_real_preset_too_big_for_the_cpu(tmp_path, eight_gib):
    res = CliRunner().invoke(main, ["bench", "--model", "llama-3-8b", "--device", "cpu",
                                    "--results-dir", str(tmp_path)])
    out = one_line_exit_2(res, "llama-3-8b", "GiB of memory", "8.0 GiB is free")
    assert "29.9 GiB" in out  # 8.03 B parameters x 4 bytes (fp32 on the CPU)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
@pytest.mark.parametrize("device", ["cuda", "cuda:7"])
def test_bench_cuda_device_without_gpu(device, tmp_path):
    res = CliRunner().invoke(main, ["bench", "--device", device, "--results-dir", str(tmp_path)])
    one_line_exit_2(res, f"--device {device}", "no CUDA GPU")


def test_device_names_checked():
    with pytest.raises(click.ClickException, match="expected cpu, cuda or cuda:N"):
        checks.check_device("tpu")


SEARCH_BAD = [
    (["--gpu-memory-gib", "nan"], "--gpu-memory-gib"),
    (["--tpot-limit", "nan"], "--tpot-limit"),
    (["--timeout", "nan"], "--timeout"),
    (["--seed", "-1"], "--seed"),
    (["--study", "../../x"], "--study"),
    (["--study", "a/b"], "--study"),
    (["--storage", "foo"], "storage foo"),
    (["--storage", "postgresql+nosuchdriver://u@localhost/db"], "storage"),
]


@pytest.mark.parametrize("args,needle", SEARCH_BAD, ids=[" ".join(a) for a, _ in SEARCH_BAD])
def test_search_bad_values_are_one_line(args, needle, tmp_path):
    res = CliRunner().invoke(main, ["search", "--gpu", "h200", "--model", "llama-3-8b", "--n-trials", "2",
                                    "-n", "50", "--no-progress", "--results-dir", str(tmp_path), *args])
    one_line_exit_2(res, needle)
    assert not list(tmp_path.rglob("*.db"))  # a study that never ran leaves no file


def test_search_unreachable_and_corrupt_storage(tmp_path):
    common = ["search", "--gpu", "h200", "--model", "llama-3-8b", "--n-trials", "2", "-n", "50", "--no-progress",
              "--results-dir", str(tmp_path)]
    res = CliRunner().invoke(main, [*common, "--storage", f"sqlite:///{tmp_path}/no/such/dir/x.db"])
    one_line_exit_2(res, "cannot open it")
    (tmp_path / "search").mkdir()
    (tmp_path / "search" / "bad.db").write_bytes(b"this is not a sqlite database" * 100)
    res = CliRunner().invoke(main, [*common, "--study", "bad", "--resume"])
    one_line_exit_2(res, "cannot open it")


TRACE_BAD = [(["--seed", "-1"], "--seed"), (["--burstiness", "nan", "--rate", "2"], "--burstiness"),
             (["--time-scale", "inf"], "--time-scale"), (["--range-ratio", "nan"], "--range-ratio")]


@pytest.mark.parametrize("args,needle", TRACE_BAD, ids=[" ".join(a) for a, _ in TRACE_BAD])
def test_trace_bad_values_are_one_line(args, needle):
    one_line_exit_2(CliRunner().invoke(main, ["trace", "--dataset", "sharegpt", "-n", "5", *args]), needle)


def test_finite_float_and_rates():
    t = options.FiniteFloat(0, 1, min_open=True)
    assert t.convert("0.5", None, None) == 0.5
    for bad in ("nan", "inf", "-inf", "0", "1.5", "x"):
        with pytest.raises(click.BadParameter):
            t.convert(bad, None, None)
    r = options.rate_type()
    assert r.convert("inf", None, None) == float("inf") and r.convert("2", None, None) == 2.0
    with pytest.raises(click.BadParameter):
        r.convert("-inf", None, None)


def test_plan_tuned_for_another_model_warns(tmp_path):
    from engine.plan import PipelinePlan

    plan = PipelinePlan.sequential()
    plan.meta.update(model="llama-3-70b", tp_degree=8)
    path = tmp_path / "plan.json"
    plan.save(path)
    note = checks.plan_model_warning(str(path), "tiny-llama")
    assert note and "llama-3-70b at TP 8" in note and "tiny-llama" in note
    assert checks.plan_model_warning(str(path), "llama-70b") is None  # an alias of the same model
    assert json.loads(path.read_text())["meta"]["model"] == "llama-3-70b"


def test_cpu_threads_on_a_loaded_machine(monkeypatch):
    monkeypatch.setattr(options.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(options.os, "getloadavg", lambda: (7.0, 7.0, 7.0))
    threads, note = options.cpu_threads(None)
    assert threads == 1 and "load 7.0 on 2 cores" in note
    assert options.cpu_threads(3) == (3, None)
    monkeypatch.setattr(options.os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    assert options.cpu_threads(None)[1] is None


def test_arrivals_spread_over_days_refused(tmp_path):
    res = CliRunner().invoke(main, ["bench", "--mode", "online", "--request-rate", "0.001", "-n", "1000",
                                    "--results-dir", str(tmp_path)])
    one_line_exit_2(res, "1,000 requests at 0.001 req/s", "hours")


def test_search_unwritable_results_folder_found_first(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = CliRunner().invoke(main, ["search", "--gpu", "h200", "--model", "llama-3-8b", "--n-trials", "2",
                                    "--results-dir", str(blocker / "sub")])
    one_line_exit_2(res, "cannot write there")
