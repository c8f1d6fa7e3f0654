"""The run's results as a text table (printed), Markdown (``latest.md``) and JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.rounds import spread

SIGN_IN_STEPS = ("initiate", "authorize", "callback", "token", "me")
UNITS = {"signin": "sign-in", "refresh": "refresh", "idp": "pair"}


def _num(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def config_label(row: dict[str, Any]) -> tuple[str, str, str, str]:
    return (
        row.get("scale") or "-",
        row.get("db") or "-",
        str(row.get("workers") or "-"),
        row.get("limiter") or "-",
    )


def _note(row: dict[str, Any]) -> str:
    notes = []
    cpu, p99 = spread(row, "cpu_ms", 3), spread(row, "p99_ms", 1)
    if cpu or p99:
        count = len(row["rounds"]["cpu_ms"])
        notes.append(f"{count} rounds: CPU {cpu or '-'}, p99 {p99 or '-'}")
    if row["row"] == "signin":
        if row.get("idp_ratio") is not None:
            notes.append(f"IdP alone {row['idp_ratio']:.1f}x this rate")
        if row.get("idp_cpu_ms") is not None:
            notes.append(f"IdP CPU {row['idp_cpu_ms']:.2f} ms")
    if row.get("tool") == "browser" and row["row"] in UNITS:
        notes.append(f"rate and CPU per {UNITS[row['row']]}")
    if row.get("errors"):
        kinds = ", ".join(f"{k} x{v}" for k, v in list(row.get("error_kinds", {}).items())[:3])
        notes.append(f"ERRORS: {kinds}")
    return "; ".join(notes)


MAIN_HEADER = (
    "scale", "db", "workers", "limiter", "row", "rate/s", "p50 ms", "p99 ms",
    "CPU ms/op", "% hello", "gen CPU ms/op", "bg CPU", "errors", "notes",
)  # fmt: skip


def main_rows(rows: Sequence[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            *config_label(row),
            row["row"],
            _num(row.get("rate")),
            _num(row.get("p50_ms"), 2),
            _num(row.get("p99_ms"), 2),
            _num(row.get("cpu_ms"), 3),
            _pct(row.get("pct_hello")),
            _num(row.get("generator_cpu_ms"), 3),
            _pct(row.get("other_cpu_pct")),
            str(row.get("errors", 0)),
            _note(row),
        ]
        for row in rows
    ]


def step_rows(rows: Sequence[dict[str, Any]]) -> list[list[str]]:
    out = []
    for row in rows:
        if row["row"] != "signin":
            continue
        cells = list(config_label(row))
        for step in SIGN_IN_STEPS:
            latency = row.get("steps", {}).get(step, {})
            cells.append(f"{_num(latency.get('p50'), 2)} / {_num(latency.get('p99'), 2)}")
        out.append(cells)
    return out


def _delta(small: float | None, large: float | None) -> float | None:
    return (large / small - 1) * 100 if small and large else None


def scale_rows(rows: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Each hot path, small against large, per configuration: p99 (checked) and p50.

    Only one worker's rows are judged: with two, the kernel hands the load generator's ten
    kept-alive connections to whichever worker wakes first, so a row's load falls on one
    worker or on both depending on the run (a run measured the 2-worker initiate, which
    asks the database nothing, at +72 % from one scale to the other, its p50 +74 %). Those
    rows are shown with the check ``not judged``."""
    by_key: dict[tuple[Any, ...], dict[str, dict[str, Any]]] = {}
    for row in rows:
        if row.get("scale") is None:
            continue
        key = (row["db"], row["workers"], row["limiter"], row["row"])
        by_key.setdefault(key, {})[row["scale"]] = row
    out = []
    for (db, workers, limiter, name), scales in by_key.items():
        small, large = scales.get("small"), scales.get("large")
        if small is None or large is None:
            continue
        p99 = _delta(small.get("p99_ms"), large.get("p99_ms"))
        p50 = _delta(small.get("p50_ms"), large.get("p50_ms"))
        if p99 is None:
            verdict = "-"
        elif workers != 1:
            verdict = "not judged"
        else:
            verdict = "ok" if abs(p99) <= 20 else "OUTSIDE +-20%"
        out.append(
            [
                db, str(workers), limiter, name,
                _num(small.get("p99_ms"), 2), _num(large.get("p99_ms"), 2),
                "-" if p99 is None else f"{p99:+.0f}%", verdict,
                _num(small.get("p50_ms"), 2), _num(large.get("p50_ms"), 2),
                "-" if p50 is None else f"{p50:+.0f}%",
            ]
        )  # fmt: skip
    return out


