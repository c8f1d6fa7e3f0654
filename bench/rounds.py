"""Rounds (``--repeat N``): every configuration measured once per round, the rounds one after
the other, and each row reported as the median of its rounds.

On a shared 2-core machine one five-second row's CPU per operation moves by ±10 % and its p99
by more from one measurement to the next (bench/README.md, *Noise*): a target within that
band is met or missed by chance, and a comparison of two rows (the limiter's cost, small
against large scale) by more. Interleaving puts every configuration under the same drift, and
the median of each figure ignores one bad round out of three. The rounds' own values stay in
the JSON (``rounds`` in each row) and their spread is shown beside the median.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Any

# Figures that are the median of their rounds; counts add up.
MEDIAN_FIELDS = (
    "rate", "p50_ms", "p99_ms", "cpu_ms", "generator_cpu_ms", "other_cpu_pct", "idp_cpu_ms",
    "peak_rss_mib",
)  # fmt: skip
SUM_FIELDS = ("requests", "errors")
SPREAD_FIELDS = ("cpu_ms", "p99_ms")


def row_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row.get("scale"), row.get("db"), row.get("workers"), row.get("limiter"), row["row"])


def _median(values: Sequence[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def _steps(rounds: Sequence[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    names = dict.fromkeys(name for row in rounds for name in row.get("steps", {}))
    return {
        name: {
            quantile: _median([row.get("steps", {}).get(name, {}).get(quantile) for row in rounds])
            for quantile in ("p50", "p99")
        }
        for name in names
    }


def merge(rounds: Sequence[dict[str, Any]], hello_rate: float | None) -> dict[str, Any]:
    """One row from the same row's rounds: medians, sums, and each round's values."""
    merged = dict(rounds[0])
    for field in MEDIAN_FIELDS:
        if any(field in row for row in rounds):
            merged[field] = _median([row.get(field) for row in rounds])
    for field in SUM_FIELDS:
        if any(field in row for row in rounds):
            merged[field] = sum(row.get(field) or 0 for row in rounds)
    kinds: Counter[str] = Counter()
    for row in rounds:
        kinds.update(row.get("error_kinds") or {})
    merged["error_kinds"] = dict(kinds.most_common(5))
    if any("steps" in row for row in rounds):
        merged["steps"] = _steps(rounds)
    if merged["row"] == "hello":
        merged["pct_hello"] = 100.0 if merged.get("rate") else None
    elif any(row.get("pct_hello") is not None for row in rounds):  # rows of the service
        share = hello_rate and merged.get("rate") and merged["rate"] / hello_rate * 100
        merged["pct_hello"] = share or None
    merged["rounds"] = {field: [row.get(field) for row in rounds] for field in SPREAD_FIELDS}
    merged.pop("round", None)
    return merged


def merge_rows(rows: Sequence[dict[str, Any]], hello_rate: float | None) -> list[dict[str, Any]]:
    """Each row's rounds merged into one, in the order the rows were first measured."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row_key(row), []).append(row)
    return [merge(group, hello_rate) for group in groups.values()]


def hello_rate(rows: Sequence[dict[str, Any]]) -> float | None:
    """The median of the hello's rounds: the reference every row's ``% hello`` is a share of."""
    return _median([row.get("rate") or None for row in rows if row["row"] == "hello"])


def spread(row: dict[str, Any], field: str, digits: int) -> str | None:
    """``lowest to highest`` of a merged row's rounds, or None for a single measurement."""
    values = [value for value in row.get("rounds", {}).get(field, []) if value is not None]
    if len(values) < 2:
        return None
    return f"{min(values):.{digits}f} to {max(values):.{digits}f}"
