"""Consuming from the in-memory broker: order, prefetch, round-robin, settling, requeues."""

import asyncio

import pytest

from leveret.amqp import Delivery, Properties
from leveret.exceptions import (
    AccessRefusedError,
    ChannelClosedError,
    DeliveryError,
    NotFoundError,
)
from leveret.testing import MemoryBroker, MemoryChannel, MemoryConnection
from tests.support.waiting import wait_until
from tests.testing.conftest import Collector, publish_all


async def test_deliveries_arrive_in_order_on_a_later_loop_turn_never_inside_publish(
    leveret_channel: MemoryChannel,
) -> None:
    await leveret_channel.queue_declare("q")
    seen = Collector()
    await leveret_channel.consume("q", seen, no_ack=True)
    await leveret_channel.publish(b"0", routing_key="q", confirm=False)
    assert seen.bodies == []  # an unconfirmed publish returns before anything is delivered
    for n in range(1, 50):
        await leveret_channel.publish(str(n).encode(), routing_key="q", confirm=False)
    await seen.wait_for(50)
    assert seen.bodies == [str(n).encode() for n in range(50)]
    first = seen.deliveries[0]
    assert isinstance(first, Delivery) and first.channel is leveret_channel
    assert (first.exchange, first.routing_key, first.redelivered) == ("", "q", False)


async def test_delivery_headers_are_an_empty_mapping_when_the_message_has_none(
    leveret_channel: MemoryChannel,
) -> None:
    await leveret_channel.queue_declare("q")
    await leveret_channel.publish(b"plain", routing_key="q")
    await leveret_channel.publish(b"with", routing_key="q", headers={"a": 1})
    plain = await leveret_channel.get("q", no_ack=True)
    with_headers = await leveret_channel.get("q", no_ack=True)
    assert plain is not None and plain.properties.headers is None and plain.headers == {}
    assert with_headers is not None and with_headers.headers == {"a": 1}


async def test_a_consumer_gets_no_more_than_its_prefetch_until_it_acks(
    leveret_broker: MemoryBroker, leveret_channel: MemoryChannel
) -> None:
    await leveret_channel.queue_declare("q")
    await publish_all(leveret_channel, "q", *(bytes([n]) for n in range(10)))
    seen = Collector()
    await leveret_channel.consume("q", seen, prefetch_count=3)
    await seen.wait_for(3)
    assert len(seen.deliveries) == 3  # the dispatch that delivered them stopped there
    queue = leveret_broker.queues["q"]
    assert (queue.message_count, queue.unacked_count) == (7, 3)
    seen.deliveries[1].ack()
    await seen.wait_for(4)
    assert seen.bodies == [bytes([n]) for n in range(4)]


async def test_a_global_qos_limits_the_whole_channel(
    leveret_broker: MemoryBroker, leveret_channel: MemoryChannel
) -> None:
    for queue in ("a", "b"):
        await leveret_channel.queue_declare(queue)
        await publish_all(leveret_channel, queue, b"1", b"2", b"3")
    await leveret_channel.qos(2, global_=True)
    seen = Collector()
    await leveret_channel.consume("a", seen)
    await seen.wait_for(2)
    await leveret_channel.consume("b", seen)  # its first dispatch runs before this returns
    assert len(seen.deliveries) == 2
    assert leveret_broker.queues["b"].message_count == 3
    seen.deliveries[0].ack()
    await seen.wait_for(3)


async def test_consumers_of_a_queue_take_turns(
    leveret_channel: MemoryChannel, other_connection: MemoryConnection
) -> None:
    await leveret_channel.queue_declare("q")
    first, second = Collector(lambda d: d.ack()), Collector(lambda d: d.ack())
    await leveret_channel.consume("q", first)
    await (await other_connection.channel()).consume("q", second)
    await publish_all(leveret_channel, "q", *(bytes([n]) for n in range(10)))
    await second.wait_for(5)
    await first.wait_for(5)
    assert first.bodies == [bytes([n]) for n in range(0, 10, 2)]
    assert second.bodies == [bytes([n]) for n in range(1, 10, 2)]


