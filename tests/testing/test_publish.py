"""Publishing to the in-memory broker: confirms, returns, direct reply-to, properties."""

import asyncio
import logging

import pytest

from leveret.amqp import Properties, ReturnedMessage
from leveret.exceptions import (
    ChannelClosedError,
    ConfigurationError,
    MessageReturnedError,
    MessageTooLargeError,
    PreconditionFailedError,
    PublishNotConfirmedError,
)
from leveret.testing import MemoryBroker, MemoryChannel, MemoryConnection
from tests.support.waiting import wait_until
from tests.testing.conftest import Collector


async def test_an_unroutable_mandatory_publish_raises_on_a_confirming_channel(
    leveret_channel: MemoryChannel,
) -> None:
    returned: list[ReturnedMessage] = []
    leveret_channel.return_callbacks.append(returned.append)
    with pytest.raises(MessageReturnedError, match="312 NO_ROUTE") as info:
        await leveret_channel.publish(b"x", routing_key="nobody", mandatory=True, message_id="m")
    message = info.value.message
    assert (message.exchange, message.routing_key, message.body) == ("", "nobody", b"x")
    assert message.properties.message_id == "m"
    assert returned == []  # claimed by the publish, not passed to the callbacks
    await leveret_channel.publish(b"x", routing_key="nobody")  # not mandatory: dropped
    assert leveret_channel.is_open


async def test_returns_go_to_the_callbacks_without_confirms_and_after_publish_returned(
    leveret_connection: MemoryConnection, caplog: pytest.LogCaptureFixture
) -> None:
    for channel, confirm in (
        (await leveret_connection.channel(publisher_confirms=False), True),
        (await leveret_connection.channel(), False),
    ):
        returned: list[ReturnedMessage] = []
        channel.return_callbacks.append(returned.append)
        await channel.publish(b"x", routing_key="nobody", mandatory=True, confirm=confirm)
        assert returned == []  # the return arrives on a later loop turn ...
        await asyncio.sleep(0)  # ... the very next one: this turn is what is tested
        assert [(r.reply_code, r.reply_text) for r in returned] == [(312, "NO_ROUTE")]
    silent = await leveret_connection.channel(publisher_confirms=False)
    with caplog.at_level(logging.WARNING, logger="leveret.testing"):
        await silent.publish(b"x", routing_key="nobody", mandatory=True)
        await wait_until(lambda: "nobody listens for it" in caplog.text, 1, "the warning")


async def test_publishing_to_a_missing_exchange_closes_the_channel(
    leveret_connection: MemoryConnection,
) -> None:
    channel = await leveret_connection.channel()
    with pytest.raises(PublishNotConfirmedError, match="no exchange 'nope'") as info:
        await channel.publish(b"x", routing_key="", exchange="nope")
    assert info.value.__cause__ is not None
    assert channel.is_closed
    with pytest.raises(ChannelClosedError):
        await channel.publish(b"x", routing_key="q")
    unconfirmed = await leveret_connection.channel(publisher_confirms=False)
    await unconfirmed.publish(b"x", routing_key="", exchange="nope")  # as on the wire: no error
    assert unconfirmed.is_closed  # ... but the channel is gone


async def test_a_publish_not_yet_confirmed_fails_when_its_channel_closes(
    leveret_channel: MemoryChannel,
) -> None:
    await leveret_channel.queue_declare("q")
    publishing = asyncio.create_task(leveret_channel.publish(b"x", routing_key="q"))
    await asyncio.sleep(0)  # the publish is routed and waits for its confirm
    await leveret_channel.close()
    with pytest.raises(PublishNotConfirmedError, match="may or may not have been routed"):
        await publishing


