"""Issue 18: SIGINT and SIGTERM, once or repeatedly, write what was measured (real processes, tiny model)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def start(args, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "NANOTUNE_CACHE": str(tmp_path / "c")}
    return subprocess.Popen([sys.executable, "-m", "nanotune", *args, "--results-dir", str(tmp_path / "r")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)


def wait_for(proc, text, timeout=120):
    """Read the output until `text` appears (the run reached that phase); returns what was read."""
    seen, t0 = [], time.time()
    while time.time() - t0 < timeout:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return "".join(seen)
    proc.kill()
    pytest.fail(f"never saw {text!r}: {''.join(seen)}")


BENCH = ["bench", "--trace", "constant", "--input-len", "16", "--output-len", "4000", "--max-output-len", "0",
         "-n", "4", "--num-warmups", "0", "--no-progress", "--threads", "1"]


@pytest.mark.parametrize("signals,code", [([signal.SIGINT, signal.SIGINT], 130), ([signal.SIGTERM], 143),
                                          ([signal.SIGTERM, signal.SIGINT, signal.SIGINT], 143)],
                         ids=["ctrl-c twice", "sigterm", "sigterm then ctrl-c twice"])
def test_bench_signals_write_the_partial_run(tmp_path, signals, code):
    proc = start(BENCH, tmp_path)
    wait_for(proc, "offline")
    time.sleep(1.0)
    for sig in signals:
        proc.send_signal(sig)
        time.sleep(0.05)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == code, out
    assert "Traceback" not in out
    result = json.loads(next((tmp_path / "r").glob("*/result.json")).read_text())
    assert result["partial"] and result["signal"] == signal.Signals(signals[0]).name
    assert (next((tmp_path / "r").glob("*/requests.csv"))).read_text().count("\n") == 5  # header + 4 requests


def test_search_interrupted_writes_what_it_has_and_says_how_to_resume(tmp_path):
    proc = start(["search", "--gpu", "h200", "--model", "llama-3-8b", "--n-trials", "100000", "-n", "100",
                  "--no-progress", "--study", "stopme"], tmp_path)
    wait_for(proc, "study stopme:")  # the trials start now (loading the workload can take seconds)
    time.sleep(3.0)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    assert "continue it with: nanotune search --study stopme --resume" in out.replace("\n", "")
    result = json.loads(next((tmp_path / "r").glob("*search*/result.json")).read_text())
    assert result["partial"] and result["signal"] == "SIGINT" and result["study"]["num_trials"] >= 2


def test_study_stops_on_the_flag_even_when_the_interrupt_is_swallowed():
    """A stop signal whose KeyboardInterrupt was raised where Python ignores it (seen once under load:
    "Exception ignored in ... raise KeyboardInterrupt") must still end the study: run_study asks the flag
    after every trial."""
    import types

    import optuna

    from nanotune.search.study import run_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    calls = []

    def objective(trial):
        calls.append(1)
        return trial.suggest_float("x", 0, 1)

    objective.ctx = types.SimpleNamespace(objective="throughput")
    run_study(study, objective, n_trials=100_000, timeout=None, progress=False, should_stop=lambda: len(calls) >= 3)
    assert len(study.trials) == 3


def test_the_stop_interrupt_raised_in_a_finalizer_prints_no_traceback(monkeypatch):
    """After a stop signal, its KeyboardInterrupt landing in a finalizer or weakref callback (seen in CI: in
    sqlalchemy's cleanup during a search) is dropped instead of printed as "Exception ignored ... Traceback";
    any other unraisable error still reaches the previous hook, and the hook comes back afterwards."""
    import sys

    from nanotune.signals import StopSignals

    seen = []
    recorder = lambda u: seen.append(type(u.exc_value).__name__)  # noqa: E731
    monkeypatch.setattr(sys, "unraisablehook", recorder)

    class Finalizer:
        def __init__(self, exc):
            self.exc = exc

        def __del__(self):
            raise self.exc

    with StopSignals() as stop:
        Finalizer(KeyboardInterrupt())  # before any signal: reported as usual
        stop.received.append(signal.SIGINT)  # what the handler records on the first signal
        Finalizer(KeyboardInterrupt())
        Finalizer(ValueError("other"))
    assert seen == ["KeyboardInterrupt", "ValueError"] and sys.unraisablehook is recorder
