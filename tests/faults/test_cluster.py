"""A 3-node cluster of private nodes and a quorum queue: stop one node during the stream.

Publisher and worker connect with ``connect_robust([url1, url2, url3])``, both to
the first node, where the quorum queue is declared (so its leader is there too).
Stopping that node costs them their connections; they fail over to another
node, the remaining two elect a new leader, and no confirmed task is lost (a
quorum queue confirms a publish once a majority of its members has it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from leveret.amqp import RobustConnection
from leveret.patterns import Master, dead_letter_queue
from tests.faults.support import (
    Ledger,
    declared,
    publish_until,
    recording_task,
    robust,
    settled_and_empty,
)
from tests.support.brokers import PrivateNode
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

PREFETCH = 50
TASK_SECONDS = 0.005
#: Tasks confirmed before the node stops, and again after it.
STREAM = 500
QUEUE = "fault-cluster"

# The node index this module owns: see the list in tests/support/brokers.py.
_NODE_INDEXES = (5, 6, 7)


@pytest.fixture
async def cluster() -> AsyncIterator[list[PrivateNode]]:
    """Three private nodes clustered with the first (the recipe in private-brokers.md)."""
    nodes = [PrivateNode(index) for index in _NODE_INDEXES]
    try:
        await asyncio.gather(*(asyncio.to_thread(node.start) for node in nodes))
        for node in nodes[1:]:
            await asyncio.to_thread(node.ctl, "stop_app")
            await asyncio.to_thread(node.ctl, "join_cluster", nodes[0].name)
            await asyncio.to_thread(node.ctl, "start_app")
        yield nodes
    finally:
        await asyncio.gather(*(asyncio.to_thread(node.destroy) for node in nodes))


def _port(conn: RobustConnection) -> int | None:
    """The port of the node a connection is on (``None`` while it is down)."""
    return conn.address[1] if conn.address else None


def _leader(node: PrivateNode, queue: str) -> str:
    out = node.ctl("list_queues", "name", "leader", "--no-table-headers", "-q").stdout
    for line in out.splitlines():
        name, _, leader = line.partition("\t")
        if name == queue:
            return leader.strip()
    raise AssertionError(f"queue {queue!r} is not listed: {out!r}")


async def test_stopping_the_node_clients_use_and_the_queue_leader_loses_no_confirmed_task(
    figures: dict[str, Any], cluster: list[PrivateNode]
) -> None:
    first, second, _ = cluster
    urls = [node.url for node in cluster]
    ledger = Ledger()
    stop = asyncio.Event()
    worker_conn = await robust(urls, name="fault-worker")
    publisher_conn = await robust(urls, name="fault-publisher")
    publishing: asyncio.Task[None] | None = None
    try:
        master = Master(await worker_conn.channel())
        await master.create_worker(
            QUEUE,
            recording_task(ledger, TASK_SECONDS),
            prefetch_count=PREFETCH,
            queue_type="quorum",
        )
        assert _port(worker_conn) == _port(publisher_conn) == first.port
        leader = await asyncio.to_thread(_leader, first, QUEUE)
        assert leader == first.name

        publisher = Master(await publisher_conn.channel())
        publishing = asyncio.create_task(publish_until(publisher, QUEUE, ledger, stop))
        await wait_until(
            lambda: len(ledger.confirmed) >= STREAM and ledger.runs, 30, "the streams under way"
        )

        await asyncio.to_thread(first.stop)
        confirmed_before = len(ledger.confirmed)
        await wait_until(
            lambda: worker_conn.reconnects and publisher_conn.reconnects, 30, "both reconnects"
        )
        await wait_until(
            lambda: len(ledger.confirmed) >= confirmed_before + STREAM,
            60,
            "tasks confirmed after the node stopped",
        )
        stop.set()
        await publishing

        await wait_until(ledger.all_confirmed_processed, 30, "every confirmed task")
        await wait_until(lambda: settled_and_empty(QUEUE, second), 30, "an empty, settled queue")
        await master.close()
        figures.update(
            ledger.figures(),
            prefetch=PREFETCH,
            confirmed_before_stop=confirmed_before,
            old_leader=leader,
            new_leader=await asyncio.to_thread(_leader, second, QUEUE),
            failed_over_to=[node.name for node in cluster if node.port == _port(worker_conn)],
        )

        assert not ledger.lost
        assert set(ledger.publish_errors) <= {"PublishNotConfirmedError"}
        assert _port(worker_conn) != first.port and _port(publisher_conn) != first.port
        assert figures["new_leader"] != first.name
        # Only what the worker held unacked on the stopped node runs again.
        assert ledger.duplicated <= ledger.redelivered
        assert ledger.duplicates <= PREFETCH and max(ledger.runs.values()) <= 2
        assert await declared(second.url, QUEUE) == (0, 0)
        assert await declared(second.url, dead_letter_queue(QUEUE)) == (0, 0)
    finally:
        stop.set()
        if publishing is not None:
            await asyncio.gather(publishing, return_exceptions=True)
        await publisher_conn.close()
        await worker_conn.close()
