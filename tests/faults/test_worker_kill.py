"""kill -9 one of two worker processes in the middle of 10,000 tasks on a durable queue.

The broker requeues what the killed worker held unacked (at most its prefetch);
the other worker gets those as redeliveries and finishes the stream. A task the
killed worker had finished but not yet acked runs again: those are the only
duplicates there may be.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from leveret.amqp import connect
from leveret.patterns import Master, dead_letter_queue
from tests.faults.processes import Spawned
from tests.faults.support import (
    Ledger,
    declared,
    publish_until,
    read_log,
    runs_in,
    settled_and_empty,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.faults

TASKS = 10_000
PREFETCH = 50
#: Each task takes this long: two workers then take tasks more slowly than they are
#: published, so a backlog builds and the killed worker holds a full prefetch.
TASK_SECONDS = 0.05


async def test_killing_one_of_two_workers_loses_no_task_and_repeats_only_what_it_held(
    figures: dict[str, Any], amqp_url: str, task_queue: str, logs: Callable[[str], Path]
) -> None:
    options = ["--url", amqp_url, "--queue", task_queue, "--prefetch", str(PREFETCH)]
    options += ["--delay", str(TASK_SECONDS)]
    victim = Spawned("worker", logs("victim"), *options)
    survivor = Spawned("worker", logs("survivor"), *options)
    ledger = Ledger()
    stop = asyncio.Event()
    try:
        await wait_until(lambda: victim.ready() and survivor.ready(), 30, "two workers consuming")
        async with await connect(amqp_url, name="fault-publisher") as conn:
            master = Master(await conn.channel())
            publishing = asyncio.create_task(
                publish_until(master, task_queue, ledger, stop, concurrency=64, limit=TASKS)
            )
            try:
                await wait_until(
                    lambda: len(runs_in(victim.log)) + len(runs_in(survivor.log)) >= TASKS * 0.3,
                    60,
                    "the stream to be under way",
                )
                await asyncio.to_thread(victim.kill)
                figures["processed_at_kill"] = len(runs_in(victim.log)) + len(runs_in(survivor.log))
                await publishing
            finally:
                stop.set()
                await asyncio.gather(publishing, return_exceptions=True)

        by_victim = Counter(runs_in(victim.log))

        def runs_so_far() -> Counter[int]:
            return by_victim + Counter(runs_in(survivor.log))

        await wait_until(
            lambda: ledger.confirmed <= runs_so_far().keys(), 60, "every confirmed task"
        )
        # Nothing ready and nothing unacked: the redelivered tasks were settled too.
        await wait_until(lambda: settled_and_empty(task_queue), 30, "an empty, settled queue")
        assert await asyncio.to_thread(survivor.terminate) == 0, survivor.stderr()

        by_survivor = Counter(runs_in(survivor.log))
        ledger.runs = by_victim + by_survivor
        redelivered = {
            int(fields[1])
            for fields in read_log(survivor.log)
            if fields[0] == "done" and int(fields[3]) > 0
        }
        figures.update(
            ledger.figures(),
            victim_processed=len(by_victim),
            survivor_processed=len(by_survivor),
            redelivered=len(redelivered),
            prefetch=PREFETCH,
        )

        assert ledger.confirmed == set(range(TASKS)) and not ledger.unconfirmed
        assert not ledger.lost
        # Killed in the middle: both workers did part of the stream.
        assert by_victim and figures["processed_at_kill"] < TASKS
        # No worker ran a task twice; a task ran twice only if the killed worker
        # finished it without its ack reaching the broker, and then the other got
        # it as a redelivery. The broker let the killed worker hold at most
        # PREFETCH unacked tasks, so that bounds both.
        assert max(by_victim.values()) == 1 and max(by_survivor.values()) == 1
        assert len(redelivered) <= PREFETCH
        assert ledger.duplicated <= redelivered & by_victim.keys()
        assert ledger.duplicates <= PREFETCH
        assert await declared(amqp_url, task_queue) == (0, 0)
        assert await declared(amqp_url, dead_letter_queue(task_queue)) == (0, 0)
    finally:
        stop.set()
        victim.kill()
        survivor.kill()
