"""Every input section the runner stages starts 16-byte aligned, whatever the batch's shape.

Triton compiles one kernel variant per pointer argument's 16-byte alignment: a section whose start moved with
an eager step's block-table width or a bucket's decode rows compiled a new variant mid-run, a 1-2 s stall
(seen on an H200 in scripts/model_gap.py's compile list). Odd prompt lengths, decode counts and block-table
widths here, on the CPU engine, which stages exactly as on CUDA."""

import torch

from engine import EngineConfig, LLMEngine, SamplingParams


def test_every_staged_section_is_16_byte_aligned():
    eng = LLMEngine(EngineConfig(model="tiny-llama", device="cpu", dtype="float32", max_num_batched_tokens=61,
                                 max_model_len=512, block_size=16))
    builder = eng.runner.builder
    stage = builder.stage
    seen = []

    def checked(batch, prev, lay):
        fb = stage(batch, prev, lay)
        if fb is not None:
            views = [fb.input_ids, fb.positions, fb.slot_mapping, fb.decode_block_tables, fb.decode_context_lens,
                     fb.logits_rows]
            for meta in fb.prefill.values():
                views += [meta.cu_seqlens_q, meta.seq_lens, meta.block_tables]
            seen.append((fb.num_tokens, fb.num_decode, [v.data_ptr() % 16 for v in views if v.numel()]))
        return fb

    builder.stage = checked
    g = torch.Generator().manual_seed(2)
    for n in (3, 17, 40, 5, 33, 9, 70, 1, 26):  # odd lengths: odd row counts, decode counts and widths
        eng.add_request(torch.randint(0, 2048, (n,), generator=g).tolist(),
                        SamplingParams(max_tokens=7 + n % 11, ignore_eos=True))
    while eng.has_unfinished():
        eng.step()
    assert len({(t, d) for t, d, _ in seen}) > 5  # many shapes were staged
    assert all(off == 0 for _, _, offs in seen for off in offs), [s for s in seen if any(s[2])][:3]
