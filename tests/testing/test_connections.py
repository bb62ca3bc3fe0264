"""memory:// URLs, the broker registry, connections, and brokers shared across event loops."""

import asyncio
import subprocess
import sys

import pytest

from leveret.exceptions import ChannelClosedError, ConfigurationError, ConnectionClosedError
from leveret.testing import MemoryBroker, connect_memory, drain, forget_brokers, get_broker


async def test_a_named_url_reaches_one_broker_and_a_bare_one_a_private_broker() -> None:
    try:
        first = await connect_memory("memory://shared")
        second = await connect_memory("memory://shared", name="worker", heartbeat=30)
        private = await connect_memory("memory://")
        assert first.broker is second.broker is get_broker("memory://shared")
        assert private.broker is not first.broker and private.broker.name == ""
        assert second.name == "worker"
        assert (await connect_memory("memory://shared?name=app")).name == "app"
        await (await first.channel()).queue_declare("q")
        ok = await (await second.channel()).queue_declare("q", passive=True)
        assert ok.queue == "q"
        forget_brokers("memory://shared")
        assert get_broker("memory://shared") is not first.broker
    finally:
        forget_brokers("shared")
        for broker in (first.broker, private.broker):
            await broker.close()


def test_urls_of_other_schemes_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="is not a memory:// URL"):
        get_broker("amqp://guest:guest@localhost/")


async def test_closing_a_connection_closes_its_channels_and_calls_back_once() -> None:
    broker = MemoryBroker()
    connection = await broker.connect()
    channel = await connection.channel()
    seen: list[tuple[object, BaseException | None]] = []
    connection.close_callbacks.append(lambda conn, reason: seen.append((conn, reason)))
    channel_reasons: list[BaseException | None] = []
    channel.close_callbacks.append(lambda _, reason: channel_reasons.append(reason))
    async with connection:
        assert connection.is_open and connection.blocked is None
    await connection.close()  # idempotent
    assert connection.is_closed and channel.is_closed
    assert seen == [(connection, None)]
    assert len(channel_reasons) == 1 and isinstance(channel_reasons[0], ConnectionClosedError)
    with pytest.raises(ConnectionClosedError):
        await connection.channel()
    with pytest.raises(ChannelClosedError):
        await channel.queue_declare("q")


async def test_channel_numbers_are_reused_once_free() -> None:
    broker = MemoryBroker()
    async with await broker.connect() as connection:
        one, two = await connection.channel(), await connection.channel()
        assert (one.number, two.number) == (1, 2)
        await one.close()
        assert (await connection.channel()).number == 1


def test_a_broker_moves_to_a_new_event_loop_with_its_messages_and_timers() -> None:
    broker = MemoryBroker("moving")

    async def first_loop() -> None:
        connection = await broker.connect()  # left open: its loop ends with this test part
        channel = await connection.channel()
        await channel.queue_declare("dead")
        await channel.queue_declare(
            "delay",
            arguments={
                "x-message-ttl": 50,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": "dead",
            },
        )
        await channel.publish(b"later", routing_key="delay")
        await channel.queue_declare("work")
        await channel.publish(b"held", routing_key="work")
        assert await channel.get("work") is not None  # unacked when the loop goes

    async def second_loop() -> None:
        async with await broker.connect() as connection:
            await drain("delay", broker=broker)  # the TTL timer runs on this loop now
            channel = await connection.channel()
            held = await channel.get("work", no_ack=True)
            assert held is not None and held.redelivered
            dead = await channel.get("dead", no_ack=True)
            assert dead is not None and dead.body == b"later"

    asyncio.run(first_loop())
    asyncio.run(second_loop())


def test_a_broker_in_use_on_a_running_loop_refuses_another_loop() -> None:
    broker = MemoryBroker()
    loop = asyncio.new_event_loop()
    try:
        connection = loop.run_until_complete(broker.connect())

        async def elsewhere() -> None:
            with pytest.raises(ConfigurationError, match="on another event loop"):
                await broker.connect()

        asyncio.run(elsewhere())
        loop.run_until_complete(connection.close())
    finally:
        loop.close()


def test_the_library_imports_pytest_only_in_its_plugin() -> None:
    check = (
        "import sys, leveret, leveret.testing, leveret.patterns; "
        "assert 'pytest' not in sys.modules, 'pytest was imported'"
    )
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
