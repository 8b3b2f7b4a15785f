"""Paged KV-cache bookkeeping: block ids, reference counts, a free list. Never touches a tensor."""

from __future__ import annotations

from collections import deque


class BlockManager:
    """Hands out fixed-size KV blocks. A block is free when its reference count is zero.

    Ref counts exist so blocks can be shared (prefix sharing, forks); the scheduler today gives each
    request its own blocks, so counts are 0 or 1.
    """

    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need num_blocks >= 1 and block_size >= 1, got {num_blocks}, {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.ref_counts = [0] * num_blocks
        self.free_ids: deque[int] = deque(range(num_blocks))

    @property
    def num_free(self) -> int:
        return len(self.free_ids)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self.free_ids)

    @property
    def usage(self) -> float:
        return self.num_used / self.num_blocks

    def blocks_for(self, num_tokens: int) -> int:
        """Blocks needed to hold num_tokens tokens."""
        return -(-num_tokens // self.block_size)

    def can_allocate(self, num_blocks: int) -> bool:
        return num_blocks <= len(self.free_ids)

    def allocate(self, num_blocks: int) -> list[int]:
        if num_blocks > len(self.free_ids):
            raise RuntimeError(f"out of KV blocks: asked {num_blocks}, {len(self.free_ids)} free")
        ids = [self.free_ids.popleft() for _ in range(num_blocks)]
        for b in ids:
            self.ref_counts[b] = 1
        return ids

    def share(self, block_id: int) -> None:
        if self.ref_counts[block_id] < 1:
            raise RuntimeError(f"block {block_id} is free; cannot share it")
        self.ref_counts[block_id] += 1

    def free(self, block_ids: list[int]) -> None:
        for b in block_ids:
            if self.ref_counts[b] < 1:
                raise RuntimeError(f"double free of KV block {b}")
            self.ref_counts[b] -= 1
            if self.ref_counts[b] == 0:
                self.free_ids.append(b)

    def check_invariants(self) -> None:
        """Every block is either free (count 0, in the free list once) or used (count > 0)."""
        free = set(self.free_ids)
        assert len(free) == len(self.free_ids), "a block is in the free list twice"
        for b, c in enumerate(self.ref_counts):
            assert c >= 0, f"block {b} has a negative ref count"
            assert (c == 0) == (b in free), f"block {b}: ref count {c} but free={b in free}"
