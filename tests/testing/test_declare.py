"""Declaring, deleting and purging on the in-memory broker: RabbitMQ's rules and words."""

from collections.abc import Awaitable, Callable

import pytest

from leveret.exceptions import (
    AccessRefusedError,
    ChannelClosedError,
    CommandInvalidError,
    ConnectionClosedError,
    ConsumerCancelledError,
    NotFoundError,
    NotImplementedByBrokerError,
    PreconditionFailedError,
    ResourceLockedError,
)
from leveret.testing import MemoryBroker, MemoryChannel, MemoryConnection
from tests.support.waiting import wait_until
from tests.testing.conftest import publish_all


async def test_passive_declare_of_a_missing_queue_raises_not_found_and_closes_the_channel(
    leveret_connection: MemoryConnection,
) -> None:
    channel = await leveret_connection.channel()
    reasons: list[BaseException | None] = []
    channel.close_callbacks.append(lambda _, reason: reasons.append(reason))
    with pytest.raises(NotFoundError) as info:
        await channel.queue_declare("nope", passive=True)
    assert info.value.reply_text == "NOT_FOUND - no queue 'nope' in vhost '/'"
    assert info.value.method == "queue.declare" and info.value.scope == "channel"
    assert channel.is_closed and reasons == [info.value]
    with pytest.raises(ChannelClosedError, match="NOT_FOUND"):
        await channel.queue_declare("other")
    assert leveret_connection.is_open  # a channel error leaves the connection alone


async def test_redeclaring_with_other_settings_is_refused_with_rabbitmqs_words(
    leveret_connection: MemoryConnection,
) -> None:
    setup = await leveret_connection.channel()
    await setup.queue_declare("q", durable=True, arguments={"x-message-ttl": 100})
    cases = [
        (
            {"durable": False, "arguments": {"x-message-ttl": 100}},
            "inequivalent arg 'durable' for queue 'q' in vhost '/': received 'false' but "
            "current is 'true'",
        ),
        (
            {"durable": True, "arguments": {"x-message-ttl": 200}},
            "inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': received '200' but "
            "current is '100'",
        ),
        (
            {"durable": True},
            "received none but current is the value '100' of type 'signedint'",
        ),
        (
            {"durable": True, "arguments": {"x-message-ttl": "100"}},
            "received '100' but current is '100'",  # a string is not an integer
        ),
        (
            {"durable": True, "arguments": {"x-message-ttl": 100.0}},
            "received '100.0' but current is '100'",  # nor is a float
        ),
        (
            {"durable": True, "arguments": {"x-message-ttl": 100, "x-dead-letter-exchange": ""}},
            "inequivalent arg 'x-dead-letter-exchange' for queue 'q' in vhost '/': received the "
            "value '' of type 'longstr' but current is none",
        ),
        (
            {"durable": True, "auto_delete": True, "arguments": {"x-message-ttl": 100}},
            "inequivalent arg 'auto_delete' for queue 'q' in vhost '/': received 'true'",
        ),
        (
            {"durable": True, "arguments": {"x-message-ttl": 100, "x-queue-type": "quorum"}},
            "inequivalent arg 'x-queue-type' for queue 'q' in vhost '/': received the value "
            "'quorum' of type 'longstr' but current is none",
        ),
    ]
    for options, words in cases:
        channel = await leveret_connection.channel()
        with pytest.raises(PreconditionFailedError) as info:
            await channel.queue_declare("q", **options)  # type: ignore[arg-type]
        assert words in info.value.reply_text, options
        assert channel.is_closed
    # What RabbitMQ does not compare: unknown arguments, a classic queue saying so,
    # and a passive declare's settings.
    channel = await leveret_connection.channel()
    await channel.queue_declare("q", durable=True, arguments={"x-message-ttl": 100, "x-c": 1})
    await channel.queue_declare(
        "q", durable=True, arguments={"x-message-ttl": 100, "x-queue-type": "classic"}
    )
    ok = await channel.queue_declare("q", passive=True, durable=False)
    assert (ok.queue, ok.message_count, ok.consumer_count) == ("q", 0, 0)


