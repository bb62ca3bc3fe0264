"""Single active consumer and consumer priorities: the same on both brokers."""

from __future__ import annotations

from typing import Any

import pytest

from leveret.amqp import Delivery
from tests.differential.harness import Side, compare
from tests.support.waiting import wait_until


def _shown(deliveries: list[Delivery]) -> list[tuple[bytes, bool]]:
    return [(d.body, d.redelivered) for d in deliveries]


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_one_consumer_is_active_and_the_next_takes_over_with_the_unacked_messages(
    url: str, queue_type: str
) -> None:
    async def scenario(broker: Side) -> None:
        channel = await broker.channel()
        queue = broker.name("leader")
        arguments = {"x-single-active-consumer": True, "x-queue-type": queue_type}
        await channel.queue_declare(queue, durable=True, arguments=arguments)
        first, second = await broker.channel(), await broker.channel()
        got_first: list[Delivery] = []
        got_second: list[Delivery] = []
        tag = await first.consume(queue, got_first.append, prefetch_count=10)
        # A higher priority does not make a later consumer the active one.
        await second.consume(
            queue, got_second.append, prefetch_count=10, arguments={"x-priority": 10}
        )
        for body in (b"0", b"1", b"2"):
            await channel.publish(body, routing_key=queue)
        await wait_until(lambda: len(got_first) == 3, 10, "the active consumer's three")
        broker.note("active", _shown(got_first), "waiting", _shown(got_second))
        await first.cancel(tag)  # its three stay unacked on its channel
        await channel.publish(b"3", routing_key=queue)
        await wait_until(lambda: got_second, 10, "the new active consumer's first")
        broker.note("after cancel", _shown(got_second))
        await first.close()  # now they are requeued, to the new active consumer
        await wait_until(lambda: len(got_second) == 4, 10, "the requeued three")
        broker.note("after close", _shown(got_second))

    assert await compare(url, scenario) == [
        ("active", [(b"0", False), (b"1", False), (b"2", False)], "waiting", []),
        ("after cancel", [(b"3", False)]),
        ("after close", [(b"3", False), (b"0", True), (b"1", True), (b"2", True)]),
    ]


async def test_the_highest_priority_consumer_with_room_gets_the_messages(url: str) -> None:
    async def scenario(broker: Side) -> None:
        channel = await broker.channel()
        queue = broker.name("prioritised")
        await channel.queue_declare(queue)
        low_channel, high_channel = await broker.channel(), await broker.channel()
        low: list[Delivery] = []
        high: list[Delivery] = []
        await low_channel.consume(queue, low.append, prefetch_count=1)
        await high_channel.consume(
            queue, high.append, prefetch_count=2, arguments={"x-priority": 5}
        )
        for body in (b"0", b"1", b"2", b"3", b"4"):
            await channel.publish(body, routing_key=queue)
        await wait_until(lambda: len(low) + len(high) == 3, 10, "three deliveries")
        broker.note("high", [d.body for d in high], "low", [d.body for d in low])
        high[0].ack()
        await wait_until(lambda: len(high) == 3, 10, "the high one's next")
        broker.note("high", [d.body for d in high], "low", [d.body for d in low])

    assert await compare(url, scenario) == [
        ("high", [b"0", b"1"], "low", [b"2"]),
        ("high", [b"0", b"1", b"3"], "low", [b"2"]),
    ]


async def test_invalid_consumer_priorities_and_single_active_flags_are_refused(
    url: str,
) -> None:
    async def scenario(broker: Side) -> None:
        queue = broker.name("q")
        channel = await broker.channel()
        await channel.queue_declare(queue)
        priority: Any
        for priority in ("high", 1.5, True):
            channel = await broker.channel()
            await broker.attempt(
                f"x-priority {priority!r}",
                channel.consume(queue, lambda _: None, arguments={"x-priority": priority}),
            )
        for flag in ("yes", 1):
            channel = await broker.channel()
            await broker.attempt(
                f"x-single-active-consumer {flag!r}",
                channel.queue_declare(
                    broker.name("sac"), arguments={"x-single-active-consumer": flag}
                ),
            )

    def refused(arg: str, detail: str, queue: str = "q") -> tuple[Any, ...]:
        return (
            406,
            f"PRECONDITION_FAILED - invalid arg '{arg}' for queue '{queue}' in vhost '/': "
            + detail,
            "channel",
        )

    assert await compare(url, scenario) == [
        ("x-priority 'high'", *refused("x-priority", '"expected integer, got longstr"')),
        ("x-priority 1.5", *refused("x-priority", '"expected integer, got double"')),
        ("x-priority True", *refused("x-priority", '"expected integer, got bool"')),
        (
            "x-single-active-consumer 'yes'",
            *refused("x-single-active-consumer", "{unacceptable_type,longstr}", "sac"),
        ),
        (
            "x-single-active-consumer 1",
            *refused("x-single-active-consumer", "{unacceptable_type,signedint}", "sac"),
        ),
    ]
