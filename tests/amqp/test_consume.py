"""Consumers: callbacks, iterators, qos, settling, cancellation and direct reply-to."""

import asyncio

import pytest

from leveret.amqp import Channel, Connection, Delivery, connect
from leveret.exceptions import AMQPError, ConsumerCancelledError, DeliveryError
from tests.support.waiting import wait_until


async def _publish(channel: Channel, queue: str, count: int) -> None:
    await asyncio.gather(*(channel.publish(b"%d" % i, routing_key=queue) for i in range(count)))


async def _ready(channel: Channel, queue: str, count: int) -> bool:
    """Whether ``queue`` holds ``count`` ready messages (unacked ones are not counted)."""
    return (await channel.queue_declare(queue, passive=True)).message_count == count


async def test_sync_callback_receives_every_delivery_in_order(channel: Channel, queue: str) -> None:
    bodies: list[bytes] = []
    done = asyncio.Event()

    def on_delivery(delivery: Delivery) -> None:
        bodies.append(delivery.body)
        delivery.ack()
        if len(bodies) == 500:
            done.set()

    await channel.consume(queue, on_delivery)
    await _publish(channel, queue, 500)
    await asyncio.wait_for(done.wait(), 10)
    assert bodies == [b"%d" % i for i in range(500)]


async def test_async_callback_runs_as_a_task_and_acks(
    connection: Connection, channel: Channel, queue: str
) -> None:
    seen: list[bytes] = []
    consuming = await connection.channel()

    async def on_delivery(delivery: Delivery) -> None:
        await asyncio.sleep(0)
        seen.append(delivery.body)
        delivery.ack()

    await consuming.consume(queue, on_delivery)
    await _publish(channel, queue, 50)
    await wait_until(lambda: len(seen) == 50, 5, "fifty deliveries")
    assert sorted(seen) == sorted(b"%d" % i for i in range(50))
    # A passive declare counts ready messages only, not unacked ones: close the
    # consuming channel, which makes the broker requeue whatever was not acked.
    await consuming.close()
    assert (await channel.queue_declare(queue, passive=True)).message_count == 0


async def test_iterator_yields_deliveries_and_requeues_the_unread_on_exit(
    connection: Connection, queue: str
) -> None:
    channel = await connection.channel()
    await channel.qos(10)
    await _publish(channel, queue, 20)
    got = []
    async with channel.iterate(queue) as deliveries:
        async for delivery in deliveries:
            got.append(delivery.body)
            delivery.ack()
            if len(got) == 5:
                break
    assert got == [b"0", b"1", b"2", b"3", b"4"]
    await wait_until(lambda: _ready(channel, queue, 15), 5, "the 15 unread deliveries requeued")


async def test_prefetch_bounds_unacked_deliveries(connection: Connection, queue: str) -> None:
    channel = await connection.channel()
    await channel.qos(5)
    held: list[Delivery] = []
    await channel.consume(queue, held.append)
    await _publish(channel, queue, 20)
    await wait_until(lambda: len(held) == 5, 5, "five deliveries")
    await asyncio.sleep(0.3)  # proves a negative: no sixth arrives while five are unacked
    assert len(held) == 5
    for delivery in held[:]:
        delivery.ack()
    await wait_until(lambda: len(held) == 10, 5, "five more deliveries after the acks")
    await asyncio.sleep(0.3)  # proves a negative: no eleventh arrives
    assert len(held) == 10


async def test_second_ack_raises_locally_and_the_channel_stays_open(
    channel: Channel, queue: str
) -> None:
    await channel.publish(b"once", routing_key=queue)
    delivery = await channel.get(queue)
    assert delivery is not None
    delivery.ack()
    with pytest.raises(DeliveryError, match="already settled"):
        delivery.ack()
    with pytest.raises(DeliveryError, match="already settled"):
        delivery.nack()
    await channel.publish(b"still fine", routing_key=queue)
    assert channel.is_open


async def test_no_ack_deliveries_cannot_be_acked(channel: Channel, queue: str) -> None:
    await channel.publish(b"x", routing_key=queue)
    delivery = await channel.get(queue, no_ack=True)
    assert delivery is not None
    with pytest.raises(DeliveryError, match="no_ack"):
        delivery.ack()


async def test_coalesced_acks_never_cover_an_unfinished_delivery(amqp_url: str, queue: str) -> None:
    async with await connect(amqp_url) as conn:
        channel = await conn.channel()
        held: list[Delivery] = []
        all_held = asyncio.Event()

        def hold(delivery: Delivery) -> None:
            held.append(delivery)
            if len(held) == 10:
                all_held.set()

        await channel.consume(queue, hold)
        await _publish(channel, queue, 10)
        await asyncio.wait_for(all_held.wait(), 5)
        for delivery in held:
            if delivery.body != b"4":
                delivery.ack()
        # Closing flushes the acks: no sleep, so a close that dropped them would fail here.
    async with await connect(amqp_url) as conn:
        channel = await conn.channel()
        left = await channel.get(queue)
        assert left is not None and left.body == b"4" and left.redelivered
        left.ack()
        assert await channel.get(queue) is None