async def test_an_exclusive_queue_belongs_to_its_connection_and_goes_with_it(
    leveret_broker: MemoryBroker,
    leveret_connection: MemoryConnection,
    other_connection: MemoryConnection,
) -> None:
    mine = await leveret_connection.channel()
    await mine.queue_declare("private", exclusive=True)
    attempts: tuple[Callable[[MemoryChannel], Awaitable[object]], ...] = (
        lambda c: c.queue_declare("private", exclusive=True),
        lambda c: c.queue_declare("private", passive=True),
        lambda c: c.consume("private", lambda d: None),
        lambda c: c.get("private"),
        lambda c: c.queue_purge("private"),
        lambda c: c.queue_delete("private"),
    )
    for attempt in attempts:
        theirs = await other_connection.channel()
        with pytest.raises(ResourceLockedError, match="cannot obtain exclusive access"):
            await attempt(theirs)
    # Publishing to it is fine, from anywhere.
    await (await other_connection.channel()).publish(b"x", routing_key="private")
    with pytest.raises(ResourceLockedError):  # nor may its owner redeclare it shared
        await (await leveret_connection.channel()).queue_declare("private")
    await leveret_connection.close()
    assert "private" not in leveret_broker.queues


async def test_server_named_queues_and_the_reserved_amq_prefix(
    leveret_channel: MemoryChannel, leveret_connection: MemoryConnection
) -> None:
    ok = await leveret_channel.queue_declare("", exclusive=True)
    assert ok.queue.startswith("amq.gen-") and len(ok.queue) == len("amq.gen-") + 22
    channel = await leveret_connection.channel()
    with pytest.raises(AccessRefusedError, match=r"contains reserved prefix 'amq\.\*'"):
        await channel.queue_declare("amq.mine")


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({}, "invalid property 'non-durable'"),
        ({"durable": True, "exclusive": True}, "invalid property 'exclusive-owner'"),
        ({"durable": True, "auto_delete": True}, "invalid property 'auto-delete'"),
    ],
)
async def test_quorum_queues_must_be_durable_and_shared(
    leveret_channel: MemoryChannel, options: dict[str, bool], words: str
) -> None:
    with pytest.raises(PreconditionFailedError, match=words):
        await leveret_channel.queue_declare("qq", arguments={"x-queue-type": "quorum"}, **options)


async def test_unsupported_queue_and_exchange_types_are_refused(
    leveret_connection: MemoryConnection,
) -> None:
    with pytest.raises(PreconditionFailedError, match="unsupported queue type 'weird'"):
        await (await leveret_connection.channel()).queue_declare(
            "w", arguments={"x-queue-type": "weird"}
        )
    with pytest.raises(NotImplementedByBrokerError, match="stream queues"):
        await (await leveret_connection.channel()).queue_declare(
            "s", durable=True, arguments={"x-queue-type": "stream"}
        )
    # An unknown exchange type is a connection error on RabbitMQ: the connection goes.
    with pytest.raises(CommandInvalidError, match="unknown exchange type 'weird'") as info:
        await (await leveret_connection.channel()).exchange_declare("x", "weird")
    assert info.value.scope == "connection"
    assert leveret_connection.is_closed
    with pytest.raises(ConnectionClosedError, match="COMMAND_INVALID"):
        await leveret_connection.channel()


async def test_deleting_respects_if_unused_and_if_empty_and_tells_consumers(
    leveret_connection: MemoryConnection,
) -> None:
    channel = await leveret_connection.channel()
    await channel.queue_declare("d")
    await publish_all(channel, "d", b"1", b"2")
    cancelled: list[ConsumerCancelledError] = []
    await channel.consume("d", lambda d: None, on_cancel=cancelled.append, prefetch_count=1)
    with pytest.raises(PreconditionFailedError, match="queue 'd' in vhost '/' in use"):
        await (await leveret_connection.channel()).queue_delete("d", if_unused=True)
    with pytest.raises(PreconditionFailedError, match="queue 'd' in vhost '/' not empty"):
        await (await leveret_connection.channel()).queue_delete("d", if_empty=True)
    assert await channel.queue_delete("d") == 1  # one ready; the other is unacked
    await wait_until(lambda: cancelled, 1, "the consumer's cancel")
    assert len(cancelled) == 1 and "the broker cancelled consumer" in str(cancelled[0])
    assert await channel.queue_delete("d") == 0  # deleting a missing queue is fine


