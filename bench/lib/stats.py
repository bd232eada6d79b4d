"""Percentiles and medians of the benches' measurements."""

from __future__ import annotations

import math
import statistics


def percentile(values: list[float], fraction: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); 0.0 for no values."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    position = fraction * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def p50_p95(values: list[float]) -> dict[str, float]:
    return {"p50": percentile(values, 0.5), "p95": percentile(values, 0.95)}


def latency_ms(values_s: list[float], prefix: str = "") -> dict:
    """p50/p95/p99/mean in milliseconds (rounded to 0.1) of latencies in seconds; None each without values."""
    if not values_s:
        return {f"{prefix}p50_ms": None, f"{prefix}p95_ms": None, f"{prefix}p99_ms": None, f"{prefix}mean_ms": None}
    return {
        f"{prefix}p50_ms": round(percentile(values_s, 0.50) * 1000, 1),
        f"{prefix}p95_ms": round(percentile(values_s, 0.95) * 1000, 1),
        f"{prefix}p99_ms": round(percentile(values_s, 0.99) * 1000, 1),
        f"{prefix}mean_ms": round(sum(values_s) / len(values_s) * 1000, 1),
    }


def median_by_key(rows: list[dict]) -> dict:
    """The median of each key over rows of the same keys (e.g. interleaved rounds of one path)."""
    return {key: statistics.median(row[key] for row in rows) for key in rows[0]}
