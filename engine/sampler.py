"""Token sampling: greedy, temperature, top-k, top-p; seeded per request so runs are reproducible."""

from __future__ import annotations

import torch

from engine.request import SamplingParams


class Sampler:
    def __init__(self, device: torch.device, seed: int):
        self.device = device
        self.seed = seed
        self.generators: dict[str, torch.Generator] = {}

    def _gen(self, request_id: str, params: SamplingParams) -> torch.Generator:
        g = self.generators.get(request_id)
        if g is None:
            g = torch.Generator(device=self.device)
            g.manual_seed(params.seed if params.seed is not None else hash((self.seed, request_id)) & 0x7FFFFFFF)
            self.generators[request_id] = g
        return g

    def forget(self, request_id: str) -> None:
        self.generators.pop(request_id, None)

    def sample(self, logits: torch.Tensor, params: list[SamplingParams], request_ids: list[str]) -> torch.Tensor:
        """logits fp32 [S, V] -> int64 [S] token ids on the logits' device (no host sync).

        Greedy rows take one batched argmax; the rest sample with their request's generator."""
        tokens = logits.argmax(dim=-1)
        random_rows = [i for i, p in enumerate(params) if not p.is_greedy]
        for i in random_rows:
            p = params[i]
            row = logits[i] / p.temperature
            if p.top_k > 0:
                kth = torch.topk(row, min(p.top_k, row.shape[-1])).values[-1]
                row = row.masked_fill(row < kth, float("-inf"))
            probs = torch.softmax(row, dim=-1)
            if p.top_p < 1.0:
                sorted_p, idx = probs.sort(descending=True)
                # keep the smallest prefix whose mass reaches top_p (the first token always stays)
                drop = (sorted_p.cumsum(-1) - sorted_p) >= p.top_p
                sorted_p = sorted_p.masked_fill(drop, 0.0)
                probs = torch.zeros_like(probs).scatter_(0, idx, sorted_p)
            tokens[i] = torch.multinomial(probs, 1, generator=self._gen(request_ids[i], p))[0]
        return tokens
