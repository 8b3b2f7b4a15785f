"""The validation code path on CPU with the tiny model (its numbers mean nothing here: the GPU run of the
lead's checks is where predicted meets measured; this makes sure that one call cannot trip on a bug)."""

from test_search_helpers import toy_profile

from engine.plan import PipelinePlan
from engine.plan_library import nano_batch_plan
from nanotune.profile.ops import Shard
from nanotune.search.capacity import WorkloadStats
from nanotune.search.objective import SearchContext
from nanotune.search.space import build_plan
from nanotune.search.validate import validate_plans


def test_validate_plans_runs_the_engine_and_compares(tmp_path):
    p = toy_profile(tmp_path, slowdown=1.5)
    ctx = SearchContext(p, WorkloadStats.of([20] * 6, [5] * 6), Shard.of(p.shapes), 1.0)
    searched = build_plan({"dense_batch_tokens": 64, "num_nano_batches": 3, "share_0": 0.2, "share_1": 0.5,
                           "share_2": 0.3, "attention_stream": True, "prefill_on_attention_stream": False,
                           "attention_priority": -1, "issue_order": "pipelined", "partition_decode": True,
                           "decode_sm_budget": 8, "align": 1}, "searched", 132)
    entries = [("sequential", PipelinePlan.sequential(), 64, 8), ("nb2", nano_batch_plan(2, align=1), 64, 8),
               ("searched", searched, 64, 8), ("other-limits", PipelinePlan.sequential(), 32, 4)]
    out = validate_plans(entries, ctx, "tiny-llama-micro", [(20, 5)] * 6, time_every=2, log=lambda m: None,
                         device="cpu")
    assert [r["label"] for r in out["plans"]] == ["sequential", "nb2", "searched", "other-limits"]
    for r in out["plans"]:
        assert r["measured"]["total_token_throughput"] > 0 and r["predicted"]["total_token_throughput"] > 0
        m = r["measured"]
        assert m["num_iterations"] >= 5 and r["op_timed_iterations"]  # the op timings: from the warm-up pass
        # the measured pass times nothing per op: every iteration is compared whole
        assert r["num_compared_iterations"] == m["num_iterations"]
        assert m["gpu_s"] > 0 and m["host_s"] > 0 and m["wait_s"] >= 0 and 0 <= m["host_bound_steps"] <= 1
        assert {"qkv", "decode_attn", "down"} <= set(r["op_timed_ms"])  # per-op spans beside the model's
        assert all(v["measured"] > 0 for v in r["op_timed_ms"].values())
        assert m["graphs_captured"] == 0  # on CPU the mixed bucket layout runs eagerly, nothing is captured
        assert r["iteration_mape"] >= 0 and r["throughput_ape"] >= 0
    assert out["plans"][3]["max_num_seqs"] == 4
    g = out["gantt_measured"]
    assert g["plan"] == "sequential" and {t["op"] for t in g["timings"]} >= {"qkv", "down"}
    assert out["iteration_mape"] is not None and out["gpu"] == "cpu"


def test_gantt_draws_predicted_beside_measured(tmp_path):
    from nanotune.search.objective import evaluate
    from nanotune.search.output import save_gantt

    p = toy_profile(tmp_path, slowdown=1.5)
    ctx = SearchContext(p, WorkloadStats.of([20] * 6, [5] * 6), Shard.of(p.shapes), 10.0, max_num_seqs=8)
    plan = nano_batch_plan(2, align=1)
    out = validate_plans([("tuned", plan, 64, 8)], ctx, "tiny-llama-micro", [(20, 5)] * 6, time_every=2,
                         log=lambda m: None, device="cpu")
    path = save_gantt(tmp_path, evaluate(ctx, plan, 64), p, out)
    assert path.stat().st_size > 5000