async def test_nack_requeues_and_reject_drops(channel: Channel, queue: str) -> None:
    await channel.publish(b"again", routing_key=queue)
    first = await channel.get(queue)
    assert first is not None
    first.nack(requeue=True)
    second = await channel.get(queue)
    assert second is not None and second.redelivered and second.body == b"again"
    second.reject(requeue=False)
    assert await channel.get(queue) is None


async def test_deliveries_after_cancel_go_back_to_the_queue(channel: Channel, queue: str) -> None:
    received: list[Delivery] = []
    tag = await channel.consume(queue, received.append)
    await channel.cancel(tag)
    await _publish(channel, queue, 10)
    await asyncio.sleep(0.1)  # proves a negative: nothing reaches the cancelled consumer
    assert received == []
    assert (await channel.queue_declare(queue, passive=True)).message_count == 10


async def test_broker_cancel_reaches_the_callback_owner(
    connection: Connection, unique: str
) -> None:
    channel = await connection.channel()
    await channel.queue_declare(unique)
    cancelled: list[ConsumerCancelledError] = []
    await channel.consume(unique, lambda d: None, on_cancel=cancelled.append)
    await (await connection.channel()).queue_delete(unique)
    await wait_until(lambda: cancelled, 5, "the broker's cancel")
    assert unique in str(cancelled[0])


async def test_broker_cancel_ends_an_iterator_with_an_error(
    connection: Connection, unique: str
) -> None:
    channel = await connection.channel()
    await channel.queue_declare(unique)

    async def read_all() -> None:
        async with channel.iterate(unique) as deliveries:
            async for _ in deliveries:
                pass

    reader = asyncio.create_task(read_all())
    other = await connection.channel()

    async def consumed() -> bool:
        return (await other.queue_declare(unique, passive=True)).consumer_count == 1

    await wait_until(consumed, 5, "the iterator to consume")
    await other.queue_delete(unique)
    with pytest.raises(ConsumerCancelledError, match="cancelled"):
        await asyncio.wait_for(reader, 5)


async def test_direct_reply_to_round_trip(connection: Connection, queue: str) -> None:
    server = await connection.channel()

    async def respond(delivery: Delivery) -> None:
        await server.publish(
            delivery.body.upper(),
            routing_key=delivery.properties.reply_to or "",
            correlation_id=delivery.properties.correlation_id,
        )
        delivery.ack()

    await server.consume(queue, respond)
    client = await connection.channel()
    replies: asyncio.Queue[Delivery] = asyncio.Queue()
    await client.consume("amq.rabbitmq.reply-to", replies.put_nowait, no_ack=True)
    await client.publish(
        b"ping", routing_key=queue, reply_to="amq.rabbitmq.reply-to", correlation_id="c1"
    )
    reply = await asyncio.wait_for(replies.get(), 5)
    assert reply.body == b"PING" and reply.properties.correlation_id == "c1"


async def test_a_failing_sync_callback_does_not_stop_the_consumer(
    channel: Channel, queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    ok: list[bytes] = []

    def on_delivery(delivery: Delivery) -> None:
        delivery.ack()
        if delivery.body == b"1":
            raise RuntimeError("user bug")
        ok.append(delivery.body)

    await channel.consume(queue, on_delivery)
    await _publish(channel, queue, 3)
    await wait_until(lambda: len(ok) == 2, 5, "the deliveries after the failing one")
    assert ok == [b"0", b"2"]
    assert "user bug" in caplog.text


@pytest.mark.parametrize("then", ["publish", "declare"])
async def test_an_ack_leaves_before_a_later_frame_the_broker_closes_the_channel_over(
    connection: Connection, channel: Channel, queue: str, unique: str, then: str
) -> None:
    consuming = await connection.channel()
    seen: list[bytes] = []
    refused: list[BaseException] = []

    async def on_delivery(delivery: Delivery) -> None:
        seen.append(delivery.body)
        delivery.ack()
        # In the same loop turn: a frame the broker closes the channel over (404).
        try:
            if then == "publish":
                await consuming.publish(b"", exchange=f"{unique}-missing", routing_key="k")
            else:
                await consuming.exchange_declare(f"{unique}-missing", passive=True)
        except AMQPError as exc:
            refused.append(exc)

    await consuming.consume(queue, on_delivery)
    await channel.publish(b"once", routing_key=queue)
    await wait_until(lambda: refused, 10, "the broker's refusal")
    await wait_until(lambda: consuming.is_closed, 10, "the refused channel closed")

    async def consumer_gone() -> bool:  # the broker requeued what the channel held
        return (await channel.queue_declare(queue, passive=True)).consumer_count == 0

    await wait_until(consumer_gone, 10, "the closed channel's consumer gone")
    assert seen == [b"once"]
    assert (await channel.queue_declare(queue, passive=True)).message_count == 0, (
        "the ack was overtaken and lost: the message is back in the queue"
    )
