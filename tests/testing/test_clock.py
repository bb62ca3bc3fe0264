"""The broker's clock: ``advance`` lets hours pass in a test at once, expiries in order."""

from __future__ import annotations

import datetime
import time

import pytest

from leveret.amqp import Delivery
from leveret.exceptions import ConfigurationError, NotFoundError
from leveret.patterns import Master, RetryPolicy
from leveret.testing import MemoryBroker, MemoryChannel, drain
from tests.support.waiting import wait_until
from tests.testing.conftest import Collector

HOUR = 3600


def _dead_letters_to(queue: str, **arguments: object) -> dict[str, object]:
    return {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": queue, **arguments}


async def test_a_one_hour_ttl_expires_when_the_clock_is_advanced_an_hour(
    leveret_broker: MemoryBroker, leveret_channel: MemoryChannel
) -> None:
    await leveret_channel.queue_declare("later")
    await leveret_channel.queue_declare("waiting", arguments=_dead_letters_to("later"))
    await leveret_channel.publish(b"in an hour", routing_key="waiting", expiration=HOUR * 1000)
    leveret_broker.advance(HOUR - 1)
    assert leveret_broker.queues["later"].message_count == 0
    leveret_broker.advance(1)
    assert [m.body for m in leveret_broker.queues["later"].messages()] == [b"in an hour"]
    assert leveret_broker.queues["waiting"].message_count == 0


async def test_expiries_through_several_queues_each_happen_at_their_own_time(
    leveret_broker: MemoryBroker, leveret_channel: MemoryChannel
) -> None:
    # 40 minutes, then 15 more, then 20 more: a ladder of TTL queues.
    await leveret_channel.queue_declare("done")
    await leveret_channel.queue_declare(
        "third", arguments=_dead_letters_to("done", **{"x-message-ttl": 20 * 60_000})
    )
    await leveret_channel.queue_declare(
        "second", arguments=_dead_letters_to("third", **{"x-message-ttl": 15 * 60_000})
    )
    await leveret_channel.queue_declare(
        "first", arguments=_dead_letters_to("second", **{"x-message-ttl": 40 * 60_000})
    )
    await leveret_channel.publish(b"climbing", routing_key="first")
    started = leveret_broker.clock.wall()
    leveret_broker.advance(HOUR)
    print(
        "A1", leveret_broker.queues["third"].next_due(), leveret_broker.clock.now()
    )  # 55 minutes in it reached "third"; due there at 75
    assert leveret_broker.queues["third"].message_count == 1
    leveret_broker.advance(15 * 60)
    (message,) = leveret_broker.queues["done"].messages()
    deaths = (message.properties.headers or {})["x-death"]
    assert [death["queue"] for death in deaths] == ["third", "second", "first"]
    times = [death["time"] for death in deaths]
    expected = [started + minutes * 60 for minutes in (75, 55, 40)]
    for when, due in zip(times, expected, strict=True):
        assert isinstance(when, datetime.datetime)
        assert abs(when.timestamp() - due) <= 2  # x-death times are whole seconds


async def test_a_consumer_gets_a_message_that_arrives_during_an_advance_before_it_expires(
    leveret_broker: MemoryBroker, leveret_channel: MemoryChannel
) -> None:
    await leveret_channel.queue_declare("work", arguments={"x-message-ttl": 60_000})
    await leveret_channel.queue_declare("delay", arguments=_dead_letters_to("work"))
    got = Collector(Delivery.ack)
    await leveret_channel.consume("work", got)
    await leveret_channel.publish(b"due", routing_key="delay", expiration=HOUR * 1000)
    leveret_broker.advance(2 * HOUR)  # an hour past its arrival: a consumer was there
    await got.wait_for(1)
    assert got.bodies == [b"due"]


async def test_an_unused_queue_goes_after_its_x_expires_and_a_used_one_stays(
    leveret_broker: MemoryBroker, leveret_channel: MemoryChannel
) -> None:
    await leveret_channel.queue_declare("idle", arguments={"x-expires": HOUR * 1000})
    await leveret_channel.queue_declare("busy", arguments={"x-expires": HOUR * 1000})
    await leveret_channel.queue_declare("fetched", arguments={"x-expires": HOUR * 1000})
    await leveret_channel.consume("busy", lambda _: None)
    leveret_broker.advance(HOUR - 10)
    await leveret_channel.get("fetched")  # a basic.get counts as use
    leveret_broker.advance(10)
    assert set(leveret_broker.queues) == {"busy", "fetched"}
    with pytest.raises(NotFoundError, match="no queue 'idle'"):
        await leveret_channel.queue_declare("idle", passive=True)


async def test_the_real_clock_still_expires_short_ttls_and_time_never_goes_back(
    leveret_broker: MemoryBroker, leveret_channel: MemoryChannel
) -> None:
    await leveret_channel.queue_declare("dead")
    await leveret_channel.queue_declare("short", arguments=_dead_letters_to("dead"))
    leveret_broker.advance(HOUR)
    await leveret_channel.publish(b"soon", routing_key="short", expiration=20)
    await drain("short", broker=leveret_broker)
    assert leveret_broker.queues["dead"].message_count == 1
    assert leveret_broker.clock.wall() - time.time() == pytest.approx(HOUR, abs=1)
    with pytest.raises(ConfigurationError, match="would move time back"):
        leveret_broker.advance(-1)


async def test_a_task_retried_in_an_hour_runs_again_when_the_hour_is_advanced(
    leveret_broker: MemoryBroker, leveret_master: Master
) -> None:
    runs: list[int] = []

    def flaky(*, n: int) -> None:
        runs.append(n)
        if len(runs) == 1:
            raise RuntimeError("not yet")

    policy = RetryPolicy(max_attempts=2, backoff=HOUR, max_delay=HOUR, jitter=0)
    await leveret_master.create_worker("flaky", flaky, retries=policy)
    await leveret_master.proxy.flaky(n=1)
    await wait_until(
        lambda: any(q.message_count for q in leveret_broker.queues.values()), 5, "the retry to wait"
    )
    assert runs == [1]
    leveret_broker.advance(HOUR)
    await wait_until(lambda: len(runs) == 2, 5, "the retry to run")
    await drain(leveret_master)
    assert runs == [1, 1]