async def test_requeued_messages_come_back_first_in_their_old_places_marked_redelivered(
    leveret_channel: MemoryChannel,
) -> None:
    await leveret_channel.queue_declare("q")
    await publish_all(leveret_channel, "q", b"0", b"1", b"2", b"3")
    held = [d for d in [await leveret_channel.get("q") for _ in range(3)] if d is not None]
    assert [d.message_count for d in held] == [3, 2, 1]
    held[1].nack(requeue=True)
    held[0].reject(requeue=True)
    order = []
    while (delivery := await leveret_channel.get("q", no_ack=True)) is not None:
        order.append((delivery.body, delivery.redelivered))
    assert order == [(b"0", True), (b"1", True), (b"3", False)]
    held[2].ack()


async def test_a_second_settle_raises_delivery_error_and_no_ack_deliveries_cannot_be_settled(
    leveret_channel: MemoryChannel,
) -> None:
    await leveret_channel.queue_declare("q")
    await publish_all(leveret_channel, "q", b"0", b"1")
    delivery = await leveret_channel.get("q")
    assert delivery is not None
    delivery.ack()
    with pytest.raises(DeliveryError, match="already settled \\(ack\\); a second nack"):
        delivery.nack()
    automatic = await leveret_channel.get("q", no_ack=True)
    assert automatic is not None and automatic.settled == "auto"
    with pytest.raises(DeliveryError, match="consumed with no_ack=True"):
        automatic.ack()
    assert leveret_channel.is_open


async def test_closing_a_channel_requeues_its_unacked_deliveries_in_order(
    leveret_broker: MemoryBroker, leveret_connection: MemoryConnection
) -> None:
    channel = await leveret_connection.channel()
    await channel.queue_declare("q")
    await publish_all(channel, "q", b"0", b"1", b"2")
    seen = Collector()
    await channel.consume("q", seen)
    await seen.wait_for(3)
    seen.deliveries[1].ack()
    await channel.close()
    with pytest.raises(DeliveryError, match="closed after delivery"):
        seen.deliveries[0].ack()
    other = await leveret_connection.channel()
    again = [await other.get("q", no_ack=True) for _ in range(2)]
    assert [(d.body, d.redelivered) for d in again if d] == [(b"0", True), (b"2", True)]
    assert leveret_broker.queues["q"].consumer_count == 0


async def test_a_cancelled_consumer_keeps_its_unacked_deliveries_until_settled(
    leveret_broker: MemoryBroker, leveret_channel: MemoryChannel
) -> None:
    await leveret_channel.queue_declare("q")
    await publish_all(leveret_channel, "q", b"0", b"1")
    seen = Collector()
    tag = await leveret_channel.consume("q", seen, prefetch_count=1)
    await seen.wait_for(1)
    await leveret_channel.cancel(tag)
    queue = leveret_broker.queues["q"]
    assert (queue.message_count, queue.unacked_count, queue.consumer_count) == (1, 1, 0)
    seen.deliveries[0].nack(requeue=True)
    assert (queue.message_count, queue.unacked_count) == (2, 0)
    await leveret_channel.cancel(tag)  # unknown tags are ignored


async def test_async_callbacks_run_as_tasks_of_the_channel(leveret_channel: MemoryChannel) -> None:
    await leveret_channel.queue_declare("q")
    done = asyncio.Event()

    async def handle(delivery: Delivery) -> None:
        await asyncio.sleep(0)
        delivery.ack()
        done.set()

    await leveret_channel.consume("q", handle)
    await leveret_channel.publish(b"x", routing_key="q")
    await asyncio.wait_for(done.wait(), 2)


async def test_exclusive_consumers_keep_others_out(leveret_connection: MemoryConnection) -> None:
    channel = await leveret_connection.channel()
    await channel.queue_declare("q")
    await channel.consume("q", lambda d: None, exclusive=True)
    with pytest.raises(AccessRefusedError, match="queue 'q' in vhost '/' in exclusive use"):
        await (await leveret_connection.channel()).consume("q", lambda d: None)
    await channel.queue_declare("r")
    await channel.consume("r", lambda d: None)
    with pytest.raises(AccessRefusedError, match="in exclusive use"):
        await (await leveret_connection.channel()).consume("r", lambda d: None, exclusive=True)


