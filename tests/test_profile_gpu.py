"""The profile's launch and sustained-load sections on a CUDA GPU (pytest -m gpu on the device machine;
excluded in CI): a tiny model and grid, so only the code path and the sanity of the numbers are checked
(the reference H200 profile is where their values come from)."""

import pytest
import torch

from nanotune.profile import sustained
from nanotune.profile.measure import tiny_grid
from nanotune.profile.run import ProfileOptions, run_profile

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_launch_and_sustained_sections_on_a_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr(sustained, "SUSTAIN_S", 0.5)
    profile, _ = run_profile(ProfileOptions(model="tiny-llama", device="cuda", out=str(tmp_path / "p.json"),
                                            grid=tiny_grid(), plots=False, progress=False))
    assert not [e for e in profile["errors"] if e["op"] in ("section:launch", "section:sustained")]
    for p in profile["launch"]["points"]:
        # a graph replay has no host in it: it may beat the sum of alone times a little, never lose much
        assert p["graph_layer_ms"] > 0 and -0.5 * p["sum_alone_ms"] < p["graph_layer_ms"] - p["sum_alone_ms"]
        assert p["graph_gap_ms"] < p["eager_gap_ms"]  # launching from Python costs more than a replay
    assert [p["bound"] for p in profile["sustained"]["points"]] == ["compute", "memory"]
    assert all(0.5 < p["vs_cold"] < 2.0 and p["sustained_layer_ms"] > 0 for p in profile["sustained"]["points"])
