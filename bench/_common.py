"""What the benchmark scripts share: clocks, CPU accounting through /proc (this
process, the broker, other processes, the whole machine), machine info,
profiling, number formatting and writing results.

Imported by ``amqp_bench.py`` and ``patterns_bench.py`` (run as scripts, so this
directory is on ``sys.path``; spawned children inherit it).
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import datetime
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, Final

RESULTS_DIR: Final = Path(__file__).resolve().parent / "results"
DEFAULT_URL: Final = "amqp://guest:guest@127.0.0.1:5672/"

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


def process_cpu_seconds(pid: int | None) -> float | None:
    """utime + stime of a process, from /proc/<pid>/stat (``None`` if unreadable)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
        "client_cpu_us_per_msg": round(1e6 * client_cpu / n, 1),
    }
    if phase.broker_cpu_seconds is not None:
        numbers["broker_cpu_us_per_msg"] = round(1e6 * phase.broker_cpu_seconds / n, 1)
    numbers["machine_cpu_busy_pct"] = phase.machine_busy_pct
    if phase.machine_busy_pct is not None and phase.broker_cpu_seconds is not None:
        # CPU the machine spent on neither this benchmark nor the broker: other
        # people's work, the noise in these numbers (in cores, of os.cpu_count()).
        busy_cores = phase.machine_busy_pct / 100 * (os.cpu_count() or 1)
        ours = (client_cpu + phase.broker_cpu_seconds) / phase.seconds if phase.seconds else 0
        numbers["other_load_cores"] = round(max(0.0, busy_cores - ours), 2)
    return numbers


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


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


# -- machine ------------------------------------------------------------------------------


def machine_info(packages: Iterable[str]) -> dict[str, Any]:
    """CPU, Python and the installed versions of ``packages``."""
    cpu_model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "leveret_commit": git_revision(),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "packages": versions,
    }


def git_revision() -> str | None:
    """The checkout's commit, with ``+dirty`` when tracked files have changes."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args],
            cwd=Path(__file__).resolve().parents[1],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit


# -- profiling ----------------------------------------------------------------------------

Profiler = Callable[[str, str, cProfile.Profile], None]


@contextlib.contextmanager
def profiling(profile: Profiler | None, library: str, phase: str) -> Iterator[None]:
    """Run the block under cProfile and hand the profile to ``profile``."""
    if profile is None:
        yield
        return
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()
        profile(library, phase, profiler)


def report_profile(library: str, phase: str, profiler: cProfile.Profile, top: int = 12) -> None:
    """Save the profile and print the functions with the most own time, with their share."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"profile-{library}-{phase}-{timestamp()}.pstats"
    profiler.dump_stats(path)
    stats = pstats.Stats(profiler)
    entries: dict[tuple[str, int, str], tuple[int, int, float, float, Any]]
    entries = stats.stats  # type: ignore[attr-defined]
    total: float = stats.total_tt  # type: ignore[attr-defined]
    rows = sorted(entries.items(), key=lambda item: item[1][2], reverse=True)[:top]
    lines = [
        f"\n{library} {phase}: {total:.3f} s profiled (cProfile), own time per function",
        f"{'own %':>6} {'own s':>7} {'cum s':>7} {'calls':>9}  function",
    ]
    for (filename, line, name), (_, calls, own, cumulative, _) in rows:
        where = f"{_short(filename)}:{line}({name})" if line else name
        lines.append(f"{100 * own / total:6.1f} {own:7.3f} {cumulative:7.3f} {calls:9d}  {where}")
    lines.append(f"saved {path}")
    print("\n".join(lines), flush=True)


def _short(filename: str) -> str:
    parts = Path(filename).parts
    for anchor in ("leveret", "aio_pika", "aiormq", "asyncio", "pamqp"):
        if anchor in parts:
            return "/".join(parts[parts.index(anchor) :])
    return Path(filename).name


# -- numbers and results ------------------------------------------------------------------


def median(values: Iterable[float | None]) -> float | None:
    """The median of the values that are not ``None`` (``None`` if there are none)."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def timestamp() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def write_results(prefix: str, report: dict[str, Any]) -> Path:
    """Write ``<prefix>-<timestamp>.json`` and ``<prefix>-latest.json`` under bench/results."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{prefix}-{timestamp()}.json"
    text = json.dumps(report, indent=2) + "\n"
    path.write_text(text)
    (RESULTS_DIR / f"{prefix}-latest.json").write_text(text)
    return path
