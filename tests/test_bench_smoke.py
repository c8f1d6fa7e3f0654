"""``python -m bench --smoke`` runs end to end: every row measured something, nothing failed.

Timings are not asserted (they depend on the machine); throughput above zero and zero errors
are: the fake IdP, the seed, the browsers' checks and the load generator all work together
with the service as it is today.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

from bench.common import CLIENT_SECRET

REPO = Path(__file__).resolve().parents[1]
_JWT = re.compile(r"eyJ[\w-]{8,}\.eyJ[\w-]{8,}\.")
ROWS = ("hello", "idp", "initiate", "signin", "me", "providers", "refresh")


def test_bench_smoke(tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    completed = subprocess.run(  # noqa: S603 - this interpreter, our own module
        # Two rounds (bench/rounds.py): each row is then the median of its two measurements.
        [sys.executable, "-m", "bench", "--smoke", "--repeat", "2", "--json", str(report)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = completed.stdout[-4000:] + completed.stderr[-4000:]
    assert report.exists(), output
    result = json.loads(report.read_text())

    assert [row["row"] for row in result["rows"]] == [*ROWS], output
    assert sorted(row["row"] for row in result["round_rows"]) == sorted([*ROWS] * 2), output
    assert [config["round"] for config in result["configs"]] == [0, 1], output
    for row in result["rows"]:
        assert len(row["rounds"]["cpu_ms"]) == 2, (row["row"], output)
        assert row["errors"] == 0, (row["row"], row.get("error_kinds"), output)
        assert row["requests"] > 0, (row["row"], output)
        assert row["rate"] > 0, (row["row"], output)
    # wrk drives the single routes whenever it is installed (CI installs it).
    expected = "wrk" if shutil.which("wrk") else "python"
    assert result["meta"]["load_generator"] == expected
    assert result["status"] == "OK", (result["problems"], output)
    assert completed.returncode == 0, output
    table = (tmp_path / "bench.md").read_text()
    assert table.startswith("# sso-broker bench")
    # The table goes through the suite's own leak check of every log line, too.
    logging.getLogger("sso_broker.bench").info("bench smoke", extra={"table": table})

    # Thousands of sign-ins later, the service's log (stderr) holds no secret and no token.
    logs = list((tmp_path / "logs").glob("service-*.log"))
    assert logs
    for log in logs:
        text = log.read_text()
        assert '"sso_broker.access"' in text  # the access log was on, as by default
        assert CLIENT_SECRET not in text
        assert not _JWT.search(text)
