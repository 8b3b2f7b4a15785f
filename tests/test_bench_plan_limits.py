"""A plan from `nanotune search` carries the dense batch and max seqs it was tuned with; bench applies them."""

from engine.plan import PipelinePlan
from nanotune.bench.config import BenchConfig
from nanotune.bench.session import engine_limits


def test_tuned_limits_apply_unless_given(tmp_path):
    plan = PipelinePlan("tuned", PipelinePlan.sequential().ops,
                        meta={"engine": {"max_num_batched_tokens": 1792, "max_num_seqs": 1024}})
    path = tmp_path / "plan.json"
    plan.save(path)
    assert engine_limits(BenchConfig(plan=str(path))) == {"max_num_batched_tokens": 1792, "max_num_seqs": 1024}
    assert engine_limits(BenchConfig(plan=str(path), max_num_seqs=64)) == {"max_num_batched_tokens": 1792,
                                                                          "max_num_seqs": 64}
    assert engine_limits(BenchConfig()) == {}
