"""The search space: every draw becomes a valid plan or is pruned with a reason, never a crash."""

import optuna
import pytest
from test_search_helpers import h200_like_profile_dict, write

from engine.plan import PipelinePlan
from engine.plan_library import nano_batch_plan
from nanotune.profile.ops import Shard
from nanotune.search.capacity import WorkloadStats
from nanotune.search.objective import Objective, SearchContext, evaluate
from nanotune.search.profiledata import load_profile
from nanotune.search.space import Infeasible, baseline_params, build_plan, edges, suggest_params, tuned_config


def context(tmp_path, **kw) -> SearchContext:
    p = load_profile(write(tmp_path, h200_like_profile_dict()))
    stats = WorkloadStats.of([1024] * 10, [512] * 10)
    return SearchContext(p, stats, Shard.of(p.shapes), 139.8, **kw)


def test_random_draws_build_valid_plans_or_are_pruned(tmp_path):
    ctx = context(tmp_path)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(Objective(ctx), n_trials=60)
    states = {t.state.name for t in study.trials}
    assert states <= {"COMPLETE", "PRUNED"} and "COMPLETE" in states
    for t in study.trials:
        if t.state.name == "COMPLETE":
            plan = build_plan(t.params, "x", 132)
            plan.validate(num_sms=132)
            assert PipelinePlan.from_dict(plan.to_dict()) == plan  # saveable, loadable
            assert t.user_attrs["total_token_throughput"] == pytest.approx(t.value)
        else:
            assert t.user_attrs["pruned_reason"]


def test_nb2_baseline_is_the_hand_written_plan():
    assert build_plan(baseline_params("nb2"), "x").ops == nano_batch_plan(2).ops
    assert build_plan(baseline_params("sequential"), "x").ops == PipelinePlan.sequential().ops
    # one builder: the space's points are the library's plans, equal as plans (names and meta aside)
    assert build_plan(baseline_params("nb2"), "x") == nano_batch_plan(2)
    assert build_plan(baseline_params("sequential"), "x") == PipelinePlan.sequential()
    assert build_plan(baseline_params("nb2"), "x") != PipelinePlan.sequential()


@pytest.mark.filterwarnings("ignore:The value 192")  # FixedTrial notes the budget is outside the sampled range
@pytest.mark.parametrize("params, reason", [
    ({"partition_decode": True, "decode_sm_budget": 192}, "sm_budget 192 outside 1..132"),
    ({"num_nano_batches": 4, "share_0": 1.0, "share_1": 0.05, "share_2": 1.0, "share_3": 1.0, "align": 128,
      "issue_order": "grouped",
      "dense_batch_tokens": 512}, "gets no rows"),
])
def test_infeasible_points_are_pruned_with_their_reason(tmp_path, params, reason):
    ctx = context(tmp_path)
    full = {**baseline_params("nb2"), **params}
    trial = optuna.trial.FixedTrial(full)
    with pytest.raises(optuna.TrialPruned, match=reason):
        Objective(ctx)(trial)


def test_a_model_that_does_not_fit_is_pruned(tmp_path):
    ctx = context(tmp_path)
    ctx.memory_gib = 16.0  # llama-3-8b's weights alone take 15 GiB
    with pytest.raises(optuna.TrialPruned, match="KV cache"):
        Objective(ctx)(optuna.trial.FixedTrial(baseline_params("sequential")))


def test_edges_normalize_shares():
    assert edges({"num_nano_batches": 1}) == [0.0, 1.0]
    assert edges({"num_nano_batches": 3, "share_0": 1, "share_1": 2, "share_2": 1}) == [0.0, 0.25, 0.75, 1.0]
    with pytest.raises(Infeasible):
        edges({"num_nano_batches": 2, "share_0": 1.0, "share_1": 0.0001})


def test_params_and_tp_collectives_and_meta():
    trial = optuna.trial.FixedTrial({**baseline_params("nb2", tp=8), "collectives": "overlap"})
    p = suggest_params(trial, tp=8)
    assert p["collectives"] == "overlap" and p["max_num_seqs"] == 512
    plan = build_plan(p, "x", 132)
    assert plan.meta["tp"]["collectives"] == "overlap"
    # the engine limits travel in the tuned config beside the plan (engine.tuned), not in the plan's meta
    assert "engine" not in plan.meta
    tuned = tuned_config(p, plan, "llama-3-70b", tp=8)
    assert tuned.limits() == {"max_num_batched_tokens": 2048, "max_num_seqs": 512} and tuned.plan is plan
    fixed = suggest_params(optuna.trial.FixedTrial(baseline_params("sequential", max_num_seqs=None)),
                           search_max_num_seqs=False)
    assert "max_num_seqs" not in fixed


def test_pipelined_order_differs_from_grouped_for_three(tmp_path):
    base = {**baseline_params("nb2"), "num_nano_batches": 3, "share_2": 0.5}
    grouped = build_plan({**base, "issue_order": "grouped"}, "g")
    piped = build_plan({**base, "issue_order": "pipelined"}, "p")
    assert grouped.ops != piped.ops and sorted(map(repr, grouped.ops)) == sorted(map(repr, piped.ops))
    ctx = context(tmp_path)
    for plan in (grouped, piped):
        assert evaluate(ctx, plan, 2048).iteration_ms > 0


def test_reverse_post_is_plan_librarys_rev_and_the_model_simulates_it(tmp_path):
    from engine.plan_library import plan_from_name

    params = {**baseline_params("nb2"), "prefill_on_attention_stream": False, "reverse_post": True}
    rev = build_plan(params, "r")
    assert rev.ops == plan_from_name("nb2-pf0-rev", 132).ops
    assert rev.ops != build_plan({**params, "reverse_post": False}, "f").ops
    drawn = suggest_params(optuna.trial.FixedTrial(params))
    assert drawn["reverse_post"] is True
    assert evaluate(context(tmp_path), rev, 2048).iteration_ms > 0
