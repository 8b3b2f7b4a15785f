"""`nanotune profile`: every op of a model's layer timed on the local GPU against its inputs and SM budget,
alone and beside the ops a plan overlaps it with (interference), with NVML watching the clocks.

    ops.py           the layer's ops, per-GPU shard shapes under TP, FLOPs and bytes; collectives (listed)
    rig.py           the real engine model + KV cache + workspaces + ForwardBatches to time ops on
    timing.py        CUDA-event (or host-clock) timing, medians, two-stream pairs
    measure.py       the grids (quick / default), the peaks, every op alone
    interference.py  pairs together, their bookkeeping, issue 4's micro pair
    nvml.py          the background NVML sampler and throttle flags
    schema.py        the profile file (nanotune.profile/1) and load_profile() for search
    run.py           the one entry point, run_profile(); view.py / plots.py show the result
"""

from nanotune.profile.schema import PROFILE_FILE, SCHEMA, load_profile, validate_profile

__all__ = ["PROFILE_FILE", "SCHEMA", "load_profile", "validate_profile"]
