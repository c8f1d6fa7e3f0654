"""``python -m bench.readme``: puts the latest run's table into the README's *Performance*.

The README carries the table of ``bench/results/latest.md`` (date, machine, commit, command
included) between its ``<!-- bench-table -->`` markers; run this after ``make bench``.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- bench-table -->", "<!-- /bench-table -->"


def readme_block(markdown: str) -> str:
    """The run's markdown as the README shows it: no title, its sections one level down."""
    lines = markdown.strip().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    body = "\n".join(lines).strip()
    body = re.sub(r"^## ", "#### ", body, flags=re.MULTILINE)
    intro = (
        "The latest run (the service's CPU per operation, rate and latency per row, "
        "`% hello` = share of the hello's req/s):"
    )
    return f"{START}\n{intro}\n\n{body}\n{END}"


def update(readme: str, markdown: str) -> str:
    start, end = readme.find(START), readme.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"the README has no {START} … {END} block")
    return readme[:start] + readme_block(markdown) + readme[end + len(END) :]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.readme", description=__doc__)
    parser.add_argument("--results", type=Path, default=REPO / "bench/results/latest.md")
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    args = parser.parse_args(argv)
    args.readme.write_text(update(args.readme.read_text(), args.results.read_text()))
    print(f"{args.readme}: table from {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
