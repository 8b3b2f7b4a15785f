"""The engine's observer API (engine/observe.py): one record per step, composition consistent with what the
scheduler formed and what the requests received; GPU spans only when asked; tools use it (no patching)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine import EngineConfig, LLMEngine, SamplingParams
from engine.observe import Observers, OpProfile, StepRecord

ROOT = Path(__file__).resolve().parents[1]
LENS = (3, 17, 40, 9)


def engine(**kw):
    return LLMEngine(EngineConfig(model="tiny-llama", device="cpu", dtype="float32", max_num_batched_tokens=32,
                                  max_model_len=256, **kw))


def add(eng, max_tokens=6):
    g = torch.Generator().manual_seed(3)
    for n in LENS:
        eng.add_request(torch.randint(0, 2048, (n,), generator=g).tolist(),
                        SamplingParams(max_tokens=max_tokens, ignore_eos=True))


@pytest.mark.parametrize("is_async", [True, False])
def test_one_record_per_step_with_consistent_composition(is_async):
    eng = engine(async_scheduling=is_async)
    add(eng)
    records: list[StepRecord] = []
    eng.add_observer(records.append)
    steps = num_tokens_out = 0
    while eng.has_unfinished():
        outs = eng.step()
        steps += 1
        num_tokens_out += sum(len(o.new_token_ids) for o in outs)
        assert len(records) == steps  # emitted before step() returns
        assert records[-1].num_outputs == len(outs)
    launched = [r for r in records if r.launched]
    assert [r.step for r in launched] == list(range(eng.num_steps))
    assert sum(r.num_prefill_tokens for r in launched) == sum(LENS)  # every prompt token computed once
    assert num_tokens_out == 6 * len(LENS)
    # every output token but each request's last is fed back as a decode token (one per decode seq)
    assert sum(r.num_decode for r in launched) == 5 * len(LENS)
    for r in records:
        assert r.num_tokens == r.num_decode + r.num_prefill_tokens
        assert r.num_tokens == sum(s.num_tokens for s in r.batch.seqs) and r.num_seqs == len(r.batch.seqs)
        assert r.is_async == is_async and r.gpu is None and r.gpu_ms() is None and not r.replayed
        assert min(r.schedule_s, r.launch_s, r.resolve_s, r.wait_s) >= 0
        assert r.host_s >= r.schedule_s + r.launch_s + r.resolve_s - 1e-6
    if is_async:  # the last step only reads back the previous iteration's tokens
        assert not records[-1].launched and records[-1].num_tokens == 0


def test_gpu_time_only_when_asked_and_removal():
    eng = engine()
    add(eng, max_tokens=3)
    plain, timed = [], []
    eng.add_observer(plain.append)
    eng.step()
    assert eng.runner.time_steps is False and plain[-1].gpu is None
    eng.add_observer(timed.append, gpu_time=True)
    assert eng.runner.time_steps is True
    eng.step()
    assert timed[-1].gpu is not None and timed[-1].gpu_ms() > 0  # on CPU: the host clock around the forward
    eng.remove_observer(timed.append)  # a fresh bound method: removed by equality
    assert eng.runner.time_steps is False
    eng.step()
    assert len(timed) == 1 and len(plain) == 3
    with pytest.raises(ValueError):
        eng.remove_observer(timed.append)
    eng.remove_observer(plain.append)
    assert not eng.observers.active


def test_no_observer_no_record(monkeypatch):
    eng = engine()
    made = []
    monkeypatch.setattr("engine.engine.StepRecord", lambda *a, **k: made.append(1))
    eng.generate([[1, 2, 3]], SamplingParams(max_tokens=2, ignore_eos=True))
    assert made == [] and eng.runner.time_steps is False


def test_op_profile_observer_gets_timed_steps():
    eng = engine(time_ops_every=2)
    add(eng)
    prof = OpProfile()
    eng.add_observer(prof)
    while eng.has_unfinished():
        eng.step()
    timed = eng.num_steps // 2
    assert prof.num_iterations == timed > 0
    s = prof.summary()
    assert set(s["mean_op_ms"]) >= {"qkv", "down", "decode_attn"} and abs(sum(s["op_share"].values()) - 1) < 1e-6


def test_observers_reject_non_callables():
    with pytest.raises(TypeError):
        Observers().add(42)


def test_step_anatomy_runs_through_observers(tmp_path):
    out = tmp_path / "a.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "step_anatomy.py"), "--device", "cpu", "--model", "tiny-llama",
           "--workloads", "c512x512:3", "--plans", "sequential", "--warmup", "1",
           "--max-num-batched-tokens", "256", "--max-num-seqs", "8", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
                       cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text())
    run = res["runs"]["c512x512/sequential"]["async"]
    assert run["num_steps"] > 0 and res["environment"]["torch"]
    assert run["decode_only"]["num_steps"] > 0
    ms = run["decode_only"]["mean_ms"]
    assert ms["launch_ms"] > 0 and ms["host_ms"] >= ms["launch_ms"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_spans_and_graph_replays_on_cuda():
    """On a GPU: every launched step's CUDA-event span is positive, decode-only steps replay graphs, and no
    event is recorded while no observer asks for GPU times."""
    eng = LLMEngine(EngineConfig(model="tiny-llama", device="cuda", max_num_seqs=16, num_kv_blocks=512,
                                 max_model_len=256))
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 2048, (n,), generator=g).tolist() for n in (5, 33, 70, 12)]
    eng.generate(prompts, SamplingParams(max_tokens=4, ignore_eos=True))  # warm-up: compiles and captures
    records = []
    eng.add_observer(records.append, gpu_time=True)
    eng.generate(prompts, SamplingParams(max_tokens=24, ignore_eos=True))
    eng.remove_observer(records.append)
    launched = [r for r in records if r.launched]
    assert launched and all(r.gpu_ms() > 0 for r in launched)
    decode = [r for r in launched if r.num_tokens == r.num_decode]
    assert decode and sum(r.replayed for r in decode) / len(decode) > 0.5
    plain = []
    eng.add_observer(plain.append)
    eng.generate(prompts[:1], SamplingParams(max_tokens=3, ignore_eos=True))
    assert all(r.gpu is None for r in plain)
