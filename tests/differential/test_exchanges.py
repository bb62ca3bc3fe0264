"""Exchange-to-exchange bindings, alternate and internal exchanges: the same on both brokers."""

from __future__ import annotations

from tests.differential.harness import Side, compare


async def test_messages_route_through_chains_of_topic_direct_and_fanout_exchanges(
    url: str,
) -> None:
    async def scenario(broker: Side) -> None:
        channel = await broker.channel()
        topic, direct, fanout = (broker.exchange(n) for n in ("topic", "direct", "fanout"))
        await channel.exchange_declare(topic, "topic")
        await channel.exchange_declare(direct, "direct")
        await channel.exchange_declare(fanout, "fanout")
        chained, everything = broker.name("chained"), broker.name("everything")
        for queue in (chained, everything):
            await channel.queue_declare(queue)
        await channel.exchange_bind(direct, topic, "a.*")
        await channel.exchange_bind(fanout, direct, "a.b")
        await channel.queue_bind(chained, fanout)
        await channel.queue_bind(everything, topic, "#")
        for key in ("a.b", "a.c", "b.b"):
            await channel.publish(key.encode(), exchange=topic, routing_key=key)
        await broker.ready(channel, everything, 3)
        for queue in (chained, everything):
            deliveries = await broker.get_all(channel, queue)
            broker.note(queue, [(d.body, d.exchange, d.routing_key) for d in deliveries])

    assert await compare(url, scenario) == [
        ("chained", [(b"a.b", "topic", "a.b")]),
        (
            "everything",
            [(b"a.b", "topic", "a.b"), (b"a.c", "topic", "a.c"), (b"b.b", "topic", "b.b")],
        ),
    ]


async def test_a_loop_of_bindings_delivers_a_message_once_per_queue(url: str) -> None:
    async def scenario(broker: Side) -> None:
        channel = await broker.channel()
        one, two = broker.exchange("one"), broker.exchange("two")
        await channel.exchange_declare(one, "fanout")
        await channel.exchange_declare(two, "fanout")
        await channel.exchange_bind(two, one)
        await channel.exchange_bind(one, two)
        await channel.exchange_bind(one, one)
        queue = broker.name("q")
        await channel.queue_declare(queue)
        await channel.queue_bind(queue, one)
        await channel.queue_bind(queue, two)
        await channel.queue_bind(queue, two, "other key")
        await channel.publish(b"once", exchange=one, routing_key="")
        await broker.ready(channel, queue, 1)
        await broker.settle_down()
        broker.note([d.body for d in await broker.get_all(channel, queue)])

    assert await compare(url, scenario) == [[b"once"]]


async def test_unbinding_stops_routing_and_deleting_an_exchange_removes_its_bindings(
    url: str,
) -> None:
    async def scenario(broker: Side) -> None:
        channel = await broker.channel()
        source, middle = broker.exchange("source"), broker.exchange("middle")
        temporary = broker.exchange("temporary")
        await channel.exchange_declare(source, "direct")
        await channel.exchange_declare(middle, "fanout")
        await channel.exchange_declare(temporary, "fanout", auto_delete=True)
        queue = broker.name("q")
        await channel.queue_declare(queue)
        await channel.queue_bind(queue, middle)
        await channel.exchange_bind(middle, source, "k")
        await channel.exchange_bind(middle, source, "k", arguments={"x-any": 1})
        await channel.publish(b"bound twice", exchange=source, routing_key="k")
        await channel.exchange_unbind(middle, source, "k")
        await channel.publish(b"bound with arguments", exchange=source, routing_key="k")
        await channel.exchange_unbind(middle, source, "k", arguments={"x-any": 1})
        await channel.publish(b"unbound", exchange=source, routing_key="k")
        await broker.attempt("unbind again", channel.exchange_unbind(middle, source, "k"))
        await broker.attempt(
            "unbind missing exchanges",
            channel.exchange_unbind(broker.prefix + "none", broker.prefix + "nothing"),
        )
        # An auto-delete exchange goes when the exchange it was bound to goes.
        await channel.exchange_bind(middle, temporary)
        await channel.exchange_delete(middle)
        await broker.attempt(
            "auto-delete source", channel.exchange_declare(temporary, passive=True)
        )
        channel = await broker.channel()
        await broker.ready(channel, queue, 2)
        broker.note([d.body for d in await broker.get_all(channel, queue)])

    assert await compare(url, scenario) == [
        ("unbind again", "ok"),
        ("unbind missing exchanges", "ok"),
        (
            "auto-delete source",
            404,
            "NOT_FOUND - no exchange 'temporary' in vhost '/'",
            "channel",
        ),
        [b"bound twice", b"bound with arguments"],
    ]


async def test_binding_a_missing_or_the_default_exchange_is_refused(url: str) -> None:
    async def scenario(broker: Side) -> None:
        real = broker.exchange("real")
        missing = broker.prefix + "missing"
        channel = await broker.channel()
        await channel.exchange_declare(real, "topic")
        for what, source, destination in (
            ("missing destination", real, missing),
            ("missing source", missing, real),
            ("default source", "", real),
            ("default destination", real, ""),
        ):
            channel = await broker.channel()
            await broker.attempt(what, channel.exchange_bind(destination, source, "k"))
            broker.note(what, "channel open" if channel.is_open else "channel closed")

    assert await compare(url, scenario) == [
        ("missing destination", 404, "NOT_FOUND - no exchange 'missing' in vhost '/'", "channel"),
        ("missing destination", "channel closed"),
        ("missing source", 404, "NOT_FOUND - no exchange 'missing' in vhost '/'", "channel"),
        ("missing source", "channel closed"),
        (
            "default source",
            403,
            "ACCESS_REFUSED - operation not permitted on the default exchange",
            "channel",
        ),
        ("default source", "channel closed"),
        (
            "default destination",
            403,
            "ACCESS_REFUSED - operation not permitted on the default exchange",
            "channel",
        ),
        ("default destination", "channel closed"),
    ]


