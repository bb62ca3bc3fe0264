"""Three ``leveret run`` replicas on a 1 s schedule; the leader killed with kill -9, then
the next: no tick fires twice, and the next leader carries on within seconds.

A tick that falls due while no replica leads fires once, late, when the next one
takes over (a failover shorter than the period loses no tick at all). The figures
(takeover and failover seconds, how late the first tick after each kill was) go
to the fault report; bench/scheduler_failover.py runs the same for a minute.

And a leader whose connection the broker closes: another takes over, and the old
one reconnects (its channel transactional again) as a candidate, firing nothing
twice.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from leveret.amqp import Delivery, connect
from leveret.patterns import Schedule, ScheduledTask, Scheduler, scheduler_queue
from tests.faults.scheduler_fleet import run_fleet
from tests.faults.support import robust
from tests.support.rabbitmqctl import close_connection
from tests.support.waiting import wait_until

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


async def test_a_leader_whose_connection_the_broker_closes_hands_over_and_comes_back(
    amqp_url: str, figures: dict[str, Any]
) -> None:
    app = f"leveret-fault-sched-{uuid.uuid4().hex[:8]}"
    ticks = f"{app}.ticks"
    ids: list[str] = []

    def record(delivery: Delivery) -> None:
        ids.append(delivery.properties.message_id or "")
        delivery.ack()

    connections = [await robust(amqp_url, name=f"{app}-{i}") for i in range(2)]
    counter = await connect(amqp_url)
    try:
        channel = await counter.channel()
        await channel.queue_declare(ticks, durable=True)
        tag = await channel.consume(ticks, record)
        entry = ScheduledTask(ticks, Schedule(every=0.2))
        schedulers = [
            await Scheduler.create(await conn.channel(publisher_confirms=False), app, [entry])
            for conn in connections
        ]
        await wait_until(lambda: len(ids) >= 3, 10, "ticks")
        leader = next(i for i, scheduler in enumerate(schedulers) if scheduler.leading)
        count = len(ids)
        await asyncio.to_thread(close_connection, f"{app}-{leader}", "leveret test: hand over")

        await wait_until(lambda: schedulers[1 - leader].leading, 10, "the other to lead")
        await wait_until(lambda: len(ids) >= count + 5, 10, "ticks after the handover")

        async def both_consume() -> bool:
            ok = await channel.queue_declare(scheduler_queue(app), passive=True)
            return bool(ok.consumer_count == 2)

        await wait_until(both_consume, 20, "the old leader back as a candidate")
        figures["processed"] = len(ids)
        figures["duplicates"] = len(ids) - len(set(ids))
        assert len(ids) == len(set(ids)), f"ticks fired twice: {ids}"
        for scheduler in schedulers:
            await scheduler.close()
        await channel.cancel(tag)
        await channel.queue_delete(ticks)
        await channel.queue_delete(scheduler_queue(app))
    finally:
        for conn in [*connections, counter]:
            await conn.close()
