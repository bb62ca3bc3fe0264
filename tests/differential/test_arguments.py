"""Arguments, names and properties RabbitMQ 3.10 refuses, refused alike by both brokers."""

from __future__ import annotations

from typing import Any

import pytest

from tests.differential.harness import Side, compare

INVALID_QUEUE_ARGUMENTS: list[tuple[str, dict[str, Any], str]] = [
    ("classic", {"x-message-ttl": -1}, "{value_negative,-1}"),
    ("classic", {"x-message-ttl": "10"}, '"expected integer, got longstr"'),
    ("classic", {"x-message-ttl": 1.5}, '"expected integer, got double"'),
    ("classic", {"x-message-ttl": 315_360_000_001}, "{value_too_large,315360000001}"),
    ("classic", {"x-expires": 0}, "{value_zero,0}"),
    ("classic", {"x-max-length": -1}, "{value_negative,-1}"),
    ("classic", {"x-max-length-bytes": "1"}, '"expected integer, got longstr"'),
    ("classic", {"x-max-priority": 300}, "{max_value_exceeded,300}"),
    ("classic", {"x-overflow": "weird"}, "invalid_overflow"),
    ("classic", {"x-overflow": 1}, "{unacceptable_type,signedint}"),
    ("classic", {"x-dead-letter-routing-key": "k"}, "routing_key_but_no_dlx_defined"),
    ("classic", {"x-queue-mode": "weird"}, "\"unsupported queue mode 'weird'\""),
    ("classic", {"x-queue-version": 3}, "\"unsupported queue version '3'\""),
    ("classic", {"x-delivery-limit": 5}, "of queue type rabbit_classic_queue"),
    ("quorum", {"x-max-priority": 5}, "of queue type rabbit_quorum_queue"),
    ("quorum", {"x-queue-mode": "lazy"}, "of queue type rabbit_quorum_queue"),
    ("quorum", {"x-dead-letter-strategy": "weird"}, "invalid_dlx_strategy"),
]


@pytest.mark.parametrize(("queue_type", "arguments", "detail"), INVALID_QUEUE_ARGUMENTS)
async def test_an_invalid_queue_argument_is_refused_with_rabbitmqs_words(
    url: str, queue_type: str, arguments: dict[str, Any], detail: str
) -> None:
    async def scenario(broker: Side) -> None:
        channel = await broker.channel()
        await broker.attempt(
            "declare",
            channel.queue_declare(
                broker.name("q"),
                durable=True,
                arguments={"x-queue-type": queue_type, **arguments},
            ),
        )
        broker.note("channel open" if channel.is_open else "channel closed")

    (what, code, text, scope), closed = await compare(url, scenario)
    assert (what, code, scope, closed) == ("declare", 406, "channel", "channel closed")
    assert text.startswith("PRECONDITION_FAILED - invalid arg")
    assert text.endswith(detail)


async def test_accepted_arguments_and_the_ones_a_redeclare_must_repeat(url: str) -> None:
    async def scenario(broker: Side) -> None:
        queue = broker.name("q")
        channel = await broker.channel()
        for arguments in (
            {"x-max-priority": 255, "x-queue-mode": "lazy", "x-overflow": "reject-publish-dlx"},
            {"x-custom": 1, "x-message-ttl": 315_360_000_000},
        ):
            other = broker.name(f"ok{len(arguments)}")
            await broker.attempt("accepted", channel.queue_declare(other, arguments=arguments))
        await channel.queue_declare(queue)
        await broker.attempt(
            "unknown argument added", channel.queue_declare(queue, arguments={"x-custom": 1})
        )
        for arg, value in (("x-queue-version", 2), ("x-queue-master-locator", "min-masters")):
            channel = await broker.channel()
            await broker.attempt(
                f"{arg} added", channel.queue_declare(queue, arguments={arg: value})
            )

    assert await compare(url, scenario) == [
        ("accepted", "ok"),
        ("accepted", "ok"),
        ("unknown argument added", "ok"),
        (
            "x-queue-version added",
            406,
            "PRECONDITION_FAILED - inequivalent arg 'x-queue-version' for queue 'q' in vhost "
            "'/': received the value '2' of type 'signedint' but current is none",
            "channel",
        ),
        (
            "x-queue-master-locator added",
            406,
            "PRECONDITION_FAILED - inequivalent arg 'x-queue-master-locator' for queue 'q' in "
            "vhost '/': received the value 'min-masters' of type 'longstr' but current is none",
            "channel",
        ),
    ]


