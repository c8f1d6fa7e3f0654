"""``--repeat``: each row the median of its rounds (``bench/rounds.py``)."""

from __future__ import annotations

from typing import Any

from bench.report import render_text
from bench.rounds import hello_rate, merge_rows


def _row(name: str, round_: int, **values: Any) -> dict[str, Any]:
    shape = {"scale": "small", "db": "postgres", "workers": 1, "limiter": "off"}
    return {"row": name, "round": round_, **(shape if name != "hello" else {}), **values}


def test_each_figure_is_the_median_of_its_rounds() -> None:
    rows = [
        _row("hello", 0, rate=10_000.0, cpu_ms=0.10, pct_hello=100.0),
        _row("hello", 1, rate=8_000.0, cpu_ms=0.12, pct_hello=100.0),
        _row("hello", 2, rate=9_000.0, cpu_ms=0.11, pct_hello=100.0),
        {"row": "idp", "workers": 2, "round": 0, "rate": 2_000.0},
        _row("me", 0, rate=5_000.0, cpu_ms=0.20, p99_ms=5.0, pct_hello=50.0, errors=0),
        _row(
            "signin",
            0,
            rate=300.0,
            cpu_ms=2.5,
            p99_ms=60.0,
            errors=1,
            error_kinds={"x": 1},
            steps={"callback": {"p50": 10.0, "p99": 20.0}},
        ),
        _row("me", 1, rate=4_000.0, cpu_ms=0.30, p99_ms=9.0, pct_hello=40.0, errors=0),
        _row(
            "signin",
            1,
            rate=350.0,
            cpu_ms=2.0,
            p99_ms=40.0,
            errors=0,
            steps={"callback": {"p50": 12.0, "p99": 30.0}},
        ),
        _row("me", 2, rate=4_500.0, cpu_ms=0.25, p99_ms=6.0, pct_hello=45.0, errors=0),
        _row(
            "signin",
            2,
            rate=320.0,
            cpu_ms=2.2,
            p99_ms=45.0,
            errors=2,
            error_kinds={"x": 2},
            steps={"callback": {"p50": 11.0, "p99": 25.0}},
        ),
    ]
    reference = hello_rate(rows)
    assert reference == 9_000.0
    merged = {row["row"]: row for row in merge_rows(rows, reference)}
    assert list(merged) == ["hello", "idp", "me", "signin"]  # the order they were measured in
    hello, idp, me, signin = merged.values()
    assert (hello["rate"], hello["cpu_ms"], hello["pct_hello"]) == (9_000.0, 0.11, 100.0)
    assert "pct_hello" not in idp  # not a share of the hello
    assert (me["rate"], me["cpu_ms"], me["p99_ms"]) == (4_500.0, 0.25, 6.0)
    assert me["pct_hello"] == 50.0  # the median rate over the median hello
    assert (signin["cpu_ms"], signin["p99_ms"], signin["rate"]) == (2.2, 45.0, 320.0)
    assert (signin["errors"], signin["error_kinds"]) == (3, {"x": 3})  # every round's count
    assert signin["steps"] == {"callback": {"p50": 11.0, "p99": 25.0}}
    assert signin["rounds"] == {"cpu_ms": [2.5, 2.0, 2.2], "p99_ms": [60.0, 40.0, 45.0]}
    assert "round" not in signin

    result = {
        "meta": {"repeat": 3, "src_versions": []},
        "rows": list(merged.values()),
        "configs": [{**_row("me", r), "peak_rss_mib": [90.0]} for r in range(3)],
        "seeds": [],
        "idp": None,
        "wall_s": 1.0,
        "status": "OK",
    }
    text = render_text(result)
    assert "3 rounds: CPU 2.000 to 2.500, p99 40.0 to 60.0" in text
    assert "off r3" in text  # each round's service in the processes' table
    assert "the median of 3 rounds" in text


def test_one_round_is_the_row_itself() -> None:
    rows = [
        _row("hello", 0, rate=10_000.0, pct_hello=100.0),
        _row("me", 0, rate=5_000.0, cpu_ms=0.2, p99_ms=5.0, pct_hello=50.0),
    ]
    merged = merge_rows(rows, hello_rate(rows))
    assert [(row["rate"], row.get("pct_hello")) for row in merged] == [
        (10_000.0, 100.0),
        (5_000.0, 50.0),
    ]
    assert (
        "rounds"
        not in render_text(
            {"meta": {}, "rows": merged, "configs": [], "idp": None, "wall_s": 1.0, "status": "OK"}
        )
        .split("Results", 1)[1]
        .split("Service processes")[0]
    )
