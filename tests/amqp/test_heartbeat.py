"""Heartbeats: a silent network is detected within about two intervals; an idle one lives."""

from __future__ import annotations

import asyncio
import subprocess
import uuid

import pytest

from leveret.amqp import connect
from leveret.exceptions import (
    ChannelClosedError,
    ConsumerCancelledError,
    HeartbeatTimeoutError,
    PublishNotConfirmedError,
)
from tests.support.proxy import TCPProxy

pytestmark = pytest.mark.faults


async def test_stalled_network_fails_the_connection_with_heartbeat_timeout_in_two_intervals(
    proxy: TCPProxy, unique: str
) -> None:
    loop = asyncio.get_running_loop()
    conn = await connect(proxy.url, heartbeat=1)
    lost: asyncio.Future[BaseException | None] = loop.create_future()

    def on_close(_: object, exc: BaseException | None) -> None:
        if not lost.done():
            lost.set_result(exc)

    conn.close_callbacks.append(on_close)
    try:
        channel = await conn.channel()
        # Exclusive: the broker deletes it once it drops its side of the connection.
        await channel.queue_declare(unique, exclusive=True)
        async with channel.iterate(unique) as deliveries:
            proxy.stall()
            stalled_at = loop.time()
            publish = asyncio.ensure_future(channel.publish(b"lost", routing_key=unique))
            declare = asyncio.ensure_future(channel.queue_declare(unique, passive=True))
            next_delivery = asyncio.ensure_future(anext(deliveries))

            reason = await asyncio.wait_for(lost, 4)
            detected_after = loop.time() - stalled_at

            assert isinstance(reason, HeartbeatTimeoutError)
            assert 1 <= detected_after < 4
            assert "no data from amqp://guest:******@127.0.0.1" in str(reason)
            assert "heartbeat 1 s" in str(reason) and "network is gone" in str(reason)
            # Everything that was waiting fails at once, saying why.
            with pytest.raises(PublishNotConfirmedError, match="heartbeat") as publish_error:
                await asyncio.wait_for(publish, 1)
            assert publish_error.value.__cause__ is reason
            with pytest.raises(HeartbeatTimeoutError):
                await asyncio.wait_for(declare, 1)
            with pytest.raises(ConsumerCancelledError, match="heartbeat"):
                await asyncio.wait_for(next_delivery, 1)
        # And so does what comes later.
        with pytest.raises(ChannelClosedError, match="heartbeat"):
            await channel.publish(b"later", routing_key=unique)
        with pytest.raises(HeartbeatTimeoutError):
            await conn.channel()
        assert conn.is_closed
    finally:
        await conn.close()


def _broker_side_heartbeat(name: str) -> str:
    """The heartbeat the broker negotiated for the connection named ``name``."""
    out = subprocess.run(
        ["rabbitmqctl", "list_connections", "client_properties", "timeout", "-q"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in out.splitlines():
        if name in line:
            return line.split()[-1]
    raise AssertionError(f"no connection named {name!r} in {out!r}")


async def test_idle_healthy_connection_is_kept_alive_by_heartbeats(
    amqp_url: str, unique: str
) -> None:
    name = f"leveret-idle-{uuid.uuid4().hex[:8]}"
    conn = await connect(amqp_url, heartbeat=1, name=name)
    closed: list[BaseException | None] = []
    conn.close_callbacks.append(lambda _, exc: closed.append(exc))
    try:
        channel = await conn.channel()
        await channel.queue_declare(unique, exclusive=True)
        broker_side = asyncio.ensure_future(asyncio.to_thread(_broker_side_heartbeat, name))

        # Idle on purpose for four intervals: only heartbeats cross the wire.
        await asyncio.sleep(4)

        # The broker holds us to 1 s too: it would have dropped a silent client.
        assert await broker_side == "1"
        assert conn.is_open and not closed
        await channel.publish(b"still here", routing_key=unique)
        delivery = await channel.get(unique, no_ack=True)
        assert delivery is not None and delivery.body == b"still here"
    finally:
        await conn.close()
