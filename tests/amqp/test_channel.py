"""Declares, publishing with confirms, returns, nacks and broker-side channel errors."""

import asyncio
import threading
import time

import pytest

from leveret.amqp import Channel, Connection, Properties, connect
from leveret.exceptions import (
    AccessRefusedError,
    ChannelClosedError,
    ConfigurationError,
    MessageReturnedError,
    NotFoundError,
    PreconditionFailedError,
    PublishNackedError,
    ResourceLockedError,
)
from tests.conftest import AMQP_URL
from tests.support.waiting import wait_until


async def test_publish_returns_after_confirm_and_message_is_in_the_queue(
    channel: Channel, queue: str
) -> None:
    await channel.publish(b'{"task_id": 1}', routing_key=queue)
    ok = await channel.queue_declare(queue, passive=True)
    assert ok.message_count == 1


async def test_many_pipelined_publishes_are_each_confirmed_in_order(
    channel: Channel, queue: str
) -> None:
    await asyncio.gather(
        *(channel.publish(str(i).encode(), routing_key=queue) for i in range(2000))
    )
    ok = await channel.queue_declare(queue, passive=True)
    assert ok.message_count == 2000
    first = await channel.get(queue, no_ack=True)
    assert first is not None and first.body == b"0"


async def test_unroutable_mandatory_publish_raises_with_the_returned_message(
    channel: Channel, unique: str
) -> None:
    with pytest.raises(MessageReturnedError) as info:
        await channel.publish(b"lost?", routing_key=unique, mandatory=True, message_id="m-7")
    returned = info.value.message
    assert (returned.reply_code, returned.reply_text) == (312, "NO_ROUTE")
    assert returned.routing_key == unique and returned.body == b"lost?"
    assert returned.properties.message_id == "m-7"
    assert channel.is_open


async def test_only_the_unroutable_one_of_interleaved_publishes_fails(
    channel: Channel, queue: str, unique: str
) -> None:
    results = await asyncio.gather(
        *(
            channel.publish(
                b"%d" % i, routing_key=queue if i % 3 else unique + "-none", mandatory=True
            )
            for i in range(30)
        ),
        return_exceptions=True,
    )
    failed = [i for i, result in enumerate(results) if isinstance(result, MessageReturnedError)]
    assert failed == list(range(0, 30, 3))
    assert (await channel.queue_declare(queue, passive=True)).message_count == 20


async def test_unroutable_message_without_mandatory_is_confirmed_and_dropped(
    channel: Channel, unique: str
) -> None:
    await channel.publish(b"dropped", routing_key=unique)


async def test_broker_nack_raises_publish_nacked(channel: Channel, unique: str) -> None:
    await channel.queue_declare(
        unique, exclusive=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
    )
    await channel.publish(b"1", routing_key=unique)
    with pytest.raises(PublishNackedError):
        await channel.publish(b"2", routing_key=unique)


async def test_every_property_survives_the_broker(channel: Channel, queue: str) -> None:
    props = Properties(
        content_type="application/json",
        content_encoding="utf-8",
        headers={
            "int": 1,
            "neg": -(2**40),
            "str": "s",
            "bool": False,
            "float": 0.25,
            "list": [1, "a", None],
            "table": {"x": {"y": b"\x00"}},
        },
        delivery_mode=2,
        priority=3,
        correlation_id="corr",
        reply_to="somewhere",
        expiration=60000,
        message_id="mid",
        timestamp=1_800_000_000,
        type="call",
        user_id="guest",
        app_id="tests",
    )
    await channel.publish(b"{}", routing_key=queue, properties=props)
    delivery = await channel.get(queue, no_ack=True)
    assert delivery is not None
    assert delivery.properties == props
    assert (delivery.exchange, delivery.routing_key, delivery.redelivered) == ("", queue, False)


async def test_delivery_headers_are_an_empty_mapping_when_the_message_has_none(
    channel: Channel, queue: str
) -> None:
    await channel.publish(b"plain", routing_key=queue)
    await channel.publish(b"with", routing_key=queue, headers={"a": 1})
    plain = await channel.get(queue, no_ack=True)
    with_headers = await channel.get(queue, no_ack=True)
    assert plain is not None and plain.properties.headers is None
    assert plain.headers == {} and plain.headers.get("a") is None
    assert with_headers is not None and with_headers.headers == {"a": 1}


