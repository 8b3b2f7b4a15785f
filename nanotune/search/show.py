"""What `nanotune search` prints besides its main table: the Pareto front, the notes that change how a
result reads, and the exact command that continues the study."""

from __future__ import annotations

import shlex

from rich.table import Table

# notes of result["notes"] that change what the figures mean: printed, not only kept in result.json
IMPORTANT_NOTE_PREFIXES = ("TP ",)


def throughput_header(tp: int) -> str:
    """The model's tokens/s is the whole TP group's (one iteration runs on all its GPUs)."""
    return "tok/s (1 GPU)" if tp == 1 else f"tok/s (all {tp} GPUs)"


def front_table(result: dict) -> Table | None:
    """--objective both: every plan of the Pareto front, by throughput."""
    front = result.get("pareto") or []
    if not front:
        return None
    t = Table(title=f"Pareto front: {len(front)} plans (throughput against TPOT)")
    t.add_column("plan file", no_wrap=True)
    t.add_column("trial", justify="right")
    t.add_column(throughput_header(result.get("tp", 1)), justify="right")
    t.add_column("TPOT ms", justify="right")
    for p in front:
        t.add_row(p["plan_file"], str(p["trial"]), f"{p['total_token_throughput']:,.0f}", f"{p['tpot_ms']:.2f}")
    return t


def important_notes(result: dict) -> list[str]:
    out = [n for n in result.get("notes", []) if n.startswith(IMPORTANT_NOTE_PREFIXES)]
    skipped = (result.get("validation") or {}).get("skipped")
    if skipped:
        out.append(f"validation skipped: {skipped}")
    return out


def resume_command(cfg, study_name: str) -> str:
    """`nanotune search --study NAME --resume` with every flag the study's identity checks (model, TP,
    workload, objective) and where it lives, so the line can be pasted as it is."""
    args = ["nanotune", "search", "--study", study_name, "--resume", "--model", cfg.model or "llama-3-8b",
            "--tp", str(cfg.tp), "--trace", cfg.workload, "--objective", cfg.objective]
    if cfg.profile:
        args += ["--profile", str(cfg.profile)]
    elif cfg.gpu:
        args += ["--gpu", cfg.gpu]
    if cfg.max_num_seqs:
        args += ["--max-num-seqs", str(cfg.max_num_seqs)]
    if cfg.tpot_limit_ms:
        args += ["--tpot-limit", f"{cfg.tpot_limit_ms:g}"]
    if getattr(cfg, "kv_cache_dtype", "auto") != "auto":
        args += ["--kv-cache-dtype", cfg.kv_cache_dtype]
    if cfg.storage:
        args += ["--storage", cfg.storage]
    if cfg.results_dir:
        args += ["--results-dir", str(cfg.results_dir)]
    return " ".join(shlex.quote(a) for a in args)