def config_rows(configs: Sequence[dict[str, Any]]) -> list[list[str]]:
    rounds = any(config.get("round") for config in configs)
    return [
        [
            *config_label(config)[:3],
            config_label(config)[3] + (f" r{config.get('round', 0) + 1}" if rounds else ""),
            ", ".join(_num(mib) for mib in config.get("peak_rss_mib", [])) or "-",
            _num(config.get("startup_s"), 1),
            str(config.get("log_errors", "-")),
            str(config.get("log_warnings", "-")),
            str(config.get("worker_restarts", "-")),
            str(config.get("access_log_lines", "-")),
            config.get("src", "-"),
            config.get("failure") or "",
        ]
        for config in configs
    ]


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(header, widths, strict=False))]
    lines.append("  ".join("-" * width for width in widths))
    for row in rows:
        cells = zip(row, widths, strict=False)
        lines.append("  ".join(str(cell).ljust(width) for cell, width in cells).rstrip())
    return "\n".join(lines)


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# --- the targets of issue 8, checked in the run that measured them --------------------------

# The sign-in target was set on a machine whose bare FastAPI hello took 0.07 ms of
# CPU: in that run's units, 2 ms was 28.6 hellos. Shown beside the absolute figure, since
# CPU per request varies from machine to machine (and run to run) far more than ratios do.
SIGN_IN_CPU_MS = 2.0
TARGET_HELLO_MS = 0.07
P99_MS = {"postgres": 50.0, "sqlite": 100.0}
RSS_MIB = 100.0
LIMITER_COST = 0.10
HOT_ROWS = ("initiate", "signin", "refresh")


def _find(rows: Sequence[dict[str, Any]], **match: object) -> dict[str, Any] | None:
    for row in rows:
        if all(row.get(key) == value for key, value in match.items()):
            return row
    return None


def target_rows(result: dict[str, Any]) -> list[list[str]]:
    """One line a target and database: what the issue asks, what this run measured, met or
    not. Limits that need rows the run did not make (a database, a limiter) are left out."""
    rows = result["rows"]
    hello = _find(rows, row="hello")
    hello_ms = hello.get("cpu_ms") if hello else None
    out: list[list[str]] = []

    def add(target: str, db: str, measured: str, met: bool | None) -> None:
        out.append([target, db, measured, "-" if met is None else ("met" if met else "MISSED")])

    for db in ("sqlite", "postgres"):
        base = {"scale": "small", "db": db, "workers": 1, "limiter": "off"}
        for name, floor in (("me", 50.0), ("initiate", 40.0)):
            row = _find(rows, row=name, **base)
            if row and row.get("pct_hello") is not None:
                share = row["pct_hello"]
                add(
                    f"{name} >= {floor:.0f}% of hello, 1 worker",
                    db,
                    f"{share:.0f}%",
                    share >= floor,
                )
        row = _find(rows, row="signin", **base)
        if row and row.get("cpu_ms"):
            cpu = row["cpu_ms"]
            add(
                f"sign-in <= {SIGN_IN_CPU_MS:g} ms CPU, 1 worker",
                db,
                f"{cpu:.2f} ms",
                cpu <= SIGN_IN_CPU_MS,
            )
            if hello_ms:
                hellos, limit = cpu / hello_ms, SIGN_IN_CPU_MS / TARGET_HELLO_MS
                add(
                    f"the same in hellos (<= {limit:.1f} x hello CPU)",
                    db,
                    f"{hellos:.1f} x {hello_ms:.3f} ms",
                    hellos <= limit,
                )
        for row in rows:
            if row["row"] == "signin" and row.get("db") == db and row.get("p99_ms") is not None:
                add(
                    f"sign-in p99 <= {P99_MS[db]:g} ms, 10 browsers, {row['scale']}, "
                    f"{row['workers']} worker(s), limiter {row['limiter']}",
                    db,
                    f"{row['p99_ms']:.1f} ms",
                    row["p99_ms"] <= P99_MS[db],
                )
        for limiter in ("db", "redis"):
            costs = []
            for name in HOT_ROWS:
                off = _find(rows, row=name, **base)
                on = _find(rows, row=name, **{**base, "limiter": limiter})
                if off and on and off.get("cpu_ms") and on.get("cpu_ms"):
                    costs.append((on["cpu_ms"] / off["cpu_ms"] - 1, name))
            if costs:
                worst, name = max(costs)
                add(
                    f"limiter ({limiter}) costs <= {LIMITER_COST:.0%} of each hot path's CPU",
                    db,
                    f"worst {worst:+.0%} ({name})",
                    worst <= LIMITER_COST,
                )
        deltas = [line for line in scale_rows(rows) if line[0] == db and line[7] != "not judged"]
        if deltas:
            outside = [f"{line[1]}w {line[2]} {line[3]}" for line in deltas if line[7] != "ok"]
            add(
                "p99 within +-20% from small to large scale, 1 worker",
                db,
                f"{len(deltas) - len(outside)} of {len(deltas)} rows"
                + (f"; outside: {', '.join(outside)}" if outside else ""),
                not outside,
            )
        peaks = [
            peak
            for config in result["configs"]
            if config.get("db") == db
            for peak in config.get("peak_rss_mib") or []
        ]
        if peaks:
            add(
                f"peak RSS <= {RSS_MIB:g} MB a worker",
                db,
                f"{max(peaks):.1f} MiB",
                max(peaks) <= RSS_MIB,
            )
    idp = result.get("idp") or {}
    if idp.get("min_ratio"):
        ratio = idp["min_ratio"]
        add("the IdP alone >= 5x the fastest sign-in rate", "-", f"{ratio:.1f}x", ratio >= 5)
    return out


