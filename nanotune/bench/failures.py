"""Why requests failed, in a few lines: the distinct error messages with their counts, most frequent first.
A run where every request failed is not a measurement; the CLI prints these and exits non-zero."""

from __future__ import annotations

from collections import Counter

MAX_REASON_CHARS = 200


def failure_reasons(errors) -> list[dict]:
    """[{"error": message, "count": n}, ...] over the given error strings (None / "" skipped)."""
    counts = Counter(str(e)[:MAX_REASON_CHARS] for e in errors if e)
    return [{"error": e, "count": n} for e, n in counts.most_common()]


def describe(reasons: list[dict], limit: int = 5) -> str:
    """One line per reason: `  12 x HTTP 400: ...`, the rest summed."""
    lines = [f"{r['count']:>5} x {r['error']}" for r in reasons[:limit]]
    if len(reasons) > limit:
        lines.append(f"      ... and {sum(r['count'] for r in reasons[limit:])} more with "
                     f"{len(reasons) - limit} other reasons")
    return "\n".join(lines)