async def test_expirations_are_read_as_rabbitmq_reads_them(url: str) -> None:
    async def scenario(broker: Side) -> None:
        queue = broker.name("q")
        channel = await broker.channel()
        await channel.queue_declare(queue)
        for expiration in (" 100", "1_000", "1e3", "10.0", "", "+5", "-0", "00012"):
            if not channel.is_open:
                channel = await broker.channel()
            await broker.attempt(
                repr(expiration), channel.publish(b"x", routing_key=queue, expiration=expiration)
            )

    def refused(value: str, problem: str) -> tuple[str, str, int, str]:
        return (
            repr(value),
            "PublishNotConfirmedError",
            406,
            f"PRECONDITION_FAILED - invalid expiration '{value}': {problem}",
        )

    assert await compare(url, scenario) == [
        refused(" 100", "no_integer"),
        refused("1_000", '{leftover_string,"_000"}'),
        refused("1e3", '{leftover_string,"e3"}'),
        refused("10.0", '{leftover_string,".0"}'),
        refused("", "no_integer"),
        ("'+5'", "ok"),
        ("'-0'", "ok"),
        ("'00012'", "ok"),
    ]


async def test_names_and_system_exchanges_are_guarded(url: str) -> None:
    async def scenario(broker: Side) -> None:
        channel = await broker.channel()
        await broker.attempt("delete amq.direct", channel.exchange_delete("amq.direct"))
        channel = await broker.channel()
        await broker.attempt(
            "redeclare amq.direct", channel.exchange_declare("amq.direct", durable=True)
        )
        await broker.attempt(
            "redeclare amq.direct otherwise", channel.exchange_declare("amq.direct")
        )
        channel = await broker.channel()
        await broker.attempt(
            "amq.headers exists", channel.exchange_declare("amq.headers", passive=True)
        )

    assert await compare(url, scenario) == [
        (
            "delete amq.direct",
            403,
            "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' not allowed",
            "channel",
        ),
        ("redeclare amq.direct", "ok"),
        (
            "redeclare amq.direct otherwise",
            406,
            "PRECONDITION_FAILED - inequivalent arg 'durable' for exchange 'amq.direct' in "
            "vhost '/': received 'false' but current is 'true'",
            "channel",
        ),
        ("amq.headers exists", "ok"),
    ]


async def test_a_prefetch_size_closes_the_connection(url: str) -> None:
    async def scenario(broker: Side) -> None:
        connection = await broker.connection()
        channel = await connection.channel()
        await broker.attempt("qos", channel.qos(1, prefetch_size=10))
        broker.note("connection open" if connection.is_open else "connection closed")

    assert await compare(url, scenario) == [
        ("qos", 540, "NOT_IMPLEMENTED - prefetch_size!=0 (10)", "connection"),
        "connection closed",
    ]


async def test_an_empty_queue_name_means_the_channels_last_declared_queue(url: str) -> None:
    async def scenario(broker: Side) -> None:
        channel = await broker.channel()
        await broker.attempt("purge before any declare", channel.queue_purge(""))
        channel = await broker.channel()
        queue = broker.name("last")
        await channel.queue_declare(queue)
        await channel.publish(b"x", routing_key=queue)
        await channel.queue_bind("", "amq.direct", broker.prefix + "key")
        await channel.publish(b"y", exchange="amq.direct", routing_key=broker.prefix + "key")
        await broker.ready(channel, queue, 2)
        delivery = await channel.get("", no_ack=True)
        broker.note("get", delivery.body, delivery.message_count)
        broker.note("purge", await channel.queue_purge(""))

    assert await compare(url, scenario) == [
        ("purge before any declare", 404, "NOT_FOUND - no previously declared queue", "channel"),
        ("get", b"x", 1),
        ("purge", 1),
    ]


async def test_a_reply_text_longer_than_255_bytes_is_cut_as_the_broker_cuts_it(url: str) -> None:
    async def scenario(broker: Side) -> None:
        channel = await broker.channel()
        missing = broker.prefix + "m" * (250 - len(broker.prefix))
        await broker.attempt("passive", channel.queue_declare(missing, passive=True))

    ((what, code, text, scope),) = await compare(url, scenario)
    assert (what, code, scope) == ("passive", 404, "channel")
    assert text.startswith("NOT_FOUND - no queue 'mmm")
    assert text.endswith("mmm...")  # 252 bytes and the mark of the cut
