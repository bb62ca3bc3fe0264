"""Scheduler failover: 3 ``leveret run`` replicas on a 1 s schedule for 60 s; the leader
killed with kill -9 at 20 s and the next at 40 s (each just before a tick falls due).

Prints, per kill, the takeover (from the kill until another replica leads), the
failover (from the kill until the next tick arrived) and how late that tick was;
and for the run, ticks that arrived, fired twice (must be 0) and coalesced (ticks
of the grid that fired as part of a later one: a failover longer than the period).
Writes ``bench/results/scheduler-failover-<time>.json``; asserts nothing. Run it from
the repository root: ``python -m bench.scheduler_failover`` (``--url`` for another
broker; ``--duration`` and ``--kill`` to change the timeline).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from pathlib import Path
from typing import Any

from bench._results import finish, machine_info, utc_now
from tests.faults.scheduler_fleet import run_fleet


def _show(report: dict[str, Any]) -> None:
    figures = report["figures"]
    print(f"{'kill':<6} {'takeover s':>11} {'failover s':>11} {'next tick late s':>17}")
    for n, kill in enumerate(figures["kills"], 1):
        print(
            f"{n:<6} {kill['takeover_s']!s:>11} {kill['failover_s']!s:>11} "
            f"{kill['next_tick_late_s']!s:>17}"
        )
    print(
        f"ticks {figures['ticks']}, fired twice {figures['duplicates']}, "
        f"coalesced {figures['coalesced']} ({report['duration_s']} s, every "
        f"{report['every_s']} s, kills at {report['kills_at_s']} s; {report['note']})"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1/")
    )
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--kill", type=float, action="append", help="seconds (repeatable)")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results")
    options = parser.parse_args()
    kills = options.kill or [20.0, 40.0]
    with tempfile.TemporaryDirectory() as folder:
        run = await run_fleet(options.url, Path(folder), duration=options.duration, kills=kills)
    report = {
        "when": utc_now(),
        "machine": machine_info(["cronsim"]),
        "duration_s": options.duration,
        "every_s": run.every,
        "kills_at_s": kills,
        "figures": run.figures(),
        "note": "wall-clock figures on a shared, loaded machine",
    }
    finish("scheduler-failover", report, save=not options.no_save, show=_show)


if __name__ == "__main__":
    asyncio.run(main())
