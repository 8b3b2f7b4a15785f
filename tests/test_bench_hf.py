"""The Hugging Face transformers peer (continuous batching in process) on a tiny random Llama."""

import pytest

pytest.importorskip("transformers")

from nanotune.bench.backends.hf import (  # noqa: E402
    HFBackend,
    build_random_model,
    cpu_num_blocks,
    hf_llama_config,
    load_hf_backend,
)
from nanotune.bench.config import BenchConfig  # noqa: E402
from nanotune.bench.driver import drive  # noqa: E402
from nanotune.bench.records import BenchRequest  # noqa: E402
from nanotune.bench.runner import run_bench  # noqa: E402
from nanotune.bench.testing import fake_trace  # noqa: E402

SHAPES = dict(
    num_layers=2,
    hidden_size=64,
    intermediate_size=128,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    vocab_size=512,
    max_position=1024,
)


@pytest.fixture(scope="module")
def hf():
    model = build_random_model(hf_llama_config(**SHAPES), "cpu", None, "sdpa", seed=0)
    b = HFBackend(model, "tiny-test", "sdpa", cpu_num_blocks=cpu_num_blocks([(64, 16)] * 16))
    yield b
    b.close()


def test_config_adapter_shapes():
    cfg = hf_llama_config(**SHAPES, rope_theta=5e5, qkv_bias=True)
    assert (cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim, cfg.vocab_size) == (2, 2, 16, 512)
    assert cfg.attention_bias is True


def test_generates_exact_lengths_with_per_token_times(hf):
    reqs = [BenchRequest(i, 0.0, tuple(range(3, 3 + 8 + i)), 4 + i) for i in range(5)]
    ph = drive(hf, reqs)
    assert not ph.is_partial and all(r.is_ok for r in ph.records)
    assert [r.output_len for r in ph.records] == [4, 5, 6, 7, 8]
    assert hf.has_timestamps  # transformers 5.x: one perf_counter stamp per token
    for r in ph.records:
        assert len(r.token_times) == r.output_len
        assert r.send_s <= r.first_token_s <= r.end_s and r.token_times == sorted(r.token_times)
    assert hf.describe()["per_token_times"] is True
    assert hf.num_params == sum(p.numel() for p in hf.model.parameters())


def test_full_run_through_runner(hf):
    cfg = BenchConfig(engine="hf", num_warmups=1)
    out = run_bench(cfg, fake_trace([(16, 6)] * 6), hf, None)
    m = out.result["metrics"]
    assert m["completed"] == 6 and m["total_output_tokens"] == 36 and m["mean_tpot_ms"] > 0
    assert out.result["engine"]["engine"] == "hf"


def test_from_engine_preset():
    pytest.importorskip("engine.presets")
    b = load_hf_backend("tiny-llama-micro", "cpu", None, "sdpa", 0, [(8, 4)] * 2)
    try:
        ph = drive(b, [BenchRequest(0, 0.0, (1, 2, 3), 3)])
        assert ph.records[0].output_len == 3 and b.vocab_size == 512
    finally:
        b.close()


def test_peer_config_carries_what_changes_the_math_or_refuses():
    """The peer from a preset computes that preset's model: activation and MLP biases carried, a sliding window
    (which Llama's class cannot apply) refused in one line."""
    from dataclasses import replace

    from engine.presets import get_preset
    from nanotune.bench.backends.hf import hf_config_from_preset
    from nanotune.errors import UserError

    cfg = hf_config_from_preset(replace(get_preset("tiny-llama"), hidden_act="gelu", mlp_bias=True))
    assert (cfg.hidden_act, cfg.mlp_bias) == ("gelu", True)
    with pytest.raises(UserError, match="sliding window"):
        hf_config_from_preset(get_preset("mistral-7b-v0.1"))