def sections(result: dict[str, Any]) -> list[tuple[str, Sequence[str], list[list[str]]]]:
    rows = result["rows"]
    out: list[tuple[str, Sequence[str], list[list[str]]]] = [
        ("Results", MAIN_HEADER, main_rows(rows))
    ]
    steps = step_rows(rows)
    if steps:
        header = ("scale", "db", "workers", "limiter", *(f"{s} p50/p99 ms" for s in SIGN_IN_STEPS))
        out.append(("Sign-in steps", header, steps))
    scales = scale_rows(rows)
    if scales:
        header = (
            "db", "workers", "limiter", "row", "p99 small", "p99 large", "p99 delta", "check",
            "p50 small", "p50 large", "p50 delta",
        )  # fmt: skip
        out.append(("p99 by scale", header, scales))
    header = (
        "scale", "db", "workers", "limiter", "peak RSS/worker MiB", "start s", "log errors",
        "log warnings", "worker restarts", "access log lines", "src", "failure",
    )  # fmt: skip
    out.append(("Service processes", header, config_rows(result["configs"])))
    targets = target_rows(result)
    if targets:
        out.append(("Targets (issue 8)", ("target", "db", "this run", "verdict"), targets))
    return out


def summary_lines(result: dict[str, Any]) -> list[str]:
    lines = []
    idp = result.get("idp")
    if idp:
        ratio = idp.get("min_ratio")
        lines.append(
            f"IdP alone: {_num(idp.get('rate'))} authorize+token pairs/s "
            f"(p50 {_num(idp.get('p50_ms'), 2)} ms, p99 {_num(idp.get('p99_ms'), 2)} ms, "
            f"CPU {_num(idp.get('cpu_ms'), 3)} ms/pair, {idp.get('workers')} process(es)); "
            + (
                f"{ratio:.1f}x the fastest sign-in rate"
                + (" (OK: >= 5x)" if ratio >= 5 else " (WARNING: < 5x, the IdP may limit sign-ins)")
                if ratio is not None
                else "no sign-in row to compare"
            )
        )
    for item in result.get("seeds", []):
        lines.append(
            f"Seed {item['scale']} on {item['db']}: {item['providers']:,} providers, "
            f"{item['users']:,} users in {item['seconds']:.1f} s"
        )
    repeat = result["meta"].get("repeat", 1)
    if repeat > 1:
        lines.append(
            f"Each row is the median of {repeat} rounds, each round measuring every "
            "configuration once (bench/rounds.py); the notes give the rounds' lowest and "
            "highest CPU and p99, and the JSON every round's row (round_rows)"
        )
    versions = result["meta"].get("src_versions", [])
    if len(versions) > 1:
        lines.append(
            f"src/ changed during the run: {len(versions)} versions of the service's code were "
            "measured (column 'src'); compare rows of the same version only"
        )
    if result.get("noisy_rows"):
        lines.append(
            f"{result['noisy_rows']} of {len(result['rows'])} rows ran while other processes used "
            f"more than {result['noisy_pct']}% of the machine's CPU ('bg CPU'): compare with care"
        )
    lines.append(f"Wall time: {result['wall_s']:.0f} s. Status: {result['status']}")
    for problem in result.get("problems", []):
        lines.append(f"  - {problem}")
    return lines


def render_text(result: dict[str, Any]) -> str:
    parts = []
    for title, header, rows in sections(result):
        parts.append(f"{title}\n{text_table(header, rows)}")
    parts.append("\n".join(summary_lines(result)))
    return "\n\n".join(parts) + "\n"


def render_markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    head = [
        "# sso-broker bench",
        "",
        f"* date: {meta['date']}",
        f"* machine: {meta['nproc']} CPUs, {meta['cpu_model']}",
        f"* commit: `{meta['commit']}`{' (src/ has uncommitted changes)' if meta['dirty'] else ''}",
        f"* command: `{meta['command']}`",
        f"* load: wrk {meta['wrk_threads']} thread / {meta['wrk_connections']} connections; "
        f"{meta['concurrency']} browsers; {meta['duration']} s measured after "
        f"{meta['warmup']} s warm-up per row",
        "",
    ]
    body = []
    for title, header, rows in sections(result):
        body += [f"## {title}", "", md_table(header, rows), ""]
    body += ["## Summary", ""] + [f"* {line.strip()}" for line in summary_lines(result)]
    return "\n".join(head + body) + "\n"


def write(result: dict[str, Any], json_path: Path, md_path: Path) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(render_markdown(result))
