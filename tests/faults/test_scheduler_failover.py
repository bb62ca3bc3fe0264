"""Three ``leveret run`` replicas on a 1 s schedule; the leader killed with kill -9, then
the next: no tick fires twice, and the next leader carries on within seconds.

A tick that falls due while no replica leads fires once, late, when the next one
takes over (a failover shorter than the period loses no tick at all). The figures
(takeover and failover seconds, how late the first tick after each kill was) go
to the fault report; bench/scheduler_failover.py runs the same for a minute.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.faults.scheduler_fleet import run_fleet

pytestmark = pytest.mark.faults


async def test_killing_the_leader_twice_fires_no_tick_twice_and_the_next_leader_carries_on(
    amqp_url: str, tmp_path: Path, figures: dict[str, Any]
) -> None:
    run = await run_fleet(amqp_url, tmp_path, duration=15, kills=[5, 10], every=1.0)
    figures.update(run.figures())
    figures["processed"] = len(run.arrivals)
    figures["duplicates"] = run.duplicates
    print(f"\nscheduler failover: {run.figures()}")

    assert run.duplicates == 0, f"ticks fired twice: {run.arrivals}"
    ticks = run.ticks()
    assert ticks == sorted(ticks)  # one leader at a time: never an older tick after a newer
    for kill in run.kills:
        assert kill.taken_over is not None, f"nobody took over from {kill.pid}"
        assert kill.failover_seconds is not None and kill.failover_seconds < 10, run.figures()
    assert len(run.arrivals) >= 10  # the fleet kept firing across both kills
