"""Transactions (tx.select, commit, rollback): what RabbitMQ does, the in-memory broker does.

The expected records were taken from RabbitMQ 3.10; while leveret's AMQP channel
has no ``tx_select``, these run on the in-memory broker alone (see ``compare``).
"""

from __future__ import annotations

from leveret.amqp import ReturnedMessage
from tests.differential.harness import Side, compare
from tests.support.waiting import wait_until


async def test_publishes_and_acks_take_effect_at_commit_and_a_rollback_drops_them(
    url: str,
) -> None:
    async def scenario(broker: Side) -> None:
        queue = broker.name("q")
        observer = await broker.channel()
        await observer.queue_declare(queue)
        channel = await broker.channel(publisher_confirms=False)
        returned: list[ReturnedMessage] = []
        channel.return_callbacks.append(returned.append)
        await channel.tx_select()
        await channel.publish(b"a", routing_key=queue)
        await channel.publish(b"lost", routing_key=broker.prefix + "nowhere", mandatory=True)
        await broker.settle_down()
        broker.note("before commit", await broker.ready(observer, queue, 0), len(returned))
        await channel.tx_commit()
        await wait_until(lambda: returned, 10, "the unroutable publish's return")
        broker.note("after commit", await broker.ready(observer, queue, 1), returned[0].body)
        await channel.publish(b"b", routing_key=queue)
        await channel.tx_rollback()
        broker.note("after rollback", await broker.ready(observer, queue, 1))
        delivery = await channel.get(queue)
        assert delivery is not None
        delivery.ack()
        await channel.tx_rollback()  # the ack is gone: the message is unacked again
        broker.note("ack rolled back", await broker.ready(observer, queue, 0))
        await channel.close()  # so it is requeued
        await broker.ready(observer, queue, 1)
        again = await observer.get(queue, no_ack=True)
        broker.note("requeued", again.body, again.redelivered)
        channel = await broker.channel(publisher_confirms=False)
        await channel.tx_select()
        await channel.publish(b"c", routing_key=queue)
        delivery = await channel.get(queue)
        assert delivery is None  # not there before the commit
        await channel.tx_commit()
        delivery = await channel.get(queue)
        assert delivery is not None
        delivery.ack()
        await channel.tx_commit()
        broker.note("acked in a transaction", delivery.body, await broker.ready(observer, queue, 0))

    assert await compare(url, scenario, needs="tx_select") == [
        ("before commit", 0, 0),
        ("after commit", 1, b"lost"),
        ("after rollback", 1),
        ("ack rolled back", 0),
        ("requeued", b"a", True),
        ("acked in a transaction", b"c", 0),
    ]


async def test_transactions_are_refused_on_a_confirming_channel_and_commit_needs_select(
    url: str,
) -> None:
    async def scenario(broker: Side) -> None:
        channel = await broker.channel()
        await broker.attempt("select with confirms", channel.tx_select())
        broker.note("channel open" if channel.is_open else "channel closed")
        channel = await broker.channel(publisher_confirms=False)
        await broker.attempt("commit without select", channel.tx_commit())
        channel = await broker.channel(publisher_confirms=False)
        await broker.attempt("rollback without select", channel.tx_rollback())

    # Both clients refuse these before sending them (RabbitMQ would close the channel:
    # 406 "cannot switch from confirm to tx mode", 406 "channel is not transactional").
    assert await compare(url, scenario, needs="tx_select") == [
        ("select with confirms", "ConfigurationError"),
        "channel open",
        ("commit without select", "ConfigurationError"),
        ("rollback without select", "ConfigurationError"),
    ]
