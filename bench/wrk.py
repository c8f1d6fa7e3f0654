"""Single routes under ``wrk``: a generated Lua script rotates requests and checks answers.

``wrk -t1 -c10 --latency``: one load-generator thread holding 10 keep-alive connections,
closed loop (each connection sends its next request when the answer arrives). The script
rotates through a list of requests (provider ids, bearer tokens) and counts as an error any
answer whose status (or ``Location`` prefix, or body marker) is not the expected one;
``done()`` prints the count, which :func:`run` reads back with wrk's own numbers.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bench.browser import RouteRequest

THREADS = 1
CONNECTIONS = 10

_LUA = r"""
local specs = %(specs)s
local expect_status = %(status)d
local expect_location = %(location)s
local expect_body = %(body)s
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  errors = 0
  first_bad = ""
  reqs = {}
  for i, spec in ipairs(specs) do
    reqs[i] = wrk.format("GET", spec.path, spec.headers)
  end
  turn = 0
end

function request()
  turn = turn %% #reqs + 1
  return reqs[turn]
end

function response(status, headers, body)
  local ok = status == expect_status
  if ok and expect_location then
    local location = headers["location"] or headers["Location"] or ""
    ok = string.sub(location, 1, #expect_location) == expect_location
  end
  if ok and expect_body then
    ok = string.find(body, expect_body, 1, true) ~= nil
  end
  if not ok then
    errors = errors + 1
    if first_bad == "" then first_bad = tostring(status) end
  end
end

function done(summary, latency, requests)
  local total = 0
  local bad = ""
  for _, thread in ipairs(threads) do
    total = total + thread:get("errors")
    local first = thread:get("first_bad")
    if first ~= "" then bad = first end
  end
  io.write(string.format("BENCH_ERRORS %%d %%s\n", total, bad))
end
"""


def available() -> bool:
    return shutil.which("wrk") is not None


def _lua_string(value: str | None) -> str:
    return "nil" if value is None else json.dumps(value)  # JSON strings are Lua strings here


def script(
    requests: list[RouteRequest],
    *,
    expect_status: int,
    expect_location: str | None = None,
    expect_body: str | None = None,
) -> str:
    specs = []
    for request in requests:
        headers = ", ".join(
            f"[{json.dumps(k)}] = {json.dumps(v)}" for k, v in request.headers.items()
        )
        specs.append(f"{{ path = {json.dumps(request.path)}, headers = {{ {headers} }} }}")
    return _LUA % {
        "specs": "{\n  " + ",\n  ".join(specs) + "\n}",
        "status": expect_status,
        "location": _lua_string(expect_location),
        "body": _lua_string(expect_body),
    }


@dataclass
class WrkResult:
    requests: int = 0
    duration_s: float = 0.0
    rate: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    output: str = ""


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse(output: str) -> WrkResult:
    result = WrkResult(output=output)
    if match := re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output):
        result.requests = int(match.group(1))
        result.duration_s = _ms(match.group(2) + match.group(3)) / 1000
    if match := re.search(r"Requests/sec:\s+([\d.]+)", output):
        result.rate = float(match.group(1))
    if match := re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE):
        result.p50_ms = _ms(match.group(1))
    if match := re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE):
        result.p99_ms = _ms(match.group(1))
    if (match := re.search(r"BENCH_ERRORS (\d+) ?(\S*)", output)) and int(match.group(1)):
        first = match.group(2)
        result.error_kinds[f"unexpected answer (first status {first})"] = int(match.group(1))
    if match := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    ):
        for kind, count in zip(
            ("connect", "read", "write", "timeout"), match.groups(), strict=True
        ):
            if int(count):
                result.error_kinds[f"socket {kind}"] = int(count)
    if "BENCH_ERRORS" not in output:
        result.error_kinds["wrk printed no summary"] = 1
    result.errors = sum(result.error_kinds.values())
    return result


def run(
    url: str,
    lua: str,
    *,
    duration: float,
    connections: int = CONNECTIONS,
    threads: int = THREADS,
) -> WrkResult:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(lua)
        path = Path(handle.name)
    try:
        seconds = max(1, round(duration))
        argv = [
            "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
            "--timeout", "10s", "-s", str(path), url,
        ]  # fmt: skip
        completed = subprocess.run(  # noqa: S603 - wrk from PATH (Debian's package)
            argv,
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=False,
        )
    finally:
        path.unlink(missing_ok=True)
    result = parse(completed.stdout + completed.stderr)
    if completed.returncode != 0:
        result.error_kinds[f"wrk exited with {completed.returncode}"] = 1
        result.errors = sum(result.error_kinds.values())
    return result