async def test_an_unroutable_message_goes_to_the_alternate_exchange_and_is_not_returned(
    url: str,
) -> None:
    async def scenario(broker: Side) -> None:
        channel = await broker.channel()
        alternate, main = broker.exchange("alternate"), broker.exchange("main")
        lost = broker.exchange("lost")
        await channel.exchange_declare(alternate, "fanout", internal=True)
        await channel.exchange_declare(main, "direct", arguments={"alternate-exchange": alternate})
        await channel.exchange_declare(
            lost, "direct", arguments={"alternate-exchange": broker.prefix + "missing"}
        )
        queue, routed = broker.name("unroutable"), broker.name("routed")
        await channel.queue_declare(queue)
        await channel.queue_declare(routed)
        await channel.queue_bind(queue, alternate)
        await channel.queue_bind(routed, main, "known")
        await broker.attempt(
            "unknown key",
            channel.publish(b"to alternate", exchange=main, routing_key="nope", mandatory=True),
        )
        await broker.attempt(
            "known key",
            channel.publish(b"to queue", exchange=main, routing_key="known", mandatory=True),
        )
        await broker.attempt(
            "missing alternate",
            channel.publish(b"lost", exchange=lost, routing_key="nope", mandatory=True),
        )
        for name in (queue, routed):
            deliveries = await broker.get_all(channel, name)
            broker.note(name, [(d.body, d.exchange, d.routing_key) for d in deliveries])

    assert await compare(url, scenario) == [
        ("unknown key", "ok"),
        ("known key", "ok"),
        ("missing alternate", "MessageReturnedError"),
        ("unroutable", [(b"to alternate", "main", "nope")]),
        ("routed", [(b"to queue", "main", "known")]),
    ]


async def test_an_exchange_bound_to_an_empty_exchange_does_not_use_its_alternate(
    url: str,
) -> None:
    async def scenario(broker: Side) -> None:
        channel = await broker.channel()
        alternate, main = broker.exchange("alternate"), broker.exchange("main")
        empty, second = broker.exchange("empty"), broker.exchange("second")
        await channel.exchange_declare(alternate, "fanout")
        await channel.exchange_declare(second, "fanout")
        await channel.exchange_declare(main, "fanout", arguments={"alternate-exchange": alternate})
        await channel.exchange_declare(empty, "direct", arguments={"alternate-exchange": second})
        queue = broker.name("q")
        await channel.queue_declare(queue)
        await channel.queue_bind(queue, alternate)
        await channel.exchange_bind(empty, main)
        await broker.attempt(
            "bound to empty",
            channel.publish(b"x", exchange=main, routing_key="k", mandatory=True),
        )
        await channel.queue_bind(queue, second)
        await broker.attempt(
            "empty's alternate",
            channel.publish(b"y", exchange=main, routing_key="k", mandatory=True),
        )
        broker.note([d.body for d in await broker.get_all(channel, queue)])

    assert await compare(url, scenario) == [
        ("bound to empty", "MessageReturnedError"),
        ("empty's alternate", "ok"),
        [b"y"],
    ]


async def test_publishing_to_an_internal_exchange_is_refused_and_closes_the_channel(
    url: str,
) -> None:
    async def scenario(broker: Side) -> None:
        channel = await broker.channel()
        internal = broker.exchange("internal")
        await channel.exchange_declare(internal, "fanout", internal=True)
        await broker.attempt("publish", channel.publish(b"x", exchange=internal, routing_key=""))
        broker.note("channel open" if channel.is_open else "channel closed")
        channel = await broker.channel()
        await broker.attempt("redeclare", channel.exchange_declare(internal, "fanout"))

    assert await compare(url, scenario) == [
        (
            "publish",
            "PublishNotConfirmedError",
            403,
            "ACCESS_REFUSED - cannot publish to internal exchange 'internal' in vhost '/'",
        ),
        "channel closed",
        (
            "redeclare",
            406,
            "PRECONDITION_FAILED - inequivalent arg 'internal' for exchange 'internal' in "
            "vhost '/': received 'false' but current is 'true'",
            "channel",
        ),
    ]


async def test_an_invalid_or_changed_alternate_exchange_is_refused(url: str) -> None:
    async def scenario(broker: Side) -> None:
        one, two = broker.exchange("one"), broker.exchange("two")
        channel = await broker.channel()
        await broker.attempt(
            "not a string",
            channel.exchange_declare(one, "fanout", arguments={"alternate-exchange": 5}),
        )
        channel = await broker.channel()
        await channel.exchange_declare(two, "fanout")
        await broker.attempt(
            "added",
            channel.exchange_declare(two, "fanout", arguments={"alternate-exchange": "x"}),
        )

    assert await compare(url, scenario) == [
        (
            "not a string",
            406,
            "PRECONDITION_FAILED - invalid type 'signedint' for arg 'alternate-exchange' in "
            "exchange 'one' in vhost '/'",
            "channel",
        ),
        (
            "added",
            406,
            "PRECONDITION_FAILED - inequivalent arg 'alternate-exchange' for exchange 'two' in "
            "vhost '/': received the value 'x' of type 'longstr' but current is none",
            "channel",
        ),
    ]
