"""cProfile around a measured part: saved as .pstats under bench/results, with the
functions of most own time printed."""

from __future__ import annotations

import contextlib
import cProfile
import pstats
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench._results import RESULTS_DIR, timestamp

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


@contextlib.contextmanager
def reported_profile(enabled: bool, library: str, phase: str) -> Iterator[cProfile.Profile | None]:
    """A cProfile if ``enabled`` (the block enables and disables it around its
    measured part), reported when the block ends."""
    if not enabled:
        yield None
        return
    profiler = cProfile.Profile()
    try:
        yield profiler
    finally:
        profiler.disable()
        report_profile(library, phase, profiler, top=25)


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
