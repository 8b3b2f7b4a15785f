"""The KV cache dtype a search tunes for, against the one its profile measured attention over.

A profile's decode-attention times hold for the cache it ran over (profile field `kv_cache_dtype`). Searching
for another dtype with a profile the user measured is refused: they can measure the right one. A bundled
reference profile (`--gpu NAME`, or the one picked without a GPU) is used with only the bytes facts changed:
the KV capacity (bytes per token, engine.sizing through engine.config.kv_cache_dtype_bytes) and decode
attention, a memory-bound read, taken at the profiled size that reads as many KV bytes. Prefill attention
(compute-bound) and rope_kv (mostly q/k rotation) keep their measured times; the tuned config's source says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from nanotune.errors import UserError
from nanotune.search.profiledata import Profile

MODEL_DTYPE_BYTES = 2  # the engine's model dtype on a GPU (bf16): what "auto" means in a search
SCALED = ("kv_capacity", "decode_attn")
AS_MEASURED = ("prefill_attn", "rope_kv")


@dataclass(frozen=True)
class KvDtypeChoice:
    requested: str  # EngineConfig.kv_cache_dtype the tuned config runs with
    profiled: str  # what the profile measured attention over
    requested_bytes: int  # bytes per K/V element
    profiled_bytes: int

    @property
    def is_scaled(self) -> bool:
        return self.requested_bytes != self.profiled_bytes

    @property
    def ratio(self) -> float:
        return self.requested_bytes / self.profiled_bytes

    def to_dict(self) -> dict:
        d = {"kv_cache_dtype": self.requested, "profile_kv_cache_dtype": self.profiled,
             "kv_element_bytes": self.requested_bytes, "profile_kv_element_bytes": self.profiled_bytes}
        if self.is_scaled:
            d.update(scaled_by_bytes=list(SCALED), as_measured=list(AS_MEASURED))
        return d

    def line(self) -> str:
        """What the output says about it (one line)."""
        if not self.is_scaled:
            return f"KV cache: {self.requested} ({self.requested_bytes} B per element), as the profile measured"
        return (f"KV cache: --kv-cache-dtype {self.requested} ({self.requested_bytes} B per element) on a reference "
                f"profile measured over {self.profiled} ({self.profiled_bytes} B): KV capacity and decode attention "
                f"(at equal KV bytes) scaled by {self.ratio:g}; prefill attention and rope_kv as measured")


def kv_bytes(name: str) -> int:
    from engine.config import kv_cache_dtype_bytes  # the owner of the figure

    return kv_cache_dtype_bytes(name, MODEL_DTYPE_BYTES)


def choose(profile: Profile, requested: str, is_reference: bool) -> KvDtypeChoice:
    """Check the profile's KV dtype against --kv-cache-dtype; set the profile's decode-attention bytes ratio."""
    from nanotune.profile.schema import kv_cache_dtype_of

    profiled = kv_cache_dtype_of(profile.data)
    profiled_bytes = int(profile.data.get("kv_element_bytes") or kv_bytes(profiled))
    choice = KvDtypeChoice(requested, profiled, kv_bytes(requested), profiled_bytes)
    if choice.is_scaled and not is_reference:
        raise UserError(f"{profile.path}: profile measured KV cache dtype {profiled}, not --kv-cache-dtype {requested} "
                        f"(profile with `nanotune profile --kv-cache-dtype {requested}`, or pass --kv-cache-dtype "
                        f"{profiled})")
    profile.kv_bytes_ratio = choice.ratio
    return choice
