"""`nanotune search` through click's CliRunner on synthetic profiles: files written, reference lookup,
resume, Pareto front, one-line errors (exit 2), and --validate on a machine without a GPU."""

import json

import optuna
import pytest
from click.testing import CliRunner
from test_search_helpers import LLAMA_70B_SHAPES, h200_like_profile_dict, write

import nanotune.search.resolve as resolve
import nanotune.search.run as run
from engine.tuned import load_tuned
from nanotune.cli import main


@pytest.fixture
def cpu(monkeypatch, tmp_path):
    """No GPU here, and no committed reference profiles (neither the repo's results/ nor the package's copy
    is consulted)."""
    import nanotune.search.reference as reference
    import nanotune.search.validate as validate

    monkeypatch.setattr(run, "_has_gpu", lambda: False)
    monkeypatch.setattr(validate, "gpu_available", lambda: False)
    monkeypatch.setattr(resolve, "REPO_ROOT", tmp_path / "no-repo")
    monkeypatch.setattr(reference, "PACKAGE_REFERENCE", tmp_path / "no-package")
    return tmp_path


@pytest.fixture
def profile_70b(tmp_path):
    return write(tmp_path, h200_like_profile_dict("llama-3-70b", 8, LLAMA_70B_SHAPES), "p70.json")


def invoke(*args):
    return CliRunner().invoke(main, ["search", "--no-progress", *args])


def one_line_error(res) -> str:
    """Exit 2 with one `error:` line, last (only progress notes like the model alias may come before it)."""
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert [ln for ln in lines if ln.startswith("error:")] == lines[-1:], res.output
    assert "Traceback" not in res.output
    return lines[-1]


def run_dir_of(results):
    (d,) = [p for p in results.iterdir() if p.name != "search"]
    return d


def test_llama_70b_tp8_from_a_profile_writes_plan_result_and_plots(cpu, profile_70b):
    res = invoke("--model", "llama-70b", "--tp", "8", "--profile", str(profile_70b), "--results-dir",
                 str(cpu / "res"), "--n-trials", "15", "--trace", "constant:1024:512")
    assert res.exit_code == 0, res.output
    assert "llama-70b -> llama-3-70b" in res.output
    d = run_dir_of(cpu / "res")
    result = json.loads((d / "result.json").read_text())
    assert result["kind"] == "search" and result["model"] == "llama-3-70b" and result["tp"] == 8
    assert result["study"]["num_trials"] == 15 and (d / "study.db").exists() and (d / "trials.csv").exists()
    tuned = load_tuned(d / "tuned.json")  # search writes the tuned config (plan + limits + model)
    assert result["files"]["plan"] == "tuned.json" and tuned.model == "llama-3-70b" and tuned.tp == 8
    assert tuned.max_num_batched_tokens == result["best"]["dense_batch_tokens"]
    assert tuned.max_num_seqs == result["best"]["max_num_seqs"]
    assert tuned.plan.name == result["best"]["plan"]
    assert result["best"]["total_token_throughput"] >= result["baselines"]["sequential"]["total_token_throughput"]
    assert {"sequential", "default", "nb2"} <= set(result["baselines"])
    assert {"history", "importances", "gantt"} <= set(result["plots"]), result["plots_skipped"]
    for f in result["plots"].values():
        assert (d / f).stat().st_size > 1000
    assert any("TP 8" in n for n in result["notes"]) and result["environment"]["python"]
    assert result["validation"] is None


def test_missing_reference_profile_is_one_line_naming_the_file(cpu):
    line = one_line_error(invoke("--model", "llama-70b", "--tp", "8", "--gpu", "h100", "--results-dir",
                                 str(cpu / "res")))
    assert "reference/h100/profile-llama-3-70b-tp8.json" in line


def test_reference_profile_by_gpu_name_runs_anywhere(cpu):
    ref = cpu / "res" / "reference" / "h200" / "profile-llama-3-8b-tp1"  # as `nanotune profile --out` writes it
    ref.mkdir(parents=True)
    write(ref, h200_like_profile_dict(), "profile.json")
    res = invoke("--model", "llama-8b", "--gpu", "H200", "--results-dir", str(cpu / "res"), "--n-trials", "6",
                 "--validate", "2")
    assert res.exit_code == 0, res.output
    assert "--validate needs a CUDA GPU" in res.output
    result = json.loads((run_dir_of_excluding(cpu / "res") / "result.json").read_text())
    assert result["validation"] == {"skipped": "no CUDA GPU on this machine"}
    assert "reference profile for h200" in result["profile"]["source"]


