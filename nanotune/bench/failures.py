"""Why requests failed, counted by reason, and the exit status a run earns.

Exit status of `nanotune bench` (README, "Exit status"): 0 the run completed and at least one request
succeeded; 1 the run failed (the backend broke, every warm-up request failed, or every measured request
failed); 2 bad input (one line, nothing ran); 130 / 143 stopped by SIGINT / SIGTERM (a partial result was
written).
"""

from __future__ import annotations

from collections import Counter

from nanotune.bench.records import FAILED

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
MAX_REASON_CHARS = 160


def _get(r, key):
    return r.get(key) if isinstance(r, dict) else getattr(r, key)


def failure_reasons(records) -> dict[str, int]:
    """error message -> how many requests failed with it, most common first (records or CSV rows)."""
    c = Counter(_reason(r) for r in records if _get(r, "status") == FAILED)
    return dict(c.most_common())


def _reason(r) -> str:
    """The error without the request's own id, so one cause failing many requests is counted once."""
    why, rid = str(_get(r, "error") or "no error message"), str(_get(r, "request_id") or "")
    if rid:
        why = why.replace(f"request {rid}: ", "").replace(rid, "<request>")
    return why[:MAX_REASON_CHARS]


def reasons_line(reasons: dict[str, int], limit: int = 3, head: str | None = None) -> str:
    """'12 requests failed: 10x ValueError: ...; 2x ...' (the first `limit` reasons, then how many more);
    `head` replaces '12 requests failed'."""
    total = sum(reasons.values())
    parts = [f"{n}x {why}" for why, n in list(reasons.items())[:limit]]
    more = len(reasons) - limit
    tail = f"; and {more} other reason{'s' * (more > 1)}" if more > 0 else ""
    head = head or f"{total} request{'s' * (total != 1)} failed"
    return f"{head}: " + "; ".join(parts) + tail


def exit_status(result: dict) -> int:
    """What the run's exit status should be (see the module docstring)."""
    import signal

    from nanotune.signals import EXIT_CODES

    if result.get("error"):
        return EXIT_FAILED
    if result.get("partial"):
        sig = result.get("signal")
        return EXIT_CODES.get(getattr(signal, sig, None), 130) if sig else 130
    completed = sum((p.get("metrics") or {}).get("completed") or 0 for p in result.get("points", []))
    if completed == 0 and sum((result.get("failures") or {}).values()) > 0:
        return EXIT_FAILED
    return EXIT_OK
