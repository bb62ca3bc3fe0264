"""connection.blocked: a broker low on memory holds publishers until it recovers.

On a private node, ``set_vm_memory_high_watermark absolute 10MB`` raises the
memory alarm at once (the node uses far more); the broker blocks a connection
when it next publishes and sends ``connection.blocked``.
"""

from __future__ import annotations

import asyncio

import pytest

from leveret.amqp import connect
from tests.support.brokers import PrivateNode
from tests.support.waiting import wait_until

pytestmark = pytest.mark.faults


async def _set_memory_watermark(node: PrivateNode, *args: str) -> None:
    await asyncio.to_thread(node.ctl, "set_vm_memory_high_watermark", *args)


async def test_publish_waits_while_the_broker_is_blocked_and_completes_after(
    private_node: PrivateNode, unique: str
) -> None:
    conn = await connect(private_node.url, name="leveret-blocked-test")
    reasons: list[str | None] = []
    conn.blocked_callbacks.append(lambda _, reason: reasons.append(reason))
    alarm = False
    try:
        channel = await conn.channel()
        await channel.queue_declare(unique, exclusive=True)
        alarm = True
        await _set_memory_watermark(private_node, "absolute", "10MB")

        # The broker blocks a connection once it publishes.
        first = asyncio.ensure_future(channel.publish(b"first", routing_key=unique))
        await wait_until(lambda: conn.blocked is not None, 10, "connection.blocked")
        assert conn.blocked == "low on memory"
        assert reasons == ["low on memory"]
        second = asyncio.ensure_future(channel.publish(b"second", routing_key=unique))
        # Blocked means held, not failed: give it time to (wrongly) finish.
        await asyncio.sleep(0.5)
        assert not second.done()

        await _set_memory_watermark(private_node, "0.4")
        alarm = False
        await asyncio.wait_for(asyncio.gather(first, second), 10)

        assert conn.blocked is None
        assert reasons == ["low on memory", None]
        bodies = []
        for _ in range(2):
            delivery = await channel.get(unique, no_ack=True)
            assert delivery is not None
            bodies.append(delivery.body)
        assert bodies == [b"first", b"second"]
    finally:
        if alarm:
            await _set_memory_watermark(private_node, "0.4")
        await conn.close()
