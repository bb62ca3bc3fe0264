"""Bad input that never reaches a worker or callee: names nobody consumes, and
messages the client or the broker refuses at the sender.

Each ends in a clear error at the sender, and the worker keeps serving.
"""

from __future__ import annotations

import asyncio
import math

import pytest

from leveret.amqp import Channel, Connection, connect
from leveret.exceptions import (
    AMQPError,
    ConfigurationError,
    MessageReturnedError,
    UnroutableError,
)
from leveret.patterns import RPC, Master
from tests.badinput.conftest import (
    Ledger,
    Queues,
    RawProperties,
    Tally,
    nothing_comes_back,
    raw_entry,
    raw_table,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.badinput

NO_ROUTE = 312


async def test_tasks_and_calls_for_names_nobody_consumes_fail_at_the_sender(
    channel: Channel,
    worker_connection: Connection,
    unique: str,
    queues: Queues,
    ledger: Ledger,
) -> None:
    task = queues(unique)
    tally = Tally()
    await Master(await worker_connection.channel()).create_worker(task, tally.task)
    sender = Master(channel)
    good = 0

    async def one_good_task() -> None:
        nonlocal good
        await sender.create_task(task, kwargs={"n": good})
        good += 1

    kind = "unknown task name, raw mandatory publish"
    ledger.tried(kind)
    with pytest.raises(MessageReturnedError) as returned:
        await channel.publish(b'{"n": 1}', routing_key=f"{task}.nobody", mandatory=True)
    assert returned.value.message.reply_code == NO_ROUTE
    assert returned.value.message.routing_key == f"{task}.nobody"
    assert returned.value.message.body == b'{"n": 1}'
    await one_good_task()
    ledger.handled(
        kind, "returned by the broker: MessageReturnedError (312 NO_ROUTE) at the sender"
    )

    kind = "unknown task name with odd characters, raw mandatory publish"
    ledger.tried(kind)
    odd = f"{task} 🐇\x00/#*"
    with pytest.raises(MessageReturnedError) as returned:
        await channel.publish(b"{}", routing_key=odd, mandatory=True)
    assert returned.value.message.routing_key == odd
    await one_good_task()
    ledger.handled(kind, "returned by the broker: MessageReturnedError at the sender")

    kind = "unknown task name through Master.create_task"
    ledger.tried(kind)
    with pytest.raises(UnroutableError, match=f"no queue takes task '{task}.nobody'"):
        await getattr(sender.proxy, task).nobody(n=1)
    await one_good_task()
    ledger.handled(kind, "UnroutableError naming the task, at the sender")

    kind = "task name longer than 255 bytes"
    ledger.tried(kind)
    with pytest.raises(ConfigurationError, match="routing key is 256 bytes"):
        await channel.publish(b"{}", routing_key="t" * 256, mandatory=True)
    with pytest.raises(ConfigurationError, match="routing key is 256 bytes"):
        await sender.create_task("t" * 256, kwargs={"n": 1})
    await one_good_task()
    ledger.handled(kind, "ConfigurationError at the sender; nothing sent")

    kind = "unknown method name through RPC.call"
    ledger.tried(kind)
    rpc = await RPC.create(await channel.connection.channel())
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(UnroutableError, match=f"nobody serves '{task}.nobody'"):
            await rpc.call(f"{task}.nobody", {"x": 1}, timeout=30)
        assert loop.time() - started < 5, "an unroutable call must fail at once, not time out"
    finally:
        await rpc.close()
    await one_good_task()
    ledger.handled(kind, "UnroutableError at once (no timeout), at the caller")

    assert channel.is_open
    await wait_until(lambda: len(tally.runs) == good, 5, "the good tasks")
    await nothing_comes_back(worker_connection, channel, task)
    assert tally.runs == {n: 1 for n in range(good)}


@pytest.mark.parametrize(
    ("kind", "properties", "error", "refused_by"),
    [
        (
            "header with a field type AMQP does not define",
            RawProperties(raw_headers=raw_table(raw_entry(b"k", b"Z\x00"))),
            "INTERNAL_ERROR",
            "the broker (541, closing the sender's connection)",
        ),
        (
            "delivery mode other than 1 or 2",
            RawProperties(delivery_mode=7),
            "PRECONDITION_FAILED - invalid message",
            "the broker (406, closing the sender's channel)",
        ),
        (
            "NaN in a header",
            RawProperties(headers={"ratio": math.nan}),
            "NaN or infinity",
            "the client (ConfigurationError; nothing sent)",
        ),
        (
            "infinity nested in a header array",
            RawProperties(headers={"limits": [1.0, {"upper": math.inf}]}),
            "NaN or infinity",
            "the client (ConfigurationError; nothing sent)",
        ),
        (
            "properties larger than a frame",
            RawProperties(headers={"huge": "x" * 140_000}),
            "do not fit in one frame",
            "the client (ConfigurationError; nothing sent)",
        ),
    ],
)
async def test_messages_the_client_or_broker_cannot_carry_are_refused_at_the_sender(
    amqp_url: str,
    channel: Channel,
    worker_connection: Connection,
    unique: str,
    queues: Queues,
    ledger: Ledger,
    kind: str,
    properties: RawProperties,
    error: str,
    refused_by: str,
) -> None:
    task = queues(unique)
    tally = Tally()
    await Master(await worker_connection.channel()).create_worker(task, tally.task)
    ledger.tried(kind)
    sender = await connect(amqp_url)
    try:
        sending = await sender.channel()
        with pytest.raises(
            AMQPError if "broker" in refused_by else ConfigurationError, match=error
        ):
            await sending.publish(b'{"n": 0}', routing_key=task, properties=properties)
        if "client" in refused_by:
            assert sending.is_open, "a message the client refused must not cost the channel"
            await Master(sending).create_task(task, kwargs={"n": 1})
        else:
            await Master(channel).create_task(task, kwargs={"n": 1})
    finally:
        await sender.close()
    await wait_until(lambda: tally.runs == {1: 1}, 5, "the good task")
    await nothing_comes_back(worker_connection, channel, task)
    assert tally.runs == {1: 1}
    ledger.handled(kind, f"refused at the sender by {refused_by}; the worker never saw it")