async def test_exchanges_route_and_bindings_can_be_removed(channel: Channel, unique: str) -> None:
    topic, fanout = unique + ".topic", unique + ".fanout"
    await channel.exchange_declare(topic, "topic")
    await channel.exchange_declare(fanout, "fanout")
    ok = await channel.queue_declare("", exclusive=True)
    await channel.queue_bind(ok.queue, topic, "orders.*")
    await channel.exchange_bind(fanout, topic, "audit.#")
    await channel.queue_bind(ok.queue, fanout)
    await channel.publish(b"a", exchange=topic, routing_key="orders.new")
    await channel.publish(b"b", exchange=topic, routing_key="audit.x.y")
    await channel.publish(b"c", exchange=topic, routing_key="other")
    assert (await channel.queue_declare(ok.queue, passive=True)).message_count == 2
    await channel.queue_unbind(ok.queue, topic, "orders.*")
    await channel.exchange_unbind(fanout, topic, "audit.#")
    with pytest.raises(MessageReturnedError):
        await channel.publish(b"d", exchange=topic, routing_key="orders.new", mandatory=True)
    assert await channel.queue_purge(ok.queue) == 2
    await channel.exchange_delete(fanout)
    await channel.exchange_delete(topic)


async def test_server_named_queue_gets_a_name_and_delete_reports_its_count(
    channel: Channel,
) -> None:
    ok = await channel.queue_declare("")
    assert ok.queue.startswith("amq.gen-")
    await channel.publish(b"x", routing_key=ok.queue)
    assert await channel.queue_delete(ok.queue) == 1


async def test_passive_declare_of_missing_queue_raises_not_found(
    connection: Connection, unique: str
) -> None:
    channel = await connection.channel()
    with pytest.raises(NotFoundError) as info:
        await channel.queue_declare(unique, passive=True)
    assert info.value.reply_code == 404 and unique in info.value.reply_text
    assert info.value.scope == "channel" and info.value.method == "queue.declare"
    with pytest.raises(ChannelClosedError) as closed:
        await channel.publish(b"x", routing_key=unique)
    assert isinstance(closed.value.__cause__, NotFoundError)
    assert connection.is_open
    await (await connection.channel()).queue_declare("", exclusive=True)


async def test_redeclare_with_other_arguments_raises_precondition_failed(
    connection: Connection, queue: str
) -> None:
    channel = await connection.channel()
    with pytest.raises(PreconditionFailedError, match="inequivalent arg 'durable'"):
        await channel.queue_declare(queue, durable=True)


async def test_reserved_names_raise_access_refused(connection: Connection) -> None:
    channel = await connection.channel()
    with pytest.raises(AccessRefusedError, match="amq"):
        await channel.queue_declare("amq.leveret-test")


async def test_exclusive_queue_of_another_connection_raises_resource_locked(
    connection: Connection, amqp_url: str, unique: str
) -> None:
    await (await connection.channel()).queue_declare(unique, exclusive=True)
    async with await connect(amqp_url) as other:
        with pytest.raises(ResourceLockedError):
            await (await other.channel()).queue_declare(unique, exclusive=True)


async def test_body_of_the_wrong_type_is_refused_before_sending(channel: Channel) -> None:
    with pytest.raises(ConfigurationError, match="must be bytes, not str"):
        await channel.publish("text", routing_key="q")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="routing key is 300 bytes"):
        await channel.publish(b"x", routing_key="r" * 300)
    assert channel.is_open


async def test_channel_without_confirms_publishes_without_waiting(
    connection: Connection, queue: str
) -> None:
    channel = await connection.channel(publisher_confirms=False)
    for i in range(100):
        await channel.publish(b"%d" % i, routing_key=queue)
    confirmed = await connection.channel()
    await confirmed.publish(b"last", routing_key=queue)

    async def all_there() -> bool:
        return (await confirmed.queue_declare(queue, passive=True)).message_count == 101

    await wait_until(all_there, 5, "the 100 unconfirmed messages and the confirmed one")


def _message_count_seen_elsewhere(queue: str, want: int, within: float) -> int:
    """The queue's message count as another connection sees it, polled (up to ``within``
    seconds, until ``want``) from another thread while the caller's event loop is held."""

    async def poll() -> int:
        async with await connect(AMQP_URL, name="test other thread") as other:
            channel = await other.channel()
            deadline = time.monotonic() + within
            while True:
                count = (await channel.queue_declare(queue, passive=True)).message_count
                if count >= want or time.monotonic() > deadline:
                    return count
                await asyncio.sleep(0.02)

    counts: list[int] = []
    thread = threading.Thread(target=lambda: counts.append(asyncio.run(poll())))
    thread.start()
    thread.join()
    return counts[0]