def run_dir_of_excluding(results):
    (d,) = [p for p in results.iterdir() if p.name not in ("search", "reference")]
    return d


def test_resume_adds_trials_to_the_same_study(cpu, profile_70b):
    common = ["--profile", str(profile_70b), "--tp", "8", "--results-dir", str(cpu / "res"), "--study", "s1",
              "--n-trials", "5"]
    assert invoke(*common).exit_code == 0
    assert "already exists" in one_line_error(invoke(*common))
    res = invoke(*common, "--resume")
    assert res.exit_code == 0, res.output
    study = optuna.load_study(study_name="s1", storage=f"sqlite:///{cpu / 'res' / 'search' / 's1.db'}")
    assert len(study.trials) == 10
    # the resumed sampler does not redraw the first run's points
    assert len({json.dumps(t.params, sort_keys=True) for t in study.trials}) > 6
    assert "no study 'nope'" in one_line_error(invoke(*common[:-4], "--study", "nope", "--resume"))
    assert not (cpu / "res" / "search" / "nope.db").exists()
    other = ["--storage", f"sqlite:///{cpu / 'res' / 'search' / 's1.db'}"]  # an explicit URL: the study is listed
    assert "studies there: s1" in one_line_error(invoke(*common[:-4], *other, "--study", "nope", "--resume"))


def test_both_objectives_give_a_pareto_front(cpu, profile_70b):
    res = invoke("--profile", str(profile_70b), "--tp", "8", "--results-dir", str(cpu / "res"), "--n-trials",
                 "24", "--objective", "both")
    assert res.exit_code == 0, res.output
    d = run_dir_of(cpu / "res")
    result = json.loads((d / "result.json").read_text())
    assert result["study"]["sampler"] == "NSGAIISampler" and result["pareto"]
    for p in result["pareto"]:
        load_tuned(d / p["plan_file"]).plan.validate()
    tp = [(p["total_token_throughput"], p["tpot_ms"]) for p in result["pareto"]]
    assert tp == sorted(tp, reverse=True)  # faster plans pay with longer TPOT along the front
    assert "pareto" in result["plots"], result["plots_skipped"]


@pytest.mark.parametrize("args, message", [
    (["--model", "llama-3-8b"], "profile is of 'llama-3-70b'"),
    (["--tp", "4"], "profile is for TP 8"),
    (["--tp", "8", "--tpot-limit", "0.001"], "no feasible plan within TPOT 0.001 ms"),
    (["--tp", "8", "--trace", "constant:1024"], "expected a dataset name"),
    (["--tp", "8", "--objective", "speed"], "Invalid value for '--objective'"),
])
def test_user_errors_are_one_line(cpu, profile_70b, args, message):
    line = one_line_error(invoke("--profile", str(profile_70b), "--results-dir", str(cpu / "res"), "--n-trials",
                                 "4", *args))
    assert message in line


def test_no_gpu_and_no_profile_says_what_to_pass(cpu):
    assert "pass --gpu NAME" in one_line_error(invoke("--results-dir", str(cpu / "res")))


def test_with_a_gpu_and_no_profile_a_fresh_one_is_measured(cpu, monkeypatch):
    calls = []

    def fresh(model, tp, results_dir):
        calls.append((model, tp))
        return write(cpu, h200_like_profile_dict(), "fresh.json")

    monkeypatch.setattr(run, "_has_gpu", lambda: True)
    monkeypatch.setattr(resolve, "fresh_profile", fresh)
    res = invoke("--model", "llama3-8b", "--results-dir", str(cpu / "res"), "--n-trials", "3")
    assert res.exit_code == 0, res.output
    assert calls == [("llama-3-8b", 1)] and "fresh profile" in res.output


def test_replay_composition_runs(cpu, profile_70b):
    res = invoke("--profile", str(profile_70b), "--tp", "8", "--results-dir", str(cpu / "res"), "--n-trials",
                 "4", "--composition", "replay", "--trace", "constant:256:32", "-n", "64", "--max-num-seqs", "64")
    assert res.exit_code == 0, res.output
    result = json.loads((run_dir_of(cpu / "res") / "result.json").read_text())
    assert result["best"]["batch"]["limited_by"] == "replay" and result["best"]["max_num_seqs"] == 64
