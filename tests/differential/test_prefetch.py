"""Prefetch: per-consumer and channel-wide (global) limits, alone and combined.

RabbitMQ 3.10 lifts a channel's global limit when a per-consumer ``basic.qos``
follows it; a global one set after per-consumer limits adds to them.
"""

from __future__ import annotations

import pytest

from leveret.amqp import Delivery
from tests.differential.harness import Side, compare
from tests.support.waiting import wait_until


@pytest.mark.parametrize(
    "limits",
    [
        [("global", 3), ("consumer", 1)],
        [("consumer", 1), ("global", 3)],
        [("global", 1), ("consumer", 5)],
        [("global", 2), ("consumer", 3)],
        [("consumer", 3), ("global", 2)],
        [("consumer", 2)],
        [("global", 3)],
    ],
    ids=str,
)
async def test_per_consumer_and_global_prefetch_combine_as_on_rabbitmq_3_10(
    url: str, limits: list[tuple[str, int]]
) -> None:
    async def scenario(broker: Side) -> None:
        channel = await broker.channel()
        queues = [broker.name("one"), broker.name("two")]
        consuming = await broker.channel()
        for kind, count in limits:
            await consuming.qos(count, global_=kind == "global")
        got: dict[str, list[Delivery]] = {}
        for queue in queues:
            await channel.queue_declare(queue)
            for n in range(4):
                await channel.publish(str(n).encode(), routing_key=queue)
            got[queue] = []
            await consuming.consume(queue, got[queue].append)
        await wait_until(lambda: any(got.values()), 10, "a delivery")
        await broker.settle_down()
        broker.note([len(got[queue]) for queue in queues])
        got[queues[0]][0].ack()
        await broker.settle_down()
        # Which queue gets a freed channel-wide slot is random on RabbitMQ: count both.
        broker.note(sum(len(got[queue]) for queue in queues))

    await compare(url, scenario)
