"""`nanotune profile --kv-cache-dtype fp8` on CPU: the rig's cache is the engine's fp8 cache with the engine's
scales, decode attention runs over it, and the profile JSON records the dtype (checked by the schema)."""

import pytest
import torch
from click.testing import CliRunner

from engine.kernels.decode_attention import decode_attention_ref
from engine.kv_scales import kv_scales_from_weights
from engine.presets import get_preset
from nanotune.cli import main
from nanotune.errors import UserError
from nanotune.profile import load_profile
from nanotune.profile.ops import Shard, op_cost, shard, shard_config
from nanotune.profile.rig import LayerRig
from nanotune.profile.schema import kv_cache_dtype_of, validate_profile


def profile_cli(tmp_path, *args):
    out = tmp_path / "p.json"
    res = CliRunner().invoke(main, ["profile", "--model", "tiny-llama-micro", "--device", "cpu", "--out", str(out),
                                    "--no-plots", "--no-progress", *args])
    assert res.exit_code == 0, res.output
    return load_profile(out)


def test_profile_records_the_kv_dtype_and_counts_its_bytes(tmp_path):
    fp8 = profile_cli(tmp_path, "--kv-cache-dtype", "fp8")
    auto = profile_cli(tmp_path)  # the same file again, over the default cache
    assert fp8["kv_cache_dtype"] == "fp8" and fp8["kv_element_bytes"] == 1
    assert fp8["method"]["kv_dtype"] == "float8_e4m3fn" and fp8["errors"] == []
    assert auto["kv_cache_dtype"] == "auto" and auto["kv_element_bytes"] == 4  # CPU runs fp32
    s = Shard.of(fp8["shapes"])
    for op in ("decode_attn", "prefill_attn", "rope_kv"):
        for p in fp8["ops"][op]["points"]:
            point = {k: p[k] for k in ("tokens", "batch", "context", "seqs") if k in p}
            assert p["bytes"] == op_cost(s, op, point, e=4, kv_e=1)[1]
            assert p["bytes"] < op_cost(s, op, point, e=4)[1]  # fewer than the same point over an fp32 cache
    assert fp8["ops"]["qkv"]["points"][0]["bytes"] == auto["ops"]["qkv"]["points"][0]["bytes"]


def test_rig_runs_decode_attention_over_the_engines_fp8_cache():
    cfg = get_preset("tiny-llama-micro")
    sh = shard(cfg, 1)
    rig = LayerRig(shard_config(cfg, sh, 3), torch.device("cpu"), torch.float32, num_kv_blocks=64, max_tokens=64,
                   num_workspaces=1, kv_cache_dtype="fp8")
    k_cache, v_cache = rig.model.kv[1]
    assert k_cache.dtype == torch.float8_e4m3fn and rig.kv_bytes_per_token == 2 * sh.kv_size
    from engine.models.weights import random_weights

    scales = kv_scales_from_weights(rig.cfg, random_weights(rig.cfg, rig.device, torch.float32, 0))
    assert torch.equal(rig.model.kv_scales[1]["k_scale"], scales[1, 0])  # the engine's scales, same weights
    (fb,) = rig.decode_batches(3, 40, 1)
    rig.runner("decode_attn", [fb], None)(0)  # layer 1, workspace 0
    c = rig.cfg
    q = rig.workspaces[0].qkv[:3, :c.q_size].view(3, c.num_heads, c.head_dim)
    ks, vs = scales[1, 0].view(-1, 1, 1), scales[1, 1].view(-1, 1, 1)  # [Hkv] over [NB, Hkv, BS, D]
    want = decode_attention_ref(q, k_cache.float() * ks, v_cache.float() * vs, fb.decode_block_tables,
                                fb.decode_context_lens, rig.model.scale)
    got = rig.workspaces[0].attn[:3].view(3, c.num_heads, c.head_dim)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_schema_checks_the_field_and_defaults_old_profiles_to_auto(tmp_path):
    data = profile_cli(tmp_path)
    del data["kv_cache_dtype"]
    validate_profile(data, "old.json")  # older profiles lack the field
    assert kv_cache_dtype_of(data) == "auto"
    with pytest.raises(UserError, match="old.json: field 'kv_cache_dtype': expected one of auto, fp8"):
        validate_profile({**data, "kv_cache_dtype": "int4"}, "old.json")


def test_profile_and_bench_offer_the_same_choices():
    from nanotune.cli.bench import command as bench
    from nanotune.cli.options import KV_CACHE_DTYPE_CHOICES, KV_CACHE_DTYPE_HELP
    from nanotune.cli.profile import command as profile
    from nanotune.cli.search import command as search

    for cmd in (bench, profile, search):
        (p,) = [p for p in cmd.params if p.name == "kv_cache_dtype"]
        assert tuple(p.type.choices) == KV_CACHE_DTYPE_CHOICES and p.default == "auto"
        assert p.help.endswith(KV_CACHE_DTYPE_HELP)
    from engine.config import KV_CACHE_DTYPES

    assert set(KV_CACHE_DTYPE_CHOICES) <= set(KV_CACHE_DTYPES)  # every choice is a name the engine takes
