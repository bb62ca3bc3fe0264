"""Clocks and CPU accounting through /proc: this process, a process tree (a worker
and its pool), the broker, the whole machine; rates and CPU per message; latency
percentiles; pipelined sending over "lanes".

Every benchmark measures with these, so their columns mean the same everywhere.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

# time.monotonic() is CLOCK_MONOTONIC on Linux: one system-wide clock, so
# timestamps taken in different processes can be compared.
clock = time.monotonic


# -- CPU accounting -----------------------------------------------------------------------


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies from /proc/stat; (0, 0) where it is unavailable."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return total - idle, total


def find_listener_pid(port: int) -> int | None:
    """The pid of the local process listening on ``port`` (the broker), if /proc shows it.

    Read-only and best effort: it needs permission to read other processes' fds.
    """
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    local, state, inode = fields[1], fields[3], fields[9]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        inodes.add(f"socket:[{inode}]")
        except (OSError, StopIteration, IndexError, ValueError):
            continue
    if not inodes:
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return int(entry.name)
        except OSError:
            continue
    return None


#: Set by the main process through :func:`locate_broker`; spawned children leave it unset.
broker_pid: int | None = None


def locate_broker(url: str) -> int | None:
    """Find the broker behind ``url`` in /proc, so :class:`Phase` counts its CPU."""
    global broker_pid
    broker_pid = find_listener_pid(urllib.parse.urlsplit(url).port or 5672)
    return broker_pid


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (``None`` if unreadable)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_cpu_seconds(pid: int | None) -> float | None:
    """utime + stime of a process, from /proc/<pid>/stat (``None`` if unreadable)."""
    fields = None if pid is None else _stat_fields(pid)
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float | None:
    """CPU time (user + sys) of ``root`` and all its descendants, including the
    children they have already reaped (a worker with its pool processes);
    ``None`` if the root is gone."""
    parents: dict[int, int] = {}
    times: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is None:
            continue
        pid = int(entry.name)
        # after the name: state ppid ... utime(11) stime(12) cutime(13) cstime(14)
        parents[pid] = int(fields[1])
        times[pid] = sum(int(x) for x in fields[11:15])
    if root not in times:
        return None
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(times[pid] for pid in tree) / os.sysconf("SC_CLK_TCK")


def memory_status(pid: int | str = "self") -> dict[str, int]:
    """VmHWM (peak RSS) and VmRSS of a process in KiB, from /proc/<pid>/status."""
    found: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS"):
                    found[f"{key.lower()}_kib"] = int(value.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return found


class Phase:
    """Wall time and CPU use over a phase: this process, the broker (when found in
    /proc) and the whole machine (from /proc/stat)."""

    def __init__(self) -> None:
        self.start = clock()
        self._cpu = time.process_time()
        self._ticks = cpu_ticks()
        self._broker_cpu = process_cpu_seconds(broker_pid)
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self.broker_cpu_seconds: float | None = None
        self.machine_busy_pct: float | None = None

    def stop(self, end: float | None = None) -> Phase:
        self.seconds = (end if end is not None else clock()) - self.start
        self.cpu_seconds = time.process_time() - self._cpu
        broker_cpu = process_cpu_seconds(broker_pid)
        if broker_cpu is not None and self._broker_cpu is not None:
            self.broker_cpu_seconds = broker_cpu - self._broker_cpu
        busy, total = cpu_ticks()
        if total > self._ticks[1]:
            self.machine_busy_pct = round(
                100.0 * (busy - self._ticks[0]) / (total - self._ticks[1]), 1
            )
        return self


def phase_numbers(
    n: int, phase: Phase, *, client_cpu_seconds: float | None = None
) -> dict[str, Any]:
    """Rates and CPU costs of a phase. ``client_cpu_seconds`` overrides this process's
    CPU time (the multi-process scenarios pass their children's)."""
    client_cpu = phase.cpu_seconds if client_cpu_seconds is None else client_cpu_seconds
    numbers: dict[str, Any] = {
        "seconds": round(phase.seconds, 4),
        "msgs_per_s": round(n / phase.seconds) if phase.seconds > 0 else None,
        "client_cpu_us_per_msg": us_per(client_cpu, n),
    }
    if phase.broker_cpu_seconds is not None:
        numbers["broker_cpu_us_per_msg"] = us_per(phase.broker_cpu_seconds, n)
    numbers["machine_cpu_busy_pct"] = phase.machine_busy_pct
    if phase.machine_busy_pct is not None and phase.broker_cpu_seconds is not None:
        # CPU the machine spent on neither this benchmark nor the broker: other
        # people's work, the noise in these numbers (in cores, of os.cpu_count()).
        busy_cores = phase.machine_busy_pct / 100 * (os.cpu_count() or 1)
        ours = (client_cpu + phase.broker_cpu_seconds) / phase.seconds if phase.seconds else 0
        numbers["other_load_cores"] = round(max(0.0, busy_cores - ours), 2)
    return numbers


def us_per(cpu_seconds: float, n: int) -> float:
    """CPU seconds spent on ``n`` messages, in µs per message."""
    return round(1e6 * cpu_seconds / n, 1)


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# -- sending and latency ------------------------------------------------------------------


async def run_lanes(n: int, lanes: int, one: Callable[[int], Awaitable[object]]) -> None:
    """``lanes`` coroutines share a countdown of ``n`` calls of ``one(i)``, ``i`` from 0
    to ``n - 1``, each lane awaiting its own call (pipelining without a task per call)."""
    issued = 0

    async def lane() -> None:
        nonlocal issued
        while issued < n:
            i = issued
            issued += 1
            await one(i)

    await asyncio.gather(*(lane() for _ in range(max(1, min(lanes, n)))))


def latency_summary(latencies_ns: list[int]) -> dict[str, float]:
    """p50, p90, p99, max and mean of call latencies (ns), in ms."""
    ordered = sorted(latencies_ns)

    def percentile(pct: float) -> float:  # nearest rank
        index = round(pct / 100 * len(ordered) + 0.5) - 1
        return ordered[max(0, min(len(ordered) - 1, index))] / 1e6

    return {
        "p50": round(percentile(50), 3),
        "p90": round(percentile(90), 3),
        "p99": round(percentile(99), 3),
        "max": round(ordered[-1] / 1e6, 3),
        "mean": round(statistics.fmean(ordered) / 1e6, 3),
    }
