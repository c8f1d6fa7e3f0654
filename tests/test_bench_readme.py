"""``python -m bench.readme`` puts the latest bench table into the README, nothing else."""

from __future__ import annotations

import pytest
from bench.readme import END, START, update

RUN = "# sso-broker bench\n\n* date: today\n\n## Results\n\n| a |\n|---|\n| 1 |\n"


def test_the_block_between_the_markers_is_replaced_and_the_rest_kept() -> None:
    readme = f"before\n{START}\nold table\n{END}\nafter\n"
    updated = update(readme, RUN)
    assert updated.startswith("before\n" + START)
    assert updated.endswith(END + "\nafter\n")
    assert "old table" not in updated
    assert "#### Results" in updated
    assert "# sso-broker bench" not in updated
    assert "* date: today" in updated
    assert update(updated, RUN) == updated  # idempotent


def test_a_readme_without_the_markers_is_refused() -> None:
    with pytest.raises(SystemExit):
        update("no markers here", RUN)
