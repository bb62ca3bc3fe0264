"""Fixtures for the in-memory broker's own tests (on top of leveret's pytest plugin)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from leveret.amqp import Delivery
from leveret.testing import MemoryBroker, MemoryChannel, MemoryConnection


@pytest.fixture
async def other_connection(leveret_broker: MemoryBroker) -> MemoryConnection:
    """A second connection to the test's broker (closed with the broker)."""
    return await leveret_broker.connect(name="other")


class Collector:
    """A consumer callback that keeps deliveries and can wait for a number of them."""

    def __init__(self, settle: Callable[[Delivery], None] | None = None) -> None:
        self.deliveries: list[Delivery] = []
        self._settle = settle
        self._changed = asyncio.Event()

    def __call__(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        if self._settle is not None:
            self._settle(delivery)
        self._changed.set()

    @property
    def bodies(self) -> list[bytes]:
        return [delivery.body for delivery in self.deliveries]

    async def wait_for(self, count: int, timeout: float = 2.0) -> list[Delivery]:
        async with asyncio.timeout(timeout):
            while len(self.deliveries) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.deliveries


async def publish_all(channel: MemoryChannel, queue: str, *bodies: bytes) -> None:
    for body in bodies:
        await channel.publish(body, routing_key=queue)
