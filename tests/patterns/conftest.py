"""Fixtures for the pattern tests: one broker per test, queues cleaned up afterwards.

Every test that uses a connection runs twice: on the shared RabbitMQ (id
``rabbitmq``) and on a fresh in-memory broker of its own (id ``memory``), so the
two brokers cannot drift apart. Tests that need the real thing (subprocesses,
the CLI, aio-pika, sockets) are marked ``rabbitmq_only`` and run once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from leveret.amqp import Channel, Delivery, connect
from leveret.patterns import dead_letter_queue, delay_queues, parked_queue, revoked_queue
from leveret.testing import MemoryBroker
from tests.conftest import AMQP_URL
from tests.support.waiting import wait_until

BROKERS = ("rabbitmq", "memory")

ConnectBroker = Callable[[], Awaitable[Any]]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run each test that talks to a broker on both, unless it is ``rabbitmq_only``."""
    if "broker_kind" in metafunc.fixturenames:
        only_real = metafunc.definition.get_closest_marker("rabbitmq_only") is not None
        kinds = ["rabbitmq"] if only_real else list(BROKERS)
        metafunc.parametrize("broker_kind", kinds, indirect=True)


@pytest.fixture
def broker_kind(request: pytest.FixtureRequest) -> str:
    """``"rabbitmq"`` or ``"memory"``: which broker this run of the test talks to."""
    kind: str = request.param
    return kind


@pytest.fixture
async def connect_broker(
    broker_kind: str, request: pytest.FixtureRequest
) -> AsyncIterator[ConnectBroker]:
    """Opens further connections to this test's broker; all closed after the test."""
    opened: list[Any] = []
    memory = MemoryBroker() if broker_kind == "memory" else None
    url = AMQP_URL if memory else request.getfixturevalue("amqp_url")  # skips without RabbitMQ

    async def open_connection() -> Any:
        connection = await (memory.connect() if memory else connect(url, name="leveret-tests"))
        opened.append(connection)
        return connection

    yield open_connection
    for connection in opened:
        await connection.close()
    if memory is not None:
        await memory.close()


@pytest.fixture
async def connection(connect_broker: ConnectBroker) -> Any:
    """A connection to this test's broker (RabbitMQ, or the test's in-memory one)."""
    return await connect_broker()


class Cleanup:
    """Queue names a test creates; all deleted when it ends, with the dead-letter,
    parking and delay queues a worker may have made for them."""

    def __init__(self) -> None:
        self.queues: list[str] = []

    def queue(self, name: str) -> str:
        self.queues.append(name)
        return name


@pytest.fixture
async def cleanup(broker_kind: str) -> AsyncIterator[Cleanup]:
    tracker = Cleanup()
    yield tracker
    if broker_kind != "rabbitmq":
        return  # the in-memory broker goes with the test
    async with await connect(AMQP_URL) as conn:
        channel = await conn.channel()
        for name in tracker.queues:
            for queue in (
                name,
                dead_letter_queue(name),
                parked_queue(name),
                revoked_queue(name),
                *delay_queues(name),
            ):
                await channel.queue_delete(queue)


async def dead_letters(channel: Channel, queue: str, expected: int) -> list[Delivery]:
    """The dead letters of a task queue, taken off it once ``expected`` of them are there
    (5 s at most); fails if there are more."""
    found: list[Delivery] = []

    async def all_there() -> bool:
        while len(found) < expected:
            delivery = await channel.get(dead_letter_queue(queue), no_ack=True)
            if delivery is None:
                return False
            found.append(delivery)
        return True

    await wait_until(all_there, 5, f"{expected} dead letter(s) of {queue!r}")
    extra = await channel.get(dead_letter_queue(queue), no_ack=True)
    assert extra is None, f"more than {expected} dead letter(s) of {queue!r}: {extra!r}"
    return found
