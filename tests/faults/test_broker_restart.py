"""Restart the broker (a private node) in the middle of a publish stream and a consume stream.

Publisher and worker each have a robust connection; both come back on their own.
A publish in flight when the node went down fails with ``PublishNotConfirmedError``
(it may or may not have been taken), so only confirmed tasks must be processed.
A task the worker held unacked when the node went down runs again (and one that
was received but not started yet runs from the dead connection's buffer and again
as a redelivery): at most the worker's prefetch of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

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

pytestmark = pytest.mark.faults

PREFETCH = 50
TASK_SECONDS = 0.005
#: Tasks confirmed before the restart, and again after it.
STREAM = 1000
QUEUE = "fault-restart"

# The node index this module owns: see the list in tests/support/brokers.py.
_NODE_INDEX = 0


@pytest.fixture
async def node() -> AsyncIterator[PrivateNode]:
    node = PrivateNode(_NODE_INDEX)
    try:
        await asyncio.to_thread(node.start)
        yield node
    finally:
        await asyncio.to_thread(node.destroy)


async def test_broker_restart_mid_stream_loses_no_confirmed_task(
    figures: dict[str, Any], node: PrivateNode
) -> None:
    ledger = Ledger()
    stop = asyncio.Event()
    worker_conn = await robust(node.url, name="fault-worker")
    publisher_conn = await robust(node.url, name="fault-publisher")
    publishing: asyncio.Task[None] | None = None
    try:
        master = Master(await worker_conn.channel())
        await master.create_worker(
            QUEUE, recording_task(ledger, TASK_SECONDS), prefetch_count=PREFETCH
        )
        publisher = Master(await publisher_conn.channel())
        publishing = asyncio.create_task(publish_until(publisher, QUEUE, ledger, stop))
        await wait_until(
            lambda: len(ledger.confirmed) >= STREAM and ledger.runs, 30, "the streams under way"
        )

        await asyncio.to_thread(node.stop)
        confirmed_before = len(ledger.confirmed)
        await asyncio.to_thread(node.start)
        await wait_until(
            lambda: worker_conn.reconnects and publisher_conn.reconnects, 30, "both reconnects"
        )
        await wait_until(
            lambda: len(ledger.confirmed) >= confirmed_before + STREAM,
            30,
            "tasks confirmed after the restart",
        )
        stop.set()
        await publishing

        await wait_until(ledger.all_confirmed_processed, 30, "every confirmed task")
        await wait_until(lambda: settled_and_empty(QUEUE, node), 30, "an empty, settled queue")
        await master.close()
        figures.update(
            ledger.figures(),
            confirmed_before_restart=confirmed_before,
            prefetch=PREFETCH,
            reconnects=worker_conn.reconnects + publisher_conn.reconnects,
        )

        assert not ledger.lost
        # Only a publish in flight at the restart may fail, and only as "not confirmed".
        assert set(ledger.publish_errors) <= {"PublishNotConfirmedError"}
        assert worker_conn.reconnects >= 1 and publisher_conn.reconnects >= 1
        # A task ran twice only if the worker held it unacked when the node went down
        # (run then from the dead connection, and again as a redelivery): at most
        # PREFETCH of them, and never more than twice.
        assert ledger.duplicated <= ledger.redelivered
        assert ledger.duplicates <= PREFETCH and max(ledger.runs.values()) <= 2
        assert await declared(node.url, QUEUE) == (0, 0)
        assert await declared(node.url, dead_letter_queue(QUEUE)) == (0, 0)
    finally:
        stop.set()
        if publishing is not None:
            await asyncio.gather(publishing, return_exceptions=True)
        await publisher_conn.close()
        await worker_conn.close()