async def test_consuming_a_missing_queue_raises_not_found(
    leveret_connection: MemoryConnection,
) -> None:
    channel = await leveret_connection.channel()
    with pytest.raises(NotFoundError, match="no queue 'nope'") as info:
        await channel.consume("nope", lambda d: None)
    assert info.value.method == "basic.consume" and channel.is_closed


async def test_iterate_hands_out_deliveries_and_requeues_the_rest_on_exit(
    leveret_broker: MemoryBroker, leveret_channel: MemoryChannel
) -> None:
    await leveret_channel.queue_declare("q")
    await publish_all(leveret_channel, "q", b"0", b"1", b"2")
    async with leveret_channel.iterate("q") as deliveries:
        async for delivery in deliveries:
            delivery.ack()
            break  # the other two arrived in its buffer with the first
    assert leveret_broker.queues["q"].message_count == 2


async def test_a_consumer_that_always_requeues_does_not_starve_the_loop(
    leveret_channel: MemoryChannel,
) -> None:
    await leveret_channel.queue_declare("q")
    seen = Collector(lambda d: d.nack(requeue=True))
    await leveret_channel.consume("q", seen)
    await leveret_channel.publish(b"x", routing_key="q")
    await seen.wait_for(20)  # other coroutines (this one) keep running meanwhile
    assert all(d.redelivered for d in seen.deliveries[1:])


async def test_a_callback_that_raises_is_logged_and_its_delivery_stays_unacked(
    leveret_broker: MemoryBroker,
    leveret_channel: MemoryChannel,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await leveret_channel.queue_declare("q")
    delivered = asyncio.Event()

    def broken(delivery: Delivery) -> None:
        delivered.set()
        raise RuntimeError("bug in the consumer")

    await leveret_channel.consume("q", broken)
    await leveret_channel.publish(b"x", routing_key="q")
    await asyncio.wait_for(delivered.wait(), 2)
    assert "callback failed" in caplog.text and "bug in the consumer" in caplog.text
    assert leveret_broker.queues["q"].unacked_count == 1


async def test_a_forged_delivery_tag_closes_the_channel_as_rabbitmq_closes_it(
    leveret_channel: MemoryChannel,
) -> None:
    await leveret_channel.queue_declare("q")
    await leveret_channel.publish(b"x", routing_key="q")
    real = await leveret_channel.get("q")
    assert real is not None
    forged = Delivery(
        real._settler, b"x", Properties(), real.delivery_tag + 100, "", "q", False, None, False
    )
    forged.ack()
    await wait_until(lambda: leveret_channel.is_closed, 2, "the channel to close")
    with pytest.raises(
        ChannelClosedError, match="406 PRECONDITION_FAILED - unknown delivery tag 101"
    ):
        await leveret_channel.queue_declare("q", passive=True)


async def test_a_message_handed_to_a_consumer_cancelled_before_it_ran_goes_back(
    leveret_broker: MemoryBroker, leveret_channel: MemoryChannel
) -> None:
    await leveret_channel.queue_declare("q")
    got = Collector()
    tag = await leveret_channel.consume("q", got)
    publisher = await leveret_channel.connection.channel(publisher_confirms=False)
    await publisher.publish(b"x", routing_key="q")  # handed straight to the waiting consumer
    await leveret_channel.cancel(tag)  # before its callback's loop turn came
    await wait_until(lambda: leveret_broker.queues["q"].message_count == 1, 2, "it to go back")
    assert got.deliveries == []
    assert leveret_broker.queues["q"].unacked_count == 0


async def test_a_transaction_open_when_its_channel_closes_is_rolled_back(
    leveret_broker: MemoryBroker, leveret_connection: MemoryConnection
) -> None:
    channel = await leveret_connection.channel(publisher_confirms=False)
    await channel.queue_declare("q")
    await channel.publish(b"held", routing_key="q")
    await channel.tx_select()
    delivery = await channel.get("q")
    assert delivery is not None
    delivery.ack()  # not committed
    await channel.publish(b"never", routing_key="q")  # not committed
    await channel.close()
    (message,) = leveret_broker.queues["q"].messages()
    assert (message.body, message.redelivered) == (b"held", True)
