"""Fixtures for the pattern tests: queues cleaned up afterwards, a dead-letter setup."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from leveret.amqp import connect
from tests.conftest import AMQP_URL


class Cleanup:
    """Queue names a test creates; all deleted when it ends."""

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
        for name in tracker.queues:
            channel = await conn.channel()
            await channel.queue_delete(name)


def dead_letter_to(queue: str) -> dict[str, Any]:
    """Queue arguments that dead-letter rejected messages to ``queue``."""
    return {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": queue}
