"""Processes: starting and stopping the servers, and what /proc says about their CPU and memory.

CPU is ``utime + stime`` (clock ticks, every thread included) summed over a process tree:
the root (``sso-broker serve``, which with ``--workers 1`` is the worker itself, else uvicorn's
supervisor) and every descendant (the workers), found through ``/proc/*/stat``'s ppid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command (field 2) is in parentheses and may hold spaces: split after its end.
    return raw[raw.rindex(")") + 2 :].split()


def children_map() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is None:
            continue
        tree.setdefault(int(fields[1]), []).append(int(entry))  # fields[1] is the ppid
    return tree


def process_tree(root: int) -> list[int]:
    tree = children_map()
    found, pending = [], [root]
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending.extend(tree.get(pid, []))
    return found


def _ticks(fields: list[str]) -> int:
    # utime + stime, plus cutime + cstime: what its children used and it reaped. A worker
    # that exits (uvicorn replaces a dead one) keeps counting through its parent.
    return int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])


def cpu_ticks(root: int) -> int:
    """CPU of ``root`` and all its descendants, in clock ticks."""
    total = 0
    for pid in process_tree(root):
        fields = _stat_fields(pid)
        if fields is not None:
            total += _ticks(fields)
    return total


def machine_busy_ticks() -> int:
    """Every CPU's non-idle time since boot (/proc/stat), in clock ticks."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return user + nice + system + irq + softirq + steal


class Meter:
    """CPU over a window: of each watched process tree, and of everything else on the machine.

    ``other`` is the machine's busy time minus the watched trees and this process (with the
    load generators it ran and reaped, such as wrk): a busy neighbour shows up there.
    """

    def __init__(self, watch: dict[str, int]) -> None:
        self.watch = watch
        self._before: dict[str, int] = {}
        self._started = 0.0

    def _snapshot(self) -> dict[str, int]:
        values = {name: cpu_ticks(pid) for name, pid in self.watch.items()}
        fields = _stat_fields(os.getpid())
        values["_self"] = _ticks(fields) if fields else 0
        values["_machine"] = machine_busy_ticks()
        return values

    def start(self) -> None:
        self._before = self._snapshot()
        self._started = time.perf_counter()

    def stop(self) -> dict[str, float]:
        """Ticks per watched tree and of the load ``generator`` (this process and what it ran),
        and ``other_pct``: the rest of the machine's CPU use, in % of all its CPUs."""
        after = self._snapshot()
        elapsed = time.perf_counter() - self._started
        delta = {name: after[name] - self._before[name] for name in after}
        ours = sum(delta[name] for name in self.watch) + delta["_self"]
        other = max(0, delta["_machine"] - ours)
        capacity = elapsed * CLOCK_TICKS * (os.cpu_count() or 1)
        result: dict[str, float] = {name: delta[name] for name in self.watch}
        result["generator"] = delta["_self"]  # this process, and the wrk it ran
        result["other_pct"] = other / capacity * 100 if capacity else 0.0
        return result


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def worker_pids(root: int) -> list[int]:
    """The processes that serve requests: uvicorn's spawned workers, or the root alone."""
    workers = [
        pid
        for pid in process_tree(root)[1:]
        if "multiprocessing" in _cmdline(pid) and "resource_tracker" not in _cmdline(pid)
    ]
    return workers or [root]


def wait_settled(root: int, workers: int, timeout: float = 60.0) -> None:
    """Waits until ``workers`` worker processes exist and each has gone quiet (start-up over).

    Readiness answers from whichever worker accepts the connection first; with several
    workers the others may still be importing, so a measurement would start half-staffed.
    """
    deadline = time.monotonic() + timeout
    previous: dict[int, int] = {}
    quiet_since: float | None = None
    while time.monotonic() < deadline:
        pids = worker_pids(root) if workers > 1 else [root]
        now = {pid: cpu_ticks(pid) for pid in pids}
        quiet = (
            len(pids) == workers
            and set(now) == set(previous)
            and all(now[pid] - previous[pid] <= 2 for pid in pids)  # <= 20 ms in 0.25 s
        )
        if not quiet:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= 0.5:
            return
        previous = now
        time.sleep(0.25)
    raise TimeoutError(f"{workers} worker(s) did not settle within {timeout:.0f} s")


def peak_rss_kib(pid: int) -> int | None:
    """VmHWM: the process's peak resident set size."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
                if response.status < 500:
                    return
        except urllib.error.HTTPError as e:
            if e.code < 500:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


@dataclass
class Server:
    """A server process we started (and only ever stop by its own pid)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    cwd: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        assert self.process is not None  # noqa: S101 - started before use
        return self.process.pid

    def start(self, ready_url: str, timeout: float = 60.0) -> None:
        handle = self.log.open("ab")
        self.process = subprocess.Popen(  # noqa: S603 - our own commands
            self.argv, env=self.env, cwd=self.cwd, stdout=handle, stderr=handle
        )
        handle.close()
        try:
            wait_http(ready_url, self.process, timeout)
        except Exception:
            self.stop()
            raise

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            for pid in reversed(process_tree(process.pid)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            process.wait()
