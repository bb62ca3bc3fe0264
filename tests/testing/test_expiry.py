"""TTLs, dead-lettering with x-death, quorum delivery limits and queue length limits."""

import asyncio
import datetime

import pytest

from leveret.exceptions import PublishNackedError, PublishNotConfirmedError
from leveret.testing import MemoryBroker, MemoryChannel, MemoryConnection, drain
from tests.testing.conftest import Collector, publish_all

DLX = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dead"}


async def _declare_with_dead_letters(
    channel: MemoryChannel, queue: str, **arguments: object
) -> None:
    await channel.queue_declare("dead")
    await channel.queue_declare(queue, arguments={**DLX, **arguments})


async def test_an_expired_message_is_dead_lettered_with_an_x_death_like_rabbitmqs(
    leveret_broker: MemoryBroker, leveret_channel: MemoryChannel
) -> None:
    await _declare_with_dead_letters(leveret_channel, "src")
    await leveret_channel.publish(
        b"x", routing_key="src", expiration=20, headers={"a": 1}, message_id="m1"
    )
    await drain("src", broker=leveret_broker)  # the TTL runs on the loop's clock
    delivery = await leveret_channel.get("dead", no_ack=True)
    assert delivery is not None
    assert (delivery.exchange, delivery.routing_key) == ("", "dead")
    props = delivery.properties
    assert props.expiration is None and props.message_id == "m1"
    headers = delivery.headers
    (death,) = headers["x-death"]
    assert isinstance(death.pop("time"), datetime.datetime)
    assert death == {
        "count": 1,
        "reason": "expired",
        "queue": "src",
        "exchange": "",
        "routing-keys": ["src"],
        "original-expiration": "20",
    }
    assert headers["a"] == 1
    assert headers["x-first-death-queue"] == "src"
    assert headers["x-first-death-reason"] == "expired"
    assert headers["x-first-death-exchange"] == ""
    # Back through the same queue: the same entry counts up.
    await leveret_channel.publish(
        delivery.body, routing_key="src", properties=props.replace(expiration=5)
    )
    await drain("src", broker=leveret_broker)
    again = await leveret_channel.get("dead", no_ack=True)
    assert again is not None
    (death,) = again.headers["x-death"]
    assert death["count"] == 2


async def test_a_queue_ttl_expires_messages_and_only_the_head_expires(
    leveret_broker: MemoryBroker, leveret_channel: MemoryChannel
) -> None:
    await _declare_with_dead_letters(leveret_channel, "slow", **{"x-message-ttl": 10_000})
    await leveret_channel.publish(b"long", routing_key="slow")  # queue TTL: 10 s
    await leveret_channel.publish(b"short", routing_key="slow", expiration=1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError, match="queue 'slow': 2 ready"):
        await drain("slow", broker=leveret_broker, timeout=0.1)
    assert loop.time() - started < 1  # the short one waits behind the long one
    await leveret_channel.queue_declare("fast", arguments={**DLX, "x-message-ttl": 5})
    await publish_all(leveret_channel, "fast", b"1", b"2")
    await drain("fast", broker=leveret_broker)
    dead = leveret_broker.queues["dead"].messages()
    assert [m.body for m in dead] == [b"1", b"2"]
    assert all((m.properties.headers or {})["x-death"][0]["queue"] == "fast" for m in dead)


async def test_rejected_messages_are_dead_lettered_and_requeued_ones_are_not(
    leveret_broker: MemoryBroker, leveret_channel: MemoryChannel
) -> None:
    await _declare_with_dead_letters(leveret_channel, "work")
    await publish_all(leveret_channel, "work", b"nack", b"reject", b"requeue")
    nacked, rejected, requeued = [await leveret_channel.get("work") for _ in range(3)]
    assert nacked and rejected and requeued
    nacked.nack(requeue=False)
    rejected.reject()
    requeued.nack(requeue=True)
    dead = leveret_broker.queues["dead"].messages()
    assert [m.body for m in dead] == [b"nack", b"reject"]
    assert [(m.properties.headers or {})["x-death"][0]["reason"] for m in dead] == ["rejected"] * 2
    assert leveret_broker.queues["work"].message_count == 1


async def test_a_dead_letter_cycle_without_rejections_is_broken(
    leveret_broker: MemoryBroker, leveret_channel: MemoryChannel
) -> None:
    # Two queues that expire into each other would pass a message around forever.
    await leveret_channel.queue_declare(
        "ping", arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "pong"}
    )
    await leveret_channel.queue_declare(
        "pong",
        arguments={
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "ping",
            "x-message-ttl": 1,
        },
    )
    await leveret_channel.publish(b"x", routing_key="ping", expiration=1)
    await drain("ping", "pong", broker=leveret_broker)
    assert leveret_broker.queues["ping"].message_count == 0


