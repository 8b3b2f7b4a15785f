"""Sampling: greedy, temperature, top-k, top-p, seeded reproducibility."""

import torch

from engine.request import SamplingParams
from engine.sampler import Sampler


def test_greedy_and_degenerate_filters_pick_the_argmax():
    logits = torch.randn(4, 100)
    s = Sampler(torch.device("cpu"), seed=0)
    want = logits.argmax(-1).tolist()
    for p in (SamplingParams(), SamplingParams(temperature=1.0, top_k=1), SamplingParams(temperature=1.0, top_p=1e-6)):
        assert s.sample(logits, [p] * 4, ["a", "b", "c", "d"]).tolist() == want


def test_seeded_sampling_is_reproducible_and_respects_top_k():
    logits = torch.randn(1, 50)
    top5 = set(logits[0].topk(5).indices.tolist())
    p = SamplingParams(temperature=2.0, top_k=5, seed=7)
    draws = [Sampler(torch.device("cpu"), 0).sample(logits, [p], ["r"]).item() for _ in range(3)]
    assert len(set(draws)) == 1  # same seed, same token
    s = Sampler(torch.device("cpu"), 0)
    seen = {s.sample(logits, [SamplingParams(temperature=2.0, top_k=5)], ["q"]).item() for _ in range(200)}
    assert seen <= top5 and len(seen) > 1


def test_temperature_sampling_follows_the_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    s = Sampler(torch.device("cpu"), 0)
    n = 4000
    counts = torch.bincount(torch.tensor([s.sample(logits, [SamplingParams(temperature=1.0)], ["x"]).item()
                                          for _ in range(n)]), minlength=3).float() / n
    assert torch.allclose(counts, torch.softmax(logits[0], -1), atol=0.03)
