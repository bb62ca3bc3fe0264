"""drain(): run until the tasks sent so far are done, so a test can assert on them."""

import asyncio
from typing import Any

import pytest

from leveret.exceptions import ConfigurationError
from leveret.patterns import RPC, Master, RetryPolicy, current_task, list_dead_letters
from leveret.testing import MemoryBroker, MemoryChannel, MemoryConnection, drain


async def test_drain_waits_for_tasks_and_their_retries(leveret_master: Master) -> None:
    done: list[tuple[int, int]] = []

    async def flaky(*, n: int) -> None:
        attempt = current_task().attempt
        if n % 2 and attempt < 3:
            raise ValueError("not yet")
        await asyncio.sleep(0)
        done.append((n, attempt))

    policy = RetryPolicy(max_attempts=3, backoff=0.01, jitter=0)
    await leveret_master.create_worker("flaky", flaky, retries=policy)
    for n in range(6):
        await leveret_master.proxy.flaky(n=n)
    await drain(leveret_master)
    assert sorted(done) == [(0, 1), (1, 3), (2, 1), (3, 3), (4, 1), (5, 3)]


async def test_drain_leaves_dead_letters_where_they_are(
    leveret_master: Master, leveret_channel: MemoryChannel
) -> None:
    async def explode() -> None:
        raise RuntimeError("boom")

    worker = await leveret_master.create_worker("explode", explode)
    await leveret_master.create_task("explode")
    await drain(worker)
    (letter,) = await list_dead_letters(leveret_channel, "explode")
    assert letter.exception_message == "boom"


async def test_drain_waits_for_calls_an_rpc_serves(
    leveret_rpc: RPC, leveret_connection: MemoryConnection
) -> None:
    finished: list[int] = []

    async def slow(*, n: int) -> int:
        await asyncio.sleep(0.01)
        finished.append(n)
        return n

    await leveret_rpc.register("slow", slow)
    caller = await RPC.create(await leveret_connection.channel())
    calls = [asyncio.create_task(caller.call("slow", {"n": n})) for n in range(5)]
    await asyncio.sleep(0)  # the calls are on their way
    await drain(leveret_rpc)
    assert sorted(finished) == list(range(5))
    assert await asyncio.gather(*calls) == list(range(5))
    await caller.close()


async def test_drain_says_what_is_left_when_it_times_out(
    leveret_broker: MemoryBroker, leveret_channel: MemoryChannel
) -> None:
    await leveret_channel.queue_declare("idle")
    await leveret_channel.publish(b"x", routing_key="idle")
    with pytest.raises(TimeoutError, match="queue 'idle': 1 ready, 0 unacked, 0 consumers"):
        await drain("idle", broker=leveret_broker, timeout=0.05)
    await leveret_channel.queue_purge("idle")
    await drain(leveret_broker.queues["idle"], timeout=0.05)  # a queue object needs no broker=


async def test_a_queue_name_is_drained_on_the_broker_of_a_channel_or_connection_given_with_it(
    leveret_broker: MemoryBroker,
    leveret_connection: MemoryConnection,
    leveret_channel: MemoryChannel,
) -> None:
    await leveret_channel.queue_declare("jobs")
    await leveret_channel.publish(b"x", routing_key="jobs")
    for targets in (
        (leveret_channel, "jobs"),
        ("jobs", leveret_channel),
        (leveret_connection, "jobs"),
    ):
        with pytest.raises(TimeoutError, match="queue 'jobs': 1 ready"):
            await drain(*targets, timeout=0.05)
    await leveret_channel.queue_purge("jobs")
    await drain(leveret_channel, "jobs", timeout=0.05)
    await drain(leveret_connection, "jobs", timeout=0.05)


async def test_drain_needs_a_broker_for_a_name_and_an_in_memory_channel() -> None:
    with pytest.raises(
        ConfigurationError,
        match=r"drain\('tasks'\): a queue name needs its broker: pass a channel or connection "
        r"of it \(drain\(leveret_channel, 'tasks'\)\) or broker=leveret_broker",
    ):
        await drain("tasks")

    class NotMemory:
        def __init__(self) -> None:
            self.close_callbacks: list[Any] = []

    with pytest.raises(ConfigurationError, match="works on the in-memory broker"):
        await drain(Master(NotMemory()))  # type: ignore[arg-type]
    await drain()  # nothing to wait for
