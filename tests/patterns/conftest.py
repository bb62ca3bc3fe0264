"""Fixtures for the pattern tests: queues cleaned up afterwards, a dead-letter setup."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from leveret.amqp import Channel, Delivery, connect
from leveret.patterns import dead_letter_queue, retry_queue
from tests.conftest import AMQP_URL


class Cleanup:
    """Queue names a test creates; all deleted when it ends, with the dead-letter and
    retry queues a worker may have made for them."""

    def __init__(self) -> None:
        self.queues: list[str] = []

    def queue(self, name: str) -> str:
        self.queues.append(name)
        return name


@pytest.fixture
async def cleanup(amqp_url: str) -> AsyncIterator[Cleanup]:
    tracker = Cleanup()
    yield tracker
    async with await connect(AMQP_URL) as conn:
        channel = await conn.channel()
        for name in tracker.queues:
            for queue in (
                name,
                dead_letter_queue(name),
                *(retry_queue(name, n) for n in range(2, 8)),
            ):
                await channel.queue_delete(queue)


async def dead_letters(channel: Channel, queue: str, expected: int) -> list[Delivery]:
    """The dead letters of a task queue, once ``expected`` of them are there (5 s at most)."""
    found: list[Delivery] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while len(found) < expected and loop.time() < deadline:
        delivery = await channel.get(dead_letter_queue(queue), no_ack=True)
        if delivery is None:
            await asyncio.sleep(0.02)
        else:
            found.append(delivery)
    return found