async def test_a_quorum_queue_counts_returns_and_dead_letters_past_its_delivery_limit(
    leveret_broker: MemoryBroker, leveret_channel: MemoryChannel
) -> None:
    await leveret_channel.queue_declare("dead")
    await leveret_channel.queue_declare(
        "qq", durable=True, arguments={"x-queue-type": "quorum", "x-delivery-limit": 2, **DLX}
    )
    seen = Collector(lambda d: d.nack(requeue=True))
    await leveret_channel.consume("qq", seen)
    await publish_all(leveret_channel, "qq", b"z")
    await drain("qq", broker=leveret_broker)
    counts = [d.headers.get("x-delivery-count") for d in seen.deliveries]
    assert counts == [None, 1, 2]
    assert [d.redelivered for d in seen.deliveries] == [False, True, True]
    (dead,) = leveret_broker.queues["dead"].messages()
    death = (dead.properties.headers or {})["x-death"][0]
    assert (death["reason"], death["queue"]) == ("delivery_limit", "qq")
    assert "x-delivery-count" not in (dead.properties.headers or {})


async def test_basic_get_on_a_quorum_queue_always_carries_the_delivery_count(
    leveret_channel: MemoryChannel,
) -> None:
    await leveret_channel.queue_declare("qq", durable=True, arguments={"x-queue-type": "quorum"})
    await leveret_channel.publish(b"z", routing_key="qq")
    first = await leveret_channel.get("qq")
    assert first is not None and first.headers == {"x-delivery-count": 0}
    first.nack(requeue=True)
    second = await leveret_channel.get("qq", no_ack=True)
    assert second is not None and second.headers["x-delivery-count"] == 1


async def test_max_length_drops_the_head_or_refuses_the_publish(
    leveret_broker: MemoryBroker, leveret_channel: MemoryChannel
) -> None:
    await _declare_with_dead_letters(leveret_channel, "capped", **{"x-max-length": 2})
    await publish_all(leveret_channel, "capped", b"1", b"2", b"3")
    assert [m.body for m in leveret_broker.queues["capped"].messages()] == [b"2", b"3"]
    dead = leveret_broker.queues["dead"].messages()
    assert [m.body for m in dead] == [b"1"]
    assert (dead[0].properties.headers or {})["x-death"][0]["reason"] == "maxlen"
    await leveret_channel.queue_declare(
        "strict", arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
    )
    await leveret_channel.publish(b"1", routing_key="strict")
    with pytest.raises(PublishNackedError, match=r"\(basic\.nack\)"):
        await leveret_channel.publish(b"2", routing_key="strict")
    assert leveret_channel.is_open


@pytest.mark.parametrize(
    ("expiration", "words"),
    [("abc", "invalid expiration 'abc': no_integer"), ("-5", "{value_negative,-5}")],
)
async def test_an_invalid_expiration_closes_the_channel(
    leveret_connection: MemoryConnection, expiration: str, words: str
) -> None:
    channel = await leveret_connection.channel()
    await channel.queue_declare("q")
    with pytest.raises(PublishNotConfirmedError, match=words):
        await channel.publish(b"x", routing_key="q", expiration=expiration)
    assert channel.is_closed


async def test_an_expiration_of_zero_drops_a_message_at_once(
    leveret_broker: MemoryBroker, leveret_channel: MemoryChannel
) -> None:
    await _declare_with_dead_letters(leveret_channel, "q")
    await leveret_channel.publish(b"now", routing_key="q", expiration=0)
    await drain("q", broker=leveret_broker)
    assert [m.body for m in leveret_broker.queues["dead"].messages()] == [b"now"]


async def test_an_at_least_once_dead_letter_with_nowhere_to_go_is_dropped_with_a_warning(
    leveret_broker: MemoryBroker, leveret_channel: MemoryChannel, caplog: pytest.LogCaptureFixture
) -> None:
    arguments = {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "missing",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
    await leveret_channel.queue_declare("q", durable=True, arguments=arguments)
    await leveret_channel.publish(b"x", routing_key="q")
    delivery = await leveret_channel.get("q")
    assert delivery is not None
    delivery.reject(requeue=False)
    assert "RabbitMQ would keep it (at-least-once)" in caplog.text
    assert leveret_broker.queues["q"].message_count == 0
