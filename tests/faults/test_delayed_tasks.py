"""Delayed tasks on a private node: through a broker restart, and past consumer_timeout.

The node has ``consumer_timeout`` set to 2 s (checked every 200 ms): a delay
held unacked by a worker would get its channel closed. The delays here (up to
6 s, three times the timeout) are shorter than in real use, to keep the suite
quick; what matters is that they outlast the timeout and the restart.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from typing import Any

import pytest

from leveret.patterns import Master, delay_queues
from tests.faults.support import Ledger, broker_counts, robust
from tests.support.brokers import PrivateNode, consumer_timeout_node
from tests.support.waiting import wait_until

pytestmark = pytest.mark.faults

# The node index this module owns: see the list in tests/support/brokers.py.
_NODE_INDEX = 1
CONSUMER_TIMEOUT_MS = 2000


@pytest.fixture(scope="module")
def node() -> Iterator[PrivateNode]:
    with consumer_timeout_node(_NODE_INDEX, CONSUMER_TIMEOUT_MS).running() as node:
        yield node


def arrival_task(ledger: Ledger, due: dict[int, float], early: list[int]) -> Any:
    """A task that counts its run and notes whether it came before it was due."""

    async def task(*, task_id: int) -> None:
        if time.monotonic() < due[task_id]:
            early.append(task_id)
        ledger.processed(task_id)

    return task


async def send_delayed(
    master: Master, queue: str, ledger: Ledger, due: dict[int, float], delays: list[float]
) -> None:
    for task_id, delay in enumerate(delays):
        due[task_id] = time.monotonic() + delay
        await master.create_task(queue, {"task_id": task_id}, delay=delay)
        ledger.confirmed.add(task_id)


async def test_a_broker_restart_mid_delay_loses_no_confirmed_delayed_task(
    figures: dict[str, Any], node: PrivateNode
) -> None:
    queue = "fault-delay-restart"
    ledger, due, early = Ledger(), dict[int, float](), list[int]()
    rng = random.Random(7)
    delays = [rng.uniform(1.0, 6.0) for _ in range(300)]
    worker_conn = await robust(node.url, name="fault-delay-worker")
    publisher_conn = await robust(node.url, name="fault-delay-publisher")
    try:
        master = Master(await worker_conn.channel())
        await master.create_worker(queue, arrival_task(ledger, due, early))
        publisher = Master(await publisher_conn.channel())
        await send_delayed(publisher, queue, ledger, due, delays)
        waiting = len(ledger.confirmed) - len(ledger.runs)
        assert waiting > 0  # the restart comes while tasks wait on the ladder

        await asyncio.to_thread(node.stop)
        await asyncio.to_thread(node.start)
        await wait_until(
            lambda: worker_conn.reconnects and publisher_conn.reconnects, 30, "both reconnects"
        )
        # The same Master goes on sending delayed tasks after the reconnect.
        for task_id in range(len(delays), len(delays) + 20):
            due[task_id] = time.monotonic() + 0.5
            await publisher.create_task(queue, {"task_id": task_id}, delay=0.5)
            ledger.confirmed.add(task_id)
        try:
            await wait_until(ledger.all_confirmed_processed, 60, "every confirmed delayed task")
        except AssertionError as exc:  # say which: late or lost can then be told apart
            missing = sorted(ledger.lost)
            raise AssertionError(f"{exc}: {len(missing)} not run: {missing[:50]}") from None
        figures.update(ledger.figures(), waiting_at_restart=waiting, early=len(early))
        assert not ledger.lost
        assert early == []
        await master.close()
    finally:
        await publisher_conn.close()
        await worker_conn.close()


async def test_delays_past_consumer_timeout_arrive_and_close_no_channel(
    figures: dict[str, Any], node: PrivateNode
) -> None:
    queue = "fault-delay-timeout"
    ledger, due, early = Ledger(), dict[int, float](), list[int]()
    delays = [6.0 - 0.1 * n for n in range(30)]  # 3.1 .. 6 s, all past the 2 s timeout
    connection = await robust(node.url, name="fault-delay-timeout")
    closed: list[Any] = []
    try:
        channel = await connection.channel()
        channel.close_callbacks.append(lambda _channel, reason: closed.append(reason))
        master = Master(channel)
        await master.create_worker(queue, arrival_task(ledger, due, early), prefetch_count=1)
        began = time.monotonic()
        await send_delayed(master, queue, ledger, due, delays)
        # While they wait, the worker holds none of them: nothing is unacked.
        assert await asyncio.to_thread(broker_counts, queue, node) == (0, 0)
        await wait_until(ledger.all_confirmed_processed, 60, "every delayed task")
        figures.update(
            ledger.figures(),
            consumer_timeout_s=CONSUMER_TIMEOUT_MS / 1000,
            longest_delay_s=max(delays),
            seconds=round(time.monotonic() - began, 1),
        )
        assert not ledger.lost and ledger.duplicates == 0 and early == []
        assert closed == [] and not channel.is_closed
        assert connection.reconnects == 0
        await master.close()
        listed = node.ctl("list_queues", "name", "messages", "--no-table-headers", "-q").stdout
        counts = dict(line.split("\t") for line in listed.splitlines())
        assert {name: counts[name] for name in (queue, *delay_queues(queue))} == {
            name: "0" for name in (queue, *delay_queues(queue))
        }
    finally:
        await connection.close()
