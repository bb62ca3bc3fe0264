"""Dead-lettering: where messages go and the headers they carry, the same on both brokers."""

from __future__ import annotations

from typing import Any

from leveret.amqp import Delivery
from tests.differential.harness import Side, compare


def _deaths(delivery: Delivery) -> tuple[Any, ...]:
    headers = dict(delivery.headers)
    deaths = [
        {key: value for key, value in death.items() if key != "time"}
        for death in headers.pop("x-death", [])
    ]
    return delivery.body, delivery.exchange, delivery.routing_key, deaths, headers


async def test_expired_rejected_and_overflowing_messages_carry_rabbitmqs_x_death(
    url: str,
) -> None:
    async def scenario(broker: Side) -> None:
        channel = await broker.channel()
        dead, source = broker.name("dead"), broker.name("source")
        dlx = broker.exchange("dlx")
        await channel.exchange_declare(dlx, "topic")
        await channel.queue_declare(dead)
        await channel.queue_bind(dead, dlx, "#")
        await channel.queue_declare(
            source,
            arguments={"x-dead-letter-exchange": dlx, "x-max-length": 2, "x-message-ttl": 60_000},
        )
        await channel.publish(b"expired", routing_key=source, expiration=1, headers={"h": 1})
        await broker.ready(channel, dead, 1)
        await channel.publish(b"rejected", routing_key=source)
        delivery = await channel.get(source)
        delivery.reject(requeue=False)
        await broker.ready(channel, dead, 2)
        for body in (b"oldest", b"middle", b"newest"):  # a length of 2: the oldest goes
            await channel.publish(body, routing_key=source)
        await broker.ready(channel, dead, 3)
        for letter in await broker.get_all(channel, dead):
            broker.note(_deaths(letter))
        # Around again: the same (queue, reason) entry counts up.
        await channel.queue_purge(source)
        await channel.publish(b"twice", routing_key=source, expiration=1)
        await broker.ready(channel, dead, 1)
        (first,) = await broker.get_all(channel, dead)
        await channel.publish(
            first.body, routing_key=source, properties=first.properties.replace(expiration="1")
        )
        await broker.ready(channel, dead, 1)
        (second,) = await broker.get_all(channel, dead)
        broker.note(_deaths(second))

    def death(reason: str, **extra: Any) -> dict[str, Any]:
        return {
            "count": 1,
            "reason": reason,
            "queue": "source",
            "exchange": "",
            "routing-keys": ["source"],
            **extra,
        }

    def first(reason: str) -> dict[str, Any]:
        return {
            "x-first-death-exchange": "",
            "x-first-death-queue": "source",
            "x-first-death-reason": reason,
        }

    assert await compare(url, scenario) == [
        (
            b"expired",
            "dlx",
            "source",
            [death("expired", **{"original-expiration": "1"})],
            {"h": 1, **first("expired")},
        ),
        (b"rejected", "dlx", "source", [death("rejected")], first("rejected")),
        (b"oldest", "dlx", "source", [death("maxlen")], first("maxlen")),
        (
            b"twice",
            "dlx",
            "source",
            [death("expired", count=2, **{"original-expiration": "1"})],
            first("expired"),
        ),
    ]
