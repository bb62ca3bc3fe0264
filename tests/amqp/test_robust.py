"""Robust connections: reconnect by themselves and bring back what was declared on them.

Outages are made with a TCP proxy (``reset()``: the client sees a reset;
``stall()``: silence, and reconnect attempts hang in the handshake until
``resume()``), with ``rabbitmqctl close_connection`` on the shared broker, and by
restarting a private node.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from leveret.amqp import Channel, Delivery, RobustConnection, connect, connect_robust
from leveret.exceptions import (
    ChannelClosedError,
    ConnectionClosedError,
    ConnectionLostError,
    ConsumerCancelledError,
    HeartbeatTimeoutError,
    NotFoundError,
    PublishNotConfirmedError,
)
from tests.support.brokers import PrivateNode
from tests.support.proxy import TCPProxy
from tests.support.rabbitmqctl import close_connection
from tests.support.waiting import wait_until

pytestmark = pytest.mark.faults


async def _connect(url: str, **options: Any) -> RobustConnection:
    """A robust connection that retries fast, so outages in tests stay short."""
    options.setdefault("reconnect_interval", 0.05)
    options.setdefault("max_reconnect_interval", 0.5)
    options.setdefault("connection_timeout", 1)
    return await connect_robust(url, **options)


def _reconnected(conn: RobustConnection) -> asyncio.Event:
    event = asyncio.Event()
    conn.reconnect_callbacks.append(lambda _: event.set())
    return event


def _collector(bodies: list[bytes]) -> Callable[[Delivery], None]:
    def on_delivery(delivery: Delivery) -> None:
        bodies.append(delivery.body)
        delivery.ack()

    return on_delivery


def _outage(proxy: TCPProxy) -> None:
    """Cut the connection; reconnect attempts hang in the handshake until ``resume()``."""
    proxy.stall()
    proxy.reset()


async def _reconnect_attempt(proxy: TCPProxy) -> None:
    """Return once the client noticed the outage and a reconnect attempt reached the proxy.

    (A publish made before the client notices goes out on the dead socket and
    fails with PublishNotConfirmedError; one made after waits for the reconnect.)
    """
    await wait_until(lambda: proxy.connections >= 2, 5, "a reconnect attempt")


@pytest.fixture
async def side_channel(amqp_url: str) -> AsyncIterator[Channel]:
    """A plain channel straight to the broker, to inspect and clean up behind the proxy."""
    conn = await connect(amqp_url)
    try:
        yield await conn.channel()
    finally:
        await conn.close()


async def test_reset_connection_comes_back_with_its_exchange_queue_binding_and_consumer(
    proxy: TCPProxy, side_channel: Channel, unique: str
) -> None:
    exchange, queue = f"{unique}-x", f"{unique}-q"
    conn = await _connect(proxy.url)
    reconnected = _reconnected(conn)
    received: list[bytes] = []
    try:
        channel = await conn.channel()
        await channel.exchange_declare(exchange, "direct")
        await channel.queue_declare(queue)
        await channel.queue_bind(queue, exchange, "jobs")
        await channel.consume(queue, _collector(received))
        await channel.publish(b"before", exchange=exchange, routing_key="jobs")
        await wait_until(lambda: received == [b"before"], 5, "the first delivery")

        _outage(proxy)
        # Only a re-declaration can bring these back.
        await side_channel.queue_delete(queue)
        await side_channel.exchange_delete(exchange)
        proxy.resume()
        await asyncio.wait_for(reconnected.wait(), 10)

        await channel.publish(b"after", exchange=exchange, routing_key="jobs")
        await wait_until(lambda: received == [b"before", b"after"], 5, "delivery after reconnect")
        assert conn.reconnects == 1
    finally:
        await conn.close()
        await side_channel.queue_delete(queue)
        await side_channel.exchange_delete(exchange)


async def test_server_named_queue_gets_a_new_name_reported_after_reconnect(
    proxy: TCPProxy,
) -> None:
    conn = await _connect(proxy.url)
    reconnected = _reconnected(conn)
    renames: list[tuple[str, str]] = []
    conn.queue_renamed_callbacks.append(lambda old, new: renames.append((old, new)))
    received: list[bytes] = []
    routing_key = f"leveret-test-{uuid.uuid4().hex[:12]}"
    try:
        channel = await conn.channel()
        old = (await channel.queue_declare("", exclusive=True)).queue
        await channel.queue_bind(old, "amq.direct", routing_key)
        await channel.consume(old, _collector(received))

        proxy.reset()
        await asyncio.wait_for(reconnected.wait(), 10)

        assert len(renames) == 1 and renames[0][0] == old
        new = renames[0][1]
        assert new.startswith("amq.gen-") and new != old
        # The binding and the consumer followed the queue to its new name.
        await channel.publish(b"to the new queue", exchange="amq.direct", routing_key=routing_key)
        await wait_until(lambda: received == [b"to the new queue"], 5, "delivery to the new queue")
        assert (await channel.queue_declare(new, passive=True)).consumer_count == 1
    finally:
        await conn.close()


async def test_prefetch_limit_is_restored_after_reconnect(
    proxy: TCPProxy, side_channel: Channel, unique: str
) -> None:
    conn = await _connect(proxy.url)
    reconnected = _reconnected(conn)
    held: list[Delivery] = []
    try:
        channel = await conn.channel()
        await channel.qos(2)
        await channel.queue_declare(unique)
        await channel.consume(unique, held.append)

        proxy.reset()
        await asyncio.wait_for(reconnected.wait(), 10)
        for i in range(5):
            await channel.publish(b"%d" % i, routing_key=unique)

        async def ready() -> int:
            return (await side_channel.queue_declare(unique, passive=True)).message_count

        # Two unacked deliveries at a time: two held, three wait in the queue.
        await wait_until(lambda: len(held) == 2, 5, "two deliveries")
        assert await ready() == 3
        for delivery in held:
            delivery.ack()
        await wait_until(lambda: len(held) == 4, 5, "two more deliveries")
        assert await ready() == 1
    finally:
        await conn.close()
        await side_channel.queue_delete(unique)


async def test_stall_longer_than_two_heartbeats_reconnects_once_the_network_resumes(
    proxy: TCPProxy, side_channel: Channel, unique: str
) -> None:
    conn = await _connect(proxy.url, heartbeat=1)
    reconnected = _reconnected(conn)
    received: list[bytes] = []
    try:
        channel = await conn.channel()
        await channel.queue_declare(unique)
        await channel.consume(unique, _collector(received))

        proxy.stall()
        with pytest.raises(PublishNotConfirmedError) as info:
            await asyncio.wait_for(channel.publish(b"stalled", routing_key=unique), 4)
        assert isinstance(info.value.__cause__, HeartbeatTimeoutError)
        proxy.resume()
        await asyncio.wait_for(reconnected.wait(), 10)

        await channel.publish(b"after", routing_key=unique)
        # The stalled publish may or may not have reached the broker: it was not confirmed.
        await wait_until(lambda: b"after" in received, 10, "delivery after reconnect")
    finally:
        await conn.close()
        await side_channel.queue_delete(unique)


async def test_broker_forced_close_is_followed_by_a_reconnect(
    amqp_url: str, side_channel: Channel, unique: str
) -> None:
    name = f"leveret-robust-{uuid.uuid4().hex[:8]}"
    conn = await _connect(amqp_url, name=name)
    reconnected = _reconnected(conn)
    received: list[bytes] = []
    try:
        channel = await conn.channel()
        await channel.queue_declare(unique)
        await channel.consume(unique, _collector(received))

        await asyncio.to_thread(close_connection, name, "leveret test: come back")
        await asyncio.wait_for(reconnected.wait(), 10)

        await channel.publish(b"after", routing_key=unique)
        await wait_until(lambda: received == [b"after"], 5, "delivery after reconnect")
        assert conn.is_open and not conn.is_closed
    finally:
        await conn.close()
        await side_channel.queue_delete(unique)


async def test_publish_during_an_outage_waits_and_succeeds_after_reconnect(
    proxy: TCPProxy, side_channel: Channel, unique: str
) -> None:
    conn = await _connect(proxy.url)
    reconnected = _reconnected(conn)
    try:
        channel = await conn.channel()
        await channel.queue_declare(unique)

        _outage(proxy)
        await _reconnect_attempt(proxy)
        publish = asyncio.ensure_future(channel.publish(b"patient", routing_key=unique))
        await wait_until(lambda: proxy.connections >= 3, 5, "another reconnect attempt")
        assert not publish.done()
        proxy.resume()

        await asyncio.wait_for(publish, 10)
        assert reconnected.is_set()
        delivery = await side_channel.get(unique, no_ack=True)
        assert delivery is not None and delivery.body == b"patient"
    finally:
        await conn.close()
        await side_channel.queue_delete(unique)


async def test_publish_during_a_long_outage_fails_clearly_after_reconnect_timeout(
    proxy: TCPProxy, side_channel: Channel, unique: str
) -> None:
    loop = asyncio.get_running_loop()
    conn = await _connect(proxy.url, reconnect_timeout=1)
    reconnected = _reconnected(conn)
    try:
        channel = await conn.channel()
        await channel.queue_declare(unique)

        _outage(proxy)
        await _reconnect_attempt(proxy)
        started = loop.time()
        with pytest.raises(ChannelClosedError, match="did not reopen within 1 s"):
            await channel.publish(b"too late", routing_key=unique)
        assert loop.time() - started < 3
        with pytest.raises(ConnectionLostError, match="did not reconnect within 1 s"):
            await conn.channel()

        # The connection keeps trying and serves again once the network is back.
        proxy.resume()
        await asyncio.wait_for(reconnected.wait(), 10)
        await channel.publish(b"in time", routing_key=unique)
        delivery = await side_channel.get(unique, no_ack=True)
        assert delivery is not None and delivery.body == b"in time"
    finally:
        await conn.close()
        await side_channel.queue_delete(unique)


async def test_channel_opened_during_a_reconnect_waits_for_it_and_then_works(
    proxy: TCPProxy, unique: str
) -> None:
    conn = await _connect(proxy.url, connection_timeout=10)
    reconnected = _reconnected(conn)
    try:
        await conn.channel()
        _outage(proxy)
        await _reconnect_attempt(proxy)
        # Asked for while the reconnect is in its handshake and before it restored
        # the first channel: it must wait, not race the handshake or the restore.
        opening = asyncio.ensure_future(conn.channel())
        await asyncio.sleep(0)  # one turn: the request starts waiting
        proxy.resume()
        await asyncio.wait_for(reconnected.wait(), 10)

        channel = await asyncio.wait_for(opening, 5)
        await channel.queue_declare(unique, exclusive=True)
        await channel.publish(b"x", routing_key=unique)
        assert (await channel.get(unique, no_ack=True)) is not None
        # One reconnect, no second outage caused by the client itself.
        assert conn.reconnects == 1 and proxy.connections == 2
    finally:
        await conn.close()


async def test_consumer_whose_queue_vanished_during_an_outage_is_cancelled_and_others_resume(
    proxy: TCPProxy, side_channel: Channel, unique: str
) -> None:
    gone, kept = f"{unique}-gone", f"{unique}-kept"
    await side_channel.queue_declare(gone)
    await side_channel.queue_declare(kept)
    conn = await _connect(proxy.url, connection_timeout=10)
    reconnected = _reconnected(conn)
    cancellations: list[ConsumerCancelledError] = []
    received: list[bytes] = []
    try:
        channel = await conn.channel()
        await channel.consume(gone, lambda delivery: None, on_cancel=cancellations.append)
        await channel.consume(kept, _collector(received))

        _outage(proxy)
        await _reconnect_attempt(proxy)
        await side_channel.queue_delete(gone)
        proxy.resume()
        await asyncio.wait_for(reconnected.wait(), 10)

        await channel.publish(b"kept", routing_key=kept)
        await wait_until(lambda: received == [b"kept"], 5, "delivery to the other consumer")
        assert len(cancellations) == 1
        assert isinstance(cancellations[0].__cause__, NotFoundError)
        # The failed consumer cost its channel a reopen, not the connection a reconnect.
        assert conn.reconnects == 1 and proxy.connections == 2
    finally:
        await conn.close()
        await side_channel.queue_delete(kept)


async def test_reconnect_skips_an_address_that_does_not_answer(
    proxy: TCPProxy, black_hole: int, side_channel: Channel, unique: str
) -> None:
    url = f"amqp://guest:guest@127.0.0.1:{proxy.port},127.0.0.1:{black_hole}/"
    conn = await _connect(url, connection_timeout=0.5)
    reconnected = _reconnected(conn)
    try:
        channel = await conn.channel()
        await channel.queue_declare(unique)

        # The reconnect tries the silent address first, gives up on it, and comes back.
        proxy.reset()
        await asyncio.wait_for(reconnected.wait(), 10)

        assert conn.address == ("127.0.0.1", proxy.port)
        await channel.publish(b"x", routing_key=unique)
        assert (await channel.get(unique, no_ack=True)) is not None
    finally:
        await conn.close()
        await side_channel.queue_delete(unique)


def _other_tasks() -> set[asyncio.Task[Any]]:
    return {task for task in asyncio.all_tasks() if task is not asyncio.current_task()}


async def test_connection_closed_by_its_owner_is_never_reconnected(proxy: TCPProxy) -> None:
    conn = await _connect(proxy.url)
    channel = await conn.channel()
    await conn.close()

    # Nothing is left running that could reconnect it.
    assert not _other_tasks()
    assert conn.is_closed and conn.reconnects == 0 and proxy.connections == 1
    with pytest.raises(ConnectionClosedError):
        await conn.channel()
    with pytest.raises(ChannelClosedError):
        await channel.publish(b"x", routing_key="anything")


async def test_closing_during_an_outage_is_clean_and_fails_waiting_publishes(
    proxy: TCPProxy, unique: str
) -> None:
    conn = await _connect(proxy.url, connection_timeout=30)
    try:
        channel = await conn.channel()
        await channel.queue_declare(unique, auto_delete=True)
        await channel.consume(unique, lambda delivery: None)

        _outage(proxy)
        # The reconnect attempt is stuck in the handshake when the owner gives up.
        await _reconnect_attempt(proxy)
        publish = asyncio.ensure_future(channel.publish(b"x", routing_key=unique))
        await asyncio.sleep(0)  # one turn: the publish starts waiting for the channel
        await asyncio.wait_for(conn.close(), 2)

        with pytest.raises(ChannelClosedError, match="was closed"):
            await asyncio.wait_for(publish, 1)
        assert conn.is_closed and not _other_tasks()
    finally:
        await conn.close()


async def test_broker_restart_loses_no_confirmed_publish(
    private_node: PrivateNode, unique: str
) -> None:
    publisher = await _connect(private_node.url, reconnect_timeout=60)
    consumer = await _connect(private_node.url, reconnect_timeout=60)
    received: set[int] = set()
    confirmed: set[int] = set()
    not_confirmed: set[int] = set()
    other_errors: list[BaseException] = []
    numbers = itertools.count()
    stop = asyncio.Event()

    def on_delivery(delivery: Delivery) -> None:
        received.add(int(delivery.body))
        delivery.ack()

    async def publish_until_stopped(channel: Channel) -> None:
        while not stop.is_set():
            number = next(numbers)
            try:
                await channel.publish(b"%d" % number, routing_key=unique, delivery_mode=2)
            except PublishNotConfirmedError:
                not_confirmed.add(number)
            except Exception as exc:
                other_errors.append(exc)
                return
            else:
                confirmed.add(number)

    publishers: list[asyncio.Task[None]] = []
    try:
        consuming = await consumer.channel()
        await consuming.queue_declare(unique, durable=True)
        await consuming.qos(50)
        await consuming.consume(unique, on_delivery)
        publishing = await publisher.channel()
        await publishing.queue_declare(unique, durable=True)
        # Several publishes in flight at once, as a busy producer has them.
        publishers = [asyncio.create_task(publish_until_stopped(publishing)) for _ in range(8)]
        await wait_until(lambda: len(confirmed) >= 200, 10, "publishes before the restart")

        await asyncio.to_thread(private_node.stop)
        before_restart = len(confirmed)
        await asyncio.to_thread(private_node.start)
        await wait_until(
            lambda: len(confirmed) >= before_restart + 200, 30, "publishes after the restart"
        )
        stop.set()
        await asyncio.gather(*publishers)

        # In flight at the outage: PublishNotConfirmedError (``not_confirmed``) or
        # confirmed after the reconnect; never any other error.
        assert not other_errors, other_errors
        assert not confirmed & not_confirmed
        await wait_until(lambda: confirmed <= received, 10, "every confirmed message")
        assert publisher.reconnects >= 1 and consumer.reconnects >= 1
    finally:
        stop.set()
        await asyncio.gather(*publishers, return_exceptions=True)
        if consumer.is_open:
            await (await consumer.channel()).queue_delete(unique)
        await publisher.close()
        await consumer.close()


async def test_async_reconnect_and_close_callbacks_are_awaited(proxy: TCPProxy) -> None:
    events: list[str] = []

    async def on_reconnect(conn: RobustConnection) -> None:
        await asyncio.sleep(0)
        events.append("reconnected")

    async def on_close(conn: Any, reason: BaseException | None) -> None:
        await asyncio.sleep(0.01)
        events.append(f"closed {reason}")

    conn = await _connect(proxy.url)
    conn.reconnect_callbacks.append(on_reconnect)
    conn.close_callbacks.append(on_close)
    await conn.channel()
    proxy.reset()
    await wait_until(lambda: events == ["reconnected"], 5, "the async reconnect callback")
    await conn.close()
    assert events == ["reconnected", "closed None"]