async def test_flush_sends_what_was_written_without_waiting_for_the_loop_turn(
    connection: Connection, queue: str
) -> None:
    channel = await connection.channel(publisher_confirms=False)
    await channel.publish(b"now", routing_key=queue)
    channel.flush()
    # From here this event loop runs nothing more: only flush() can have sent it.
    assert _message_count_seen_elsewhere(queue, want=1, within=3.0) == 1


async def test_closing_a_channel_leaves_the_connection_usable(connection: Connection) -> None:
    channel = await connection.channel()
    await channel.close()
    await channel.close()
    assert channel.is_closed
    other = await connection.channel()
    assert other.number == channel.number
    await other.queue_declare("", exclusive=True)


async def test_closing_a_channel_as_the_broker_closes_it_over_an_error_keeps_the_connection(
    connection: Connection, queue: str, unique: str
) -> None:
    # The broker's channel.close (404) and ours cross; the broker still answers ours
    # with a close-ok, which must not land on a freed (or reused) channel number.
    for _ in range(3):
        channel = await connection.channel()
        declare = asyncio.ensure_future(channel.queue_declare(f"{unique}-missing", passive=True))
        await asyncio.sleep(0)  # the declare is written first
        await channel.close()
        with pytest.raises(NotFoundError):
            await declare
    other = await connection.channel()  # the number is free again and the connection works
    await other.publish(b"after", routing_key=queue)
    assert not connection.is_closed
    assert (await other.queue_declare(queue, passive=True)).message_count == 1


async def test_a_return_fails_the_publish_it_belongs_to_among_identical_bodies(
    channel: Channel, queue: str, unique: str
) -> None:
    # The same body to two destinations: only the destination tells the returns apart.
    results = await asyncio.gather(
        *(
            channel.publish(
                b"same", routing_key=queue if i % 2 else unique + "-none", mandatory=True
            )
            for i in range(20)
        ),
        return_exceptions=True,
    )
    failed = [i for i, result in enumerate(results) if isinstance(result, MessageReturnedError)]
    assert failed == list(range(0, 20, 2))
    assert (await channel.queue_declare(queue, passive=True)).message_count == 10


async def test_a_channel_whose_opening_is_cancelled_does_not_spoil_the_next_one(
    connection: Connection, unique: str
) -> None:
    opening = asyncio.ensure_future(connection.channel())
    await asyncio.sleep(0)  # channel.open is on its way, the open-ok is not back yet
    opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await opening
    channel = await connection.channel()  # would reuse the number before it was closed
    await channel.queue_declare(unique)
    assert (await channel.queue_declare(unique, passive=True)).queue == unique
    assert not connection.is_closed
    await channel.queue_delete(unique)


async def test_publish_many_queues_every_message_with_its_own_id_and_the_shared_properties(
    channel: Channel, queue: str
) -> None:
    bodies = [str(i).encode() for i in range(600)]  # more than one batch of writes
    results = await channel.publish_many(
        bodies,
        routing_key=queue,
        properties=Properties(content_type="text/plain", priority=2, app_id="bulk"),
        message_ids=[f"m{i}" for i in range(600)],
    )
    assert results == [None] * 600
    first = await channel.get(queue, no_ack=True)
    assert first is not None and first.body == b"0"
    assert first.properties == Properties(
        content_type="text/plain", priority=2, app_id="bulk", message_id="m0"
    )
    assert (await channel.queue_declare(queue, passive=True)).message_count == 599


async def test_publish_many_says_which_messages_were_refused(channel: Channel, unique: str) -> None:
    await channel.queue_declare(
        unique, exclusive=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
    )
    results = await channel.publish_many([b"1", b"2", b"3"], routing_key=unique)
    assert results[0] is None
    assert all(isinstance(error, PublishNackedError) for error in results[1:])
    returned = await channel.publish_many([b"x"], routing_key=f"{unique}-none", mandatory=True)
    assert isinstance(returned[0], MessageReturnedError)


async def test_publish_many_sends_nothing_when_one_message_id_cannot_be_encoded(
    channel: Channel, queue: str
) -> None:
    with pytest.raises(ConfigurationError, match="message_id"):
        await channel.publish_many([b"1", b"2"], routing_key=queue, message_ids=["fine", "x" * 300])
    with pytest.raises(ValueError, match="1 message ids or headers for 2"):
        await channel.publish_many([b"1", b"2"], routing_key=queue, message_ids=["one"])
    assert (await channel.queue_declare(queue, passive=True)).message_count == 0
