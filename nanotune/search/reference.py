"""The committed reference profiles (results/reference/<gpu>/profile-<model>-tp<N>.json), found from a
source checkout and from an installed package (they ship as package data: nanotune/data/reference links to
results/reference), listed for error messages and picked for `search` on a machine without a GPU."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from nanotune.results import results_root

PACKAGE_REFERENCE = Path(__file__).resolve().parents[1] / "data" / "reference"
_NAME = re.compile(r"profile-(?P<model>.+)-tp(?P<tp>\d+)\.json")
WEIGHT_BYTES = 2  # bf16 weights: what the reference profiles were measured with


@dataclass(frozen=True)
class Reference:
    gpu: str  # folder name: h200, h100, ...
    model: str
    tp: int
    path: Path
    created: str  # the profile's `created` stamp ("" when unreadable): newest wins

    def flag(self) -> str:
        return f"--gpu {self.gpu} --model {self.model} --tp {self.tp}"


def reference_dirs(results_dir: str | None = None) -> list[Path]:
    """The results root's reference/ (a user's own profiles), then this checkout's, then the package's."""
    from nanotune.search import resolve

    out: list[Path] = []
    for d in (results_root(results_dir) / "reference", resolve.REPO_ROOT / "results" / "reference",
              PACKAGE_REFERENCE):
        if d.is_dir() and d.resolve() not in [o.resolve() for o in out]:
            out.append(d)
    return out


def list_references(results_dir: str | None = None) -> list[Reference]:
    seen: dict[tuple, Reference] = {}
    for root in reference_dirs(results_dir):
        for f in sorted(root.glob("*/profile-*-tp*.json")):
            m = _NAME.fullmatch(f.name)
            key = (f.parent.name, m["model"], int(m["tp"])) if m else None
            if key is None or key in seen:
                continue
            try:
                created = str(json.loads(f.read_text()).get("created") or "")
            except (OSError, ValueError):
                continue  # unreadable: not offered
            seen[key] = Reference(f.parent.name, m["model"], int(m["tp"]), f, created)
    return list(seen.values())


def available_text(results_dir: str | None = None) -> str:
    refs = list_references(results_dir)
    if not refs:
        return "no reference profiles are installed"
    return "reference profiles: " + ", ".join(f"{r.gpu}/{r.model} TP {r.tp}" for r in refs)


def fits(ref: Reference, num_params: int) -> bool:
    """The model's weights per GPU take at most 90% of the profiled card's memory."""
    try:
        memory = float((json.loads(ref.path.read_text()).get("gpu") or {}).get("memory_gib") or 0)
    except (OSError, ValueError):
        return False
    return memory <= 0 or num_params * WEIGHT_BYTES / ref.tp <= 0.9 * memory * 2**30


def pick_reference(model: str, tp: int | None, results_dir: str | None = None) -> Reference | None:
    """The reference profile `search` uses when there is no GPU and no --gpu/--profile: of the model's
    profiles (at --tp when it was given), those whose weights fit the card, the smallest TP, newest first."""
    from engine.presets import get_preset

    refs = [r for r in list_references(results_dir) if r.model == model and (tp is None or r.tp == tp)]
    if not refs:
        return None
    params = get_preset(model).num_params
    fitting = [r for r in refs if fits(r, params)] or refs
    return sorted(fitting, key=lambda r: (r.tp, _neg(r.created)))[0]


def _neg(stamp: str) -> tuple:
    return tuple(-ord(c) for c in stamp)  # newest first under an ascending sort
