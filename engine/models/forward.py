"""ForwardBatch: the device tensors one iteration's forward reads (built by the runner, read by the model).

Rows are tokens of the dense batch: decode tokens first (one per sequence), then prefill chunks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class PrefillMeta:
    """Attention metadata for the prefill rows [row_lo, row_hi) of one plan instance.

    A prefill sequence cut by the instance's row range becomes a piece whose context ends at its last row.
    """

    row_lo: int
    row_hi: int
    cu_seqlens_q: torch.Tensor  # int32 [num_pieces + 1], offsets relative to row_lo
    seq_lens: torch.Tensor  # int32 [num_pieces], context length including the piece
    block_tables: torch.Tensor  # int32 [num_pieces, max_blocks]
    max_seqlen_q: int


@dataclass
class ForwardBatch:
    num_tokens: int  # rows, including padding rows of a CUDA-graph bucket
    num_decode: int  # rows [0, num_decode) are decode tokens
    input_ids: torch.Tensor  # int64 [num_tokens]
    positions: torch.Tensor  # int64 [num_tokens]
    slot_mapping: torch.Tensor  # int64 [num_tokens], -1 = padding (not stored)
    decode_block_tables: torch.Tensor  # int32 [num_decode, max_blocks]
    decode_context_lens: torch.Tensor  # int32 [num_decode], including the new token
    logits_rows: torch.Tensor  # int64 [num_sampled], the rows whose next token is sampled
    prefill: dict[tuple[int, int], PrefillMeta] = field(default_factory=dict)  # by instance row range
    decode_num_splits: int | None = None  # fixed split-KV count (CUDA graphs need it static)
