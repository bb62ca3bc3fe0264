"""Transactions: publishes and acks take effect together at tx_commit, or not at all."""

from __future__ import annotations

import uuid

import pytest

from leveret.amqp import Channel, Connection, connect_robust
from leveret.exceptions import ChannelClosedError, ConfigurationError, NotFoundError
from tests.support.waiting import wait_until


async def _ready(channel: Channel, queue: str) -> int:
    return (await channel.queue_declare(queue, passive=True)).message_count


async def _tx_channel(connection: Connection) -> Channel:
    channel = await connection.channel(publisher_confirms=False)
    await channel.tx_select()
    return channel


async def test_publishes_reach_the_queue_only_when_committed(
    connection: Connection, channel: Channel, queue: str
) -> None:
    tx = await _tx_channel(connection)
    for i in range(3):
        await tx.publish(b"%d" % i, routing_key=queue)
    await tx.queue_declare(queue, passive=True)  # the broker has seen the publishes
    assert await _ready(channel, queue) == 0

    await tx.tx_commit()

    assert await _ready(channel, queue) == 3


async def test_rolled_back_publishes_never_reach_the_queue(
    connection: Connection, channel: Channel, queue: str
) -> None:
    tx = await _tx_channel(connection)
    await tx.publish(b"dropped", routing_key=queue)
    await tx.tx_rollback()
    await tx.publish(b"kept", routing_key=queue)
    await tx.tx_commit()

    got = await channel.get(queue, no_ack=True)
    assert got is not None and got.body == b"kept"
    assert await _ready(channel, queue) == 0


async def test_an_ack_made_just_before_the_commit_is_part_of_it(
    connection: Connection, channel: Channel, queue: str
) -> None:
    await channel.publish(b"old", routing_key=queue)
    tx = await _tx_channel(connection)
    delivery = await tx.get(queue)
    assert delivery is not None
    delivery.ack()  # coalesced: not yet written when the commit is sent
    await tx.publish(b"new", routing_key=queue)
    await tx.tx_commit()
    await tx.close()  # an ack left out of the commit would be undone here: "old" requeued

    bodies = []
    while (got := await channel.get(queue, no_ack=True)) is not None:
        bodies.append(got.body)
    assert bodies == [b"new"]


async def test_a_confirming_channel_refuses_tx_select_and_stays_open(channel: Channel) -> None:
    with pytest.raises(ConfigurationError, match="publisher_confirms=False"):
        await channel.tx_select()
    assert channel.is_open


async def test_commit_without_tx_select_is_refused_with_the_fix(connection: Connection) -> None:
    plain = await connection.channel(publisher_confirms=False)
    with pytest.raises(ConfigurationError, match=r"call tx_select\(\)"):
        await plain.tx_commit()
    assert plain.is_open


async def test_commit_on_a_closed_channel_raises_channel_closed(connection: Connection) -> None:
    tx = await _tx_channel(connection)
    await tx.close()
    with pytest.raises(ChannelClosedError):
        await tx.tx_commit()


async def test_a_robust_channel_reopens_transactional_and_loses_the_open_transaction(
    amqp_url: str, channel: Channel, queue: str
) -> None:
    conn = await connect_robust(amqp_url, name="leveret-tests tx")
    try:
        tx = await conn.channel(publisher_confirms=False)
        await tx.tx_select()
        await tx.publish(b"lost with the channel", routing_key=queue)
        with pytest.raises(NotFoundError):  # the broker closes the channel; it reopens
            await tx.queue_declare(f"missing-{uuid.uuid4().hex}", passive=True)
        await wait_until(lambda: tx.is_open, 10, "the channel to reopen")

        with pytest.raises(ChannelClosedError, match="nothing of it was committed"):
            await tx.tx_commit()

        await tx.publish(b"uncommitted", routing_key=queue)
        await tx.queue_declare(queue, passive=True)
        assert await _ready(channel, queue) == 0  # still transactional after the reopen
        await tx.tx_commit()
        got = await channel.get(queue, no_ack=True)
        assert got is not None and got.body == b"uncommitted"
        assert await _ready(channel, queue) == 0
    finally:
        await conn.close()