async def test_purge_drops_ready_messages_only(leveret_channel: MemoryChannel) -> None:
    await leveret_channel.queue_declare("p")
    await publish_all(leveret_channel, "p", b"1", b"2", b"3")
    held = await leveret_channel.get("p")
    assert held is not None
    assert await leveret_channel.queue_purge("p") == 2
    held.nack(requeue=True)
    ok = await leveret_channel.queue_declare("p", passive=True)
    assert ok.message_count == 1


async def test_an_auto_delete_queue_goes_with_its_last_consumer(
    leveret_broker: MemoryBroker, leveret_channel: MemoryChannel
) -> None:
    await leveret_channel.queue_declare("ad", auto_delete=True)
    assert "ad" in leveret_broker.queues  # never consumed: it stays
    first = await leveret_channel.consume("ad", lambda d: None)
    second = await leveret_channel.consume("ad", lambda d: None)
    await leveret_channel.cancel(first)
    assert "ad" in leveret_broker.queues
    await leveret_channel.cancel(second)
    assert "ad" not in leveret_broker.queues


async def test_exchanges_route_direct_fanout_and_topic(leveret_channel: MemoryChannel) -> None:
    for queue in ("a", "b", "c"):
        await leveret_channel.queue_declare(queue)
    await leveret_channel.exchange_declare("logs", "fanout")
    await leveret_channel.exchange_declare("events", "topic")
    for queue in ("a", "b"):
        await leveret_channel.queue_bind(queue, "logs")
    await leveret_channel.queue_bind("a", "amq.direct", "red")
    await leveret_channel.queue_bind("b", "events", "order.*.created")
    await leveret_channel.queue_bind("c", "events", "order.#")
    await leveret_channel.publish(b"fan", routing_key="", exchange="logs")
    await leveret_channel.publish(b"red", routing_key="red", exchange="amq.direct")
    await leveret_channel.publish(b"blue", routing_key="blue", exchange="amq.direct")
    await leveret_channel.publish(b"topic", routing_key="order.eu.created", exchange="events")
    await leveret_channel.publish(b"deep", routing_key="order.eu.x.y", exchange="events")
    contents = {}
    for queue in ("a", "b", "c"):
        bodies = []
        while (delivery := await leveret_channel.get(queue, no_ack=True)) is not None:
            bodies.append(delivery.body)
        contents[queue] = bodies
    assert contents == {"a": [b"fan", b"red"], "b": [b"fan", b"topic"], "c": [b"topic", b"deep"]}
    await leveret_channel.queue_unbind("a", "logs")
    await leveret_channel.publish(b"fan2", routing_key="", exchange="logs")
    assert (await leveret_channel.queue_declare("a", passive=True)).message_count == 0


async def test_exchange_declare_equivalence_and_the_default_exchange(
    leveret_connection: MemoryConnection,
) -> None:
    channel = await leveret_connection.channel()
    await channel.exchange_declare("ex", "direct")
    await channel.exchange_declare("ex", "fanout", passive=True)  # passive ignores the type
    with pytest.raises(PreconditionFailedError, match="received 'fanout' but current is 'direct'"):
        await channel.exchange_declare("ex", "fanout")
    channel = await leveret_connection.channel()
    await channel.queue_declare("q")
    with pytest.raises(AccessRefusedError, match="operation not permitted on the default"):
        await channel.queue_bind("q", "")
    channel = await leveret_connection.channel()
    with pytest.raises(NotFoundError, match="no exchange 'missing'"):
        await channel.queue_bind("q", "missing")


async def test_an_auto_delete_exchange_goes_with_its_last_binding(
    leveret_broker: MemoryBroker, leveret_connection: MemoryConnection
) -> None:
    channel = await leveret_connection.channel()
    await channel.queue_declare("q")
    await channel.exchange_declare("temp", "fanout", auto_delete=True)
    await channel.queue_bind("q", "temp")
    await channel.queue_unbind("q", "temp")
    assert "temp" not in leveret_broker.exchanges
    await channel.exchange_declare("kept", "direct")
    await channel.queue_bind("q", "kept", "k")
    with pytest.raises(PreconditionFailedError, match="exchange 'kept' in vhost '/' in use"):
        await channel.exchange_delete("kept", if_unused=True)
    channel = await leveret_connection.channel()
    await channel.exchange_delete("kept")
    await channel.exchange_delete("kept")  # deleting a missing exchange is fine
