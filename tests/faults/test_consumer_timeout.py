"""Tasks that run longer than the broker's ``consumer_timeout`` (a private node set low).

RabbitMQ closes a channel whose delivery stays unacked past ``consumer_timeout``
(``406 PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out``) and
requeues every unacked delivery on it. The worker names it, lets the long task finish,
does not run it again when the broker hands it back, and runs each short task that
was requeued with it exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from leveret.patterns import Master
from tests.faults.support import robust
from tests.support.brokers import PrivateNode, consumer_timeout_node
from tests.support.waiting import wait_until

pytestmark = pytest.mark.faults

# The node index this module owns: see the list in tests/support/brokers.py.
_NODE_INDEX = 8
#: consumer_timeout on the node; RabbitMQ 3.10 checks it on each channel tick.
CONSUMER_TIMEOUT_MS = 2000
QUEUE = "fault-consumer-timeout"


@pytest.fixture(scope="module")
def node() -> Iterator[PrivateNode]:
    with consumer_timeout_node(_NODE_INDEX, CONSUMER_TIMEOUT_MS).running() as node:
        yield node


@pytest.mark.parametrize("kind", ["async", "plain"])
async def test_a_task_past_consumer_timeout_runs_once_and_its_neighbours_once_each(
    figures: dict[str, Any],
    node: PrivateNode,
    caplog: pytest.LogCaptureFixture,
    kind: str,
) -> None:
    caplog.set_level(logging.INFO, logger="leveret")
    long_seconds = 5.0
    runs: Counter[int] = Counter()
    overlap = 0
    running: set[int] = set()

    def note_start(n: int) -> None:
        nonlocal overlap
        if n in running:
            overlap += 1
        running.add(n)

    def note_end(n: int) -> None:
        running.discard(n)
        runs[n] += 1

    async def async_task(*, n: int) -> None:
        note_start(n)
        await asyncio.sleep(long_seconds if n == 0 else 0.05)
        note_end(n)

    def plain_task(*, n: int) -> None:
        note_start(n)
        time.sleep(long_seconds if n == 0 else 0.05)
        note_end(n)

    shorts = 30
    connection = await robust(node.url, name="fault-consumer-timeout")
    queue = f"{QUEUE}-{kind}"
    try:
        master = Master(await connection.channel())
        worker = await master.create_worker(
            queue, async_task if kind == "async" else plain_task, prefetch_count=4
        )
        started = time.monotonic()
        await master.create_task(queue, kwargs={"n": 0})
        for n in range(1, shorts + 1):
            await master.create_task(queue, kwargs={"n": n})
        await wait_until(lambda: len(runs) == shorts + 1, 60, "every task to run")
        await wait_until(lambda: worker.in_flight == 0, 30, "every task to settle")
        await asyncio.sleep(2 * CONSUMER_TIMEOUT_MS / 1000)  # proving a negative: no rerun
        state = await (await connection.channel()).queue_declare(queue, passive=True)
        figures.update(
            tasks=shorts + 1,
            runs=sum(runs.values()),
            duplicates=sum(count - 1 for count in runs.values()),
            lost=shorts + 1 - len(runs),
            long_task_runs=runs[0],
            overlapping_runs=overlap,
            channel_closes=caplog.text.count("delivery acknowledgement"),
            left_in_queue=state.message_count,
            seconds_to_finish=round(time.monotonic() - started, 1),
        )
        assert runs[0] == 1, f"the long task ran {runs[0]} times"
        assert overlap == 0
        assert all(runs[n] == 1 for n in range(1, shorts + 1)), runs
        assert state.message_count == 0
        assert "past the broker's consumer_timeout (2 s)" in caplog.text
        assert "raise consumer_timeout" in caplog.text
    finally:
        await connection.close()