async def test_direct_reply_to_gives_each_caller_channel_an_address_of_its_own(
    leveret_broker: MemoryBroker, leveret_connection: MemoryConnection
) -> None:
    server = await leveret_connection.channel()
    await server.queue_declare("calls")
    calls = Collector(lambda d: d.ack())
    await server.consume("calls", calls)
    callers = [await leveret_connection.channel() for _ in range(2)]
    replies = [Collector(), Collector()]
    for caller, inbox in zip(callers, replies, strict=True):
        await caller.consume("amq.rabbitmq.reply-to", inbox, no_ack=True)
        await caller.publish(b"ask", routing_key="calls", reply_to="amq.rabbitmq.reply-to")
    await calls.wait_for(2)
    addresses = [d.properties.reply_to or "" for d in calls.deliveries]
    assert all(a.startswith("amq.rabbitmq.reply-to.") for a in addresses)
    assert len(set(addresses)) == 2
    assert "amq.rabbitmq.reply-to" not in "".join(leveret_broker.queues)  # never listed
    for n, address in enumerate(addresses):
        await server.publish(f"answer {n}".encode(), routing_key=address)
    for n, inbox in enumerate(replies):
        (reply,) = await inbox.wait_for(1)
        assert reply.body == f"answer {n}".encode()
        assert reply.routing_key == addresses[n]
    await callers[0].close()
    with pytest.raises(MessageReturnedError):  # its address is gone with it
        await server.publish(b"late", routing_key=addresses[0], mandatory=True)


async def test_direct_reply_to_misuse_is_refused(leveret_connection: MemoryConnection) -> None:
    channel = await leveret_connection.channel()
    await channel.queue_declare("q")
    with pytest.raises(PublishNotConfirmedError, match="fast reply consumer does not exist"):
        await channel.publish(b"x", routing_key="q", reply_to="amq.rabbitmq.reply-to")
    channel = await leveret_connection.channel()
    with pytest.raises(PreconditionFailedError, match="reply consumer cannot acknowledge"):
        await channel.consume("amq.rabbitmq.reply-to", lambda d: None)
    channel = await leveret_connection.channel()
    await channel.consume("amq.rabbitmq.reply-to", lambda d: None, no_ack=True)
    with pytest.raises(PreconditionFailedError, match="reply consumer already set"):
        await channel.consume("amq.rabbitmq.reply-to", lambda d: None, no_ack=True)
    assert channel.is_closed


async def test_properties_travel_as_on_the_wire(leveret_channel: MemoryChannel) -> None:
    await leveret_channel.queue_declare("q")
    headers = {"tuple": (1, "two"), "nested": {"n": 1.5}, "raw": b"\x00"}
    await leveret_channel.publish(
        b"x", routing_key="q", headers=headers, priority=3, timestamp=1700000000.7
    )
    delivery = await leveret_channel.get("q", no_ack=True)
    assert delivery is not None
    assert delivery.headers == {
        "tuple": [1, "two"],
        "nested": {"n": 1.5},
        "raw": b"\x00",
    }
    assert (delivery.properties.priority, delivery.properties.timestamp) == (3, 1700000000)
    delivery.headers["tuple"].append("mutated")
    await leveret_channel.publish(b"y", routing_key="q", properties=Properties(headers=headers))
    again = await leveret_channel.get("q", no_ack=True)
    assert again is not None and again.headers["tuple"] == [1, "two"]


async def test_a_property_that_cannot_travel_raises_before_anything_is_sent(
    leveret_channel: MemoryChannel,
) -> None:
    with pytest.raises(ConfigurationError, match="cannot go in an AMQP field table"):
        await leveret_channel.publish(b"x", routing_key="q", headers={"bad": object()})
    with pytest.raises(ConfigurationError, match="must be bytes"):
        await leveret_channel.publish("text", routing_key="q")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="routing key is 300 bytes"):
        await leveret_channel.publish(b"x", routing_key="r" * 300)
    assert leveret_channel.is_open


async def test_a_user_id_other_than_the_connections_is_refused(
    leveret_connection: MemoryConnection,
) -> None:
    channel = await leveret_connection.channel()
    await channel.queue_declare("q")
    await channel.publish(b"x", routing_key="q", user_id="guest")
    with pytest.raises(PublishNotConfirmedError, match="user_id property set to 'bob'"):
        await channel.publish(b"x", routing_key="q", user_id="bob")


async def test_a_body_over_rabbitmqs_max_message_size_is_refused_and_nothing_is_queued(
    leveret_channel: MemoryChannel,
) -> None:
    await leveret_channel.queue_declare("big")
    body = bytes(128 * 1024 * 1024 + 1)
    with pytest.raises(MessageTooLargeError, match="134217729"):
        await leveret_channel.publish(body, routing_key="big")
    assert (await leveret_channel.queue_declare("big", passive=True)).message_count == 0
    await leveret_channel.publish(body[:-1], routing_key="big")  # at the limit: taken
    assert (await leveret_channel.queue_declare("big", passive=True)).message_count == 1
