"""The life of connections and channels as their owners see it: state, ``async with``, loss."""

from __future__ import annotations

import pytest

from leveret.amqp import (
    Channel,
    Connection,
    ConnectionState,
    RobustChannel,
    RobustConnection,
    connect,
    connect_robust,
)
from leveret.exceptions import ChannelClosedError, ConnectionClosedError, ConnectionLostError
from tests.support.proxy import TCPProxy
from tests.support.waiting import wait_until


def _state(connection: Connection) -> ConnectionState:
    # Read through a call: the checker would carry one assertion on the property
    # past the awaits that change it.
    return connection.state


async def test_a_connection_is_open_then_closed_and_a_channel_closes_with_its_block(
    amqp_url: str, unique: str
) -> None:
    connection = await connect(amqp_url, name="leveret-tests")
    assert _state(connection) is ConnectionState.OPEN and connection.is_open
    async with await connection.channel() as channel:
        assert channel.is_open
        await channel.queue_declare(unique, exclusive=True)
    assert channel.is_closed
    with pytest.raises(ChannelClosedError, match="closed by its owner"):
        await channel.publish(b"late", routing_key=unique)
    await connection.close()
    assert _state(connection) is ConnectionState.CLOSED and connection.is_closed
    with pytest.raises(ConnectionClosedError):
        await connection.channel()


@pytest.mark.faults
async def test_a_lost_plain_connection_stays_lost_and_says_why(proxy: TCPProxy) -> None:
    connection = await connect(proxy.url, name="leveret-tests")
    channel = await connection.channel()
    proxy.reset()
    await wait_until(lambda: connection.is_closed, 5, "the loss to be noticed")
    assert _state(connection) is ConnectionState.LOST and not connection.is_open
    assert channel.is_closed and not isinstance(channel, RobustChannel)
    with pytest.raises(ConnectionLostError, match="lost"):
        await connection.channel()
    await connection.close()
    assert _state(connection) is ConnectionState.CLOSED
    with pytest.raises(ConnectionClosedError):
        await connection.channel()


@pytest.mark.faults
async def test_a_lost_robust_connection_is_open_again_with_the_same_channel(
    proxy: TCPProxy, unique: str
) -> None:
    connection = await connect_robust(proxy.url, name="leveret-tests", reconnect_interval=0.05)
    assert isinstance(connection, RobustConnection)
    try:
        channel = await connection.channel()
        assert isinstance(channel, RobustChannel) and isinstance(channel, Channel)
        await channel.queue_declare(unique, auto_delete=True)
        proxy.reset()
        await wait_until(lambda: connection.reconnects, 10, "the reconnect")
        assert _state(connection) is ConnectionState.OPEN and not connection.is_closed
        assert channel.is_open
        await channel.publish(b"back", routing_key=unique)
        delivery = await channel.get(unique, no_ack=True)
        assert delivery is not None and delivery.body == b"back"
    finally:
        await connection.close()
    assert _state(connection) is ConnectionState.CLOSED
