"""Queue behaviour: priorities, length limits, hand-off, requeue positions, expiry, counts."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from leveret.amqp import Delivery
from leveret.patterns import Master, dead_letter_queue
from tests.differential.harness import Side, compare
from tests.support.waiting import wait_until


async def _bodies(broker: Side, channel: Any, queue: str) -> list[tuple[bytes, bool]]:
    return [(d.body, d.redelivered) for d in await broker.get_all(channel, queue)]


async def test_a_priority_queue_delivers_the_highest_priority_first(url: str) -> None:
    async def scenario(broker: Side) -> None:
        channel = await broker.channel()
        queue = broker.name("prioritised")
        await channel.queue_declare(queue, arguments={"x-max-priority": 5})
        for body, priority in [(b"none", None), (b"p1", 1), (b"p9", 9), (b"p5", 5), (b"p1b", 1)]:
            await channel.publish(body, routing_key=queue, priority=priority)
        consumer = await broker.channel()
        got: list[Delivery] = []
        await consumer.consume(queue, got.append, prefetch_count=10)
        await wait_until(lambda: len(got) == 5, 10, "five deliveries")
        broker.note("order", [(d.body, d.properties.priority) for d in got])
        got[0].nack(requeue=True)
        got[3].nack(requeue=True)
        await wait_until(lambda: len(got) == 7, 10, "the two requeued")
        broker.note("requeued", [(d.body, d.redelivered) for d in got[5:]])

    assert await compare(url, scenario) == [
        ("order", [(b"p9", 9), (b"p5", 5), (b"p1", 1), (b"p1b", 1), (b"none", None)]),
        ("requeued", [(b"p9", True), (b"p1b", True)]),
    ]


async def test_a_task_created_with_a_priority_overtakes_waiting_ones(url: str) -> None:
    async def scenario(broker: Side) -> None:
        channel = await broker.channel()
        queue = broker.name("tasks")
        broker.track(dead_letter_queue(queue))
        await channel.queue_declare(queue, durable=True, arguments={"x-max-priority": 10})
        master = Master(channel)
        for n in range(3):
            await master.create_task(queue, {"n": n})
        await master.create_task(queue, {"n": "urgent"}, priority=9)
        done: list[object] = []
        worker = await master.create_worker(
            queue, lambda *, n: done.append(n), durable=True, arguments={"x-max-priority": 10}
        )
        await wait_until(lambda: len(done) == 4, 10, "four tasks")
        await worker.close()
        broker.note(done)

    assert await compare(url, scenario) == [["urgent", 0, 1, 2]]


@pytest.mark.parametrize("overflow", ["drop-head", "reject-publish"])
async def test_x_max_length_bytes_counts_the_bodies(url: str, overflow: str) -> None:
    async def scenario(broker: Side) -> None:
        channel = await broker.channel()
        queue = broker.name("bytes")
        await channel.queue_declare(
            queue, arguments={"x-max-length-bytes": 5, "x-overflow": overflow}
        )
        for body in (b"1234567890", b"ab", b"cd", b"ef"):
            await broker.attempt(body.decode(), channel.publish(body, routing_key=queue))
        broker.note(await _bodies(broker, channel, queue))

    record = await compare(url, scenario)
    if overflow == "drop-head":
        assert record[-1] == [(b"cd", False), (b"ef", False)]
    else:
        assert record == [
            ("1234567890", "PublishNackedError"),
            ("ab", "ok"),
            ("cd", "ok"),
            ("ef", "PublishNackedError"),
            [(b"ab", False), (b"cd", False)],
        ]


async def test_a_message_refused_by_reject_publish_dlx_is_dead_lettered(url: str) -> None:
    async def scenario(broker: Side) -> None:
        channel = await broker.channel()
        queue, dead = broker.name("full"), broker.name("dead")
        await channel.queue_declare(dead)
        await channel.queue_declare(
            queue,
            arguments={
                "x-max-length": 1,
                "x-overflow": "reject-publish-dlx",
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": dead,
            },
        )
        for body in (b"a", b"b"):
            await broker.attempt(body.decode(), channel.publish(body, routing_key=queue))
        await broker.ready(channel, dead, 1)
        (letter,) = await broker.get_all(channel, dead)
        broker.note(letter.body, letter.headers["x-death"][0]["reason"])

    assert await compare(url, scenario) == [
        ("a", "ok"),
        ("b", "PublishNackedError"),
        (b"b", "maxlen"),
    ]


@pytest.mark.parametrize(
    "arguments",
    [
        {"x-max-length": 1},
        {"x-max-length": 0},
        {"x-message-ttl": 0},
        {"x-max-length": 1, "x-overflow": "reject-publish"},
    ],
    ids=["max-length-1", "max-length-0", "ttl-0", "reject-publish"],
)
async def test_a_waiting_consumer_gets_messages_before_length_limits_or_ttl_0_apply(
    url: str, arguments: dict[str, Any]
) -> None:
    async def scenario(broker: Side) -> None:
        channel = await broker.channel()
        queue = broker.name("handoff")
        await channel.queue_declare(queue, arguments=arguments)
        consumer = await broker.channel()
        got: list[Delivery] = []
        await consumer.consume(queue, got.append, prefetch_count=10)
        results = await asyncio.gather(
            *(channel.publish(str(n).encode(), routing_key=queue) for n in range(3)),
            return_exceptions=True,
        )
        await wait_until(lambda: len(got) == 3, 10, "three deliveries")
        broker.note([d.body for d in got], [type(r).__name__ for r in results])

    assert await compare(url, scenario) == [
        ([b"0", b"1", b"2"], ["NoneType", "NoneType", "NoneType"])
    ]


@pytest.mark.parametrize("overflow", ["drop-head", "reject-publish"])
async def test_a_requeue_over_the_length_limit_drops_from_the_head_under_drop_head(
    url: str, overflow: str
) -> None:
    async def scenario(broker: Side) -> None:
        channel = await broker.channel()
        queue = broker.name("limited")
        await channel.queue_declare(queue, arguments={"x-max-length": 2, "x-overflow": overflow})
        for body in (b"0", b"1"):
            await channel.publish(body, routing_key=queue)
        delivery = await channel.get(queue)
        await channel.publish(b"2", routing_key=queue)
        delivery.nack(requeue=True)
        await broker.settle_down()
        broker.note(await _bodies(broker, channel, queue))

    record = await compare(url, scenario)
    if overflow == "drop-head":
        assert record == [[(b"1", False), (b"2", False)]]
    else:
        assert record == [[(b"0", True), (b"1", False), (b"2", False)]]


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_a_nacked_message_goes_back_to_its_place_or_to_the_back_on_quorum_queues(
    url: str, queue_type: str
) -> None:
    async def scenario(broker: Side) -> None:
        channel = await broker.channel()
        queue = broker.name("requeue")
        await channel.queue_declare(queue, durable=True, arguments={"x-queue-type": queue_type})
        for body in (b"0", b"1", b"2", b"3"):
            await channel.publish(body, routing_key=queue)
        consumer = await broker.channel()
        got: list[Delivery] = []
        await consumer.consume(queue, got.append, prefetch_count=2)
        await wait_until(lambda: len(got) == 2, 10, "two deliveries")
        got[0].nack(requeue=True)
        await wait_until(lambda: len(got) == 3, 10, "the next delivery")
        broker.note("after nack", [(d.body, d.redelivered) for d in got])
        await consumer.close()  # the two unacked go back to their places
        broker.note("left", [body for body, _ in await _bodies(broker, channel, queue)])

    record = await compare(url, scenario)
    if queue_type == "classic":
        assert record == [
            ("after nack", [(b"0", False), (b"1", False), (b"0", True)]),
            ("left", [b"0", b"1", b"2", b"3"]),
        ]
    else:
        assert record == [
            ("after nack", [(b"0", False), (b"1", False), (b"2", False)]),
            ("left", [b"1", b"2", b"3", b"0"]),
        ]


async def test_topic_edge_cases_match_as_on_rabbitmq(url: str) -> None:
    patterns = ["*", "#", "*.#", "#.*", "", "a", "a.*", "#.a", "a.#.b", "*.*"]
    keys = ["", "a", "a.b", "a..b", ".", "b.a", "a.x.b"]

    async def scenario(broker: Side) -> None:
        channel = await broker.channel()
        topic = broker.exchange("topic")
        await channel.exchange_declare(topic, "topic")
        queues = {}
        for index, pattern in enumerate(patterns):
            queues[pattern] = broker.name(f"q{index}")
            await channel.queue_declare(queues[pattern])
            await channel.queue_bind(queues[pattern], topic, pattern)
        for key in keys:
            await channel.publish(key.encode(), exchange=topic, routing_key=key)
        await broker.settle_down()
        for pattern in patterns:
            bodies = [body for body, _ in await _bodies(broker, channel, queues[pattern])]
            broker.note(pattern, bodies)

    assert dict(await compare(url, scenario)) == {
        "*": [b"a"],
        "#": [b"", b"a", b"a.b", b"a..b", b".", b"b.a", b"a.x.b"],
        "*.#": [b"a", b"a.b", b"a..b", b".", b"b.a", b"a.x.b"],
        "#.*": [b"a", b"a.b", b"a..b", b".", b"b.a", b"a.x.b"],
        "": [b""],
        "a": [b"a"],
        "a.*": [b"a.b"],
        "#.a": [b"a", b"b.a"],
        "a.#.b": [b"a.b", b"a..b", b"a.x.b"],
        "*.*": [b"a.b", b".", b"b.a"],
    }


async def test_headers_exchanges_match_all_or_any_as_on_rabbitmq(url: str) -> None:
    messages: list[dict[str, Any]] = [
        {"a": 1, "b": "x"},
        {"a": 1},
        {"a": "1", "b": "x"},
        {"c": 5},
        {"d": 1},
        {"d": True},
        {"a": 1.0, "b": "x"},
        {"a": 1, "b": b"x"},
    ]

    async def scenario(broker: Side) -> None:
        channel = await broker.channel()
        headers = broker.exchange("headers")
        await channel.exchange_declare(headers, "headers")
        every, either = broker.name("all"), broker.name("any")
        await channel.queue_declare(every)
        await channel.queue_declare(either)
        await channel.queue_bind(every, headers, arguments={"a": 1, "b": "x"})
        await channel.queue_bind(
            either, headers, arguments={"x-match": "any", "c": None, "d": True}
        )
        for index, message in enumerate(messages):
            await channel.publish(
                str(index).encode(), exchange=headers, routing_key="", headers=message
            )
        await broker.settle_down()
        for queue in (every, either):
            broker.note(queue, [body for body, _ in await _bodies(broker, channel, queue)])
        channel = await broker.channel()
        await broker.attempt(
            "bad x-match", channel.queue_bind(every, headers, arguments={"x-match": "some"})
        )

    assert await compare(url, scenario) == [
        ("all", [b"0", b"6", b"7"]),
        ("any", [b"3", b"5"]),
        (
            "bad x-match",
            406,
            'PRECONDITION_FAILED - Invalid x-match field value <<"some">>; expected all, any, '
            "all-with-x, or any-with-x",
            "channel",
        ),
    ]


async def test_cc_and_bcc_headers_route_to_more_queues_and_bcc_is_removed(url: str) -> None:
    async def scenario(broker: Side) -> None:
        channel = await broker.channel()
        main, copy, blind = broker.name("main"), broker.name("copy"), broker.name("blind")
        for queue in (main, copy, blind):
            await channel.queue_declare(queue)
        await channel.publish(b"m", routing_key=main, headers={"CC": [copy], "BCC": [blind]})
        await broker.settle_down()
        for queue in (main, copy, blind):
            (delivery,) = await broker.get_all(channel, queue)
            broker.note(queue, delivery.routing_key, sorted(delivery.headers))

    assert await compare(url, scenario) == [
        ("main", "main", ["CC"]),
        ("copy", "main", ["CC"]),
        ("blind", "main", ["CC"]),
    ]


async def test_get_ok_counts_what_is_left_after_expired_messages_went(url: str) -> None:
    async def scenario(broker: Side) -> None:
        channel = await broker.channel()
        queue = broker.name("counted")
        await channel.queue_declare(queue)
        await channel.publish(b"a", routing_key=queue, expiration=1)
        for body in (b"b", b"c"):
            await channel.publish(body, routing_key=queue)

        async def b_first() -> Delivery | None:
            delivery: Delivery | None = await channel.get(queue)
            if delivery is not None and delivery.body == b"a":
                delivery.nack(requeue=True)  # not expired yet: try again
                return None
            return delivery

        first = await wait_until(b_first, 10, "the expired message to go")
        broker.note(first.body, first.message_count)
        first.ack()
        second = await channel.get(queue, no_ack=True)
        broker.note(second.body, second.message_count)

    assert await compare(url, scenario) == [(b"b", 1), (b"c", 0)]


async def test_an_unused_queue_goes_after_x_expires(url: str) -> None:
    async def scenario(broker: Side) -> None:
        channel = await broker.channel(publisher_confirms=True)
        queue = broker.name("short-lived")
        await channel.queue_declare(queue, arguments={"x-expires": 200})

        async def gone() -> bool:
            # A publish does not count as use; a mandatory one comes back once it is gone.
            try:
                await channel.publish(b"?", routing_key=queue, mandatory=True)
            except Exception as error:  # MessageReturnedError
                return type(error).__name__ == "MessageReturnedError"
            return False

        broker.note("gone", await wait_until(gone, 10, "the queue to expire"))

    assert await compare(url, scenario) == [("gone", True)]
