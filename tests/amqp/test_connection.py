"""Opening, negotiating, failing and closing connections against the real broker."""

import asyncio
import subprocess
import uuid

import pytest

from leveret.amqp import Channel, Connection, Delivery, connect
from leveret.exceptions import (
    AuthenticationError,
    ChannelClosedError,
    ConfigurationError,
    ConnectError,
    ConnectionClosedError,
    ConnectionForcedError,
    PublishNotConfirmedError,
)
from tests.support.rabbitmqctl import connection_pid
from tests.support.waiting import wait_until


async def test_connection_name_from_the_url_reaches_the_broker(amqp_url: str) -> None:
    name = f"leveret-{uuid.uuid4().hex[:8]}"
    async with await connect(f"{amqp_url}?name={name}") as conn:
        assert conn.is_open
        assert connection_pid(name).startswith("<")


async def test_client_properties_connection_name_reaches_the_broker(amqp_url: str) -> None:
    name = f"leveret-{uuid.uuid4().hex[:8]}"
    async with await connect(amqp_url, client_properties={"connection_name": name}):
        assert connection_pid(name)


async def test_tune_respects_what_the_client_asks(amqp_url: str) -> None:
    async with await connect(amqp_url, frame_max=4096, channel_max=2, heartbeat=7) as conn:
        assert (conn.frame_max, conn.channel_max, conn.heartbeat) == (4096, 2, 7)
        await conn.channel()
        await conn.channel()
        with pytest.raises(ConfigurationError, match="all 2 channels are in use"):
            await conn.channel()


async def test_large_body_crosses_a_small_frame_max(amqp_url: str, unique: str) -> None:
    async with await connect(amqp_url, frame_max=4096) as conn:
        channel = await conn.channel()
        await channel.queue_declare(unique, exclusive=True)
        body = bytes(range(256)) * 4000  # ~1 MB: 250 body frames
        await channel.publish(body, routing_key=unique)
        delivery = await channel.get(unique, no_ack=True)
        assert delivery is not None and delivery.body == body


async def test_twenty_megabyte_body_round_trips_intact(channel: Channel, queue: str) -> None:
    body = uuid.uuid4().bytes * (20 * 1024 * 1024 // 16)
    await channel.publish(body, routing_key=queue)
    delivery = await channel.get(queue)
    assert delivery is not None
    assert len(delivery.body) == len(body) and delivery.body == body
    delivery.ack()


async def test_wrong_password_raises_authentication_error_without_the_password(
    amqp_url: str,
) -> None:
    with pytest.raises(AuthenticationError) as info:
        await connect("amqp://guest:not-the-password-42@127.0.0.1:5672/")
    assert "ACCESS_REFUSED" in str(info.value)
    assert "not-the-password-42" not in str(info.value)
    assert "not-the-password-42" not in repr(info.value.__cause__)


async def test_unknown_vhost_raises_connect_error_naming_it(amqp_url: str) -> None:
    with pytest.raises(ConnectError, match="no-such-vhost"):
        await connect("amqp://guest:guest@127.0.0.1:5672/no-such-vhost")


async def test_unreachable_address_raises_connect_error_naming_it() -> None:
    with pytest.raises(ConnectError, match=r"127\.0\.0\.1:1/.*refused"):
        await connect("amqp://guest:secret@127.0.0.1:1/", connection_timeout=2)


async def test_second_address_is_tried_when_the_first_does_not_answer(amqp_url: str) -> None:
    async with await connect("amqp://guest:guest@127.0.0.1:1,127.0.0.1:5672/") as conn:
        assert conn.address == ("127.0.0.1", 5672)


async def test_close_is_idempotent_and_closed_connections_refuse_work(amqp_url: str) -> None:
    conn = await connect(amqp_url)
    channel = await conn.channel()
    await conn.close()
    await conn.close()
    assert conn.is_closed and not channel.is_open
    with pytest.raises(ConnectionClosedError):
        await conn.channel()
    with pytest.raises(ChannelClosedError):
        await channel.publish(b"x", routing_key="anything")


async def test_async_with_closes_and_cancels_consumer_tasks(amqp_url: str, unique: str) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def slow(delivery: Delivery) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with await connect(amqp_url) as conn:
        channel = await conn.channel()
        await channel.queue_declare(unique, auto_delete=True)
        await channel.consume(unique, slow)
        await channel.publish(b"x", routing_key=unique)
        await asyncio.wait_for(started.wait(), 5)
    assert cancelled.is_set()


async def test_broker_forced_close_fails_pending_work_with_its_reply_text(
    amqp_url: str, unique: str
) -> None:
    name = f"leveret-forced-{uuid.uuid4().hex[:8]}"
    conn = await connect(amqp_url, name=name)
    closed: list[BaseException | None] = []
    conn.close_callbacks.append(lambda c, exc: closed.append(exc))
    channel = await conn.channel()
    await channel.queue_declare(unique, exclusive=True)
    await asyncio.to_thread(
        subprocess.run,
        ["rabbitmqctl", "close_connection", connection_pid(name), "leveret test says bye"],
        check=True,
        capture_output=True,
    )

    async def publish() -> bool:
        await channel.publish(b"x", routing_key=unique)
        return False  # until a publish raises

    with pytest.raises((ConnectionForcedError, ChannelClosedError, PublishNotConfirmedError)):
        await wait_until(publish, 10, "a publish to fail after the forced close")
    assert conn.is_closed
    assert isinstance(closed[0], ConnectionForcedError)
    assert closed[0].reply_code == 320
    assert "leveret test says bye" in closed[0].reply_text
    await conn.close()


async def test_repr_shows_the_address_but_never_the_password(amqp_url: str) -> None:
    conn: Connection = await connect(amqp_url)
    try:
        assert "guest:******@127.0.0.1:5672" in repr(conn)
        assert ":guest@" not in repr(conn)
    finally:
        await conn.close()
