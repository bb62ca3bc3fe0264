"""The fleet's tests run on both brokers, as the pattern tests do (their fixtures)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from leveret.amqp import connect
from leveret.patterns import revoked_queue
from tests.cli.conftest import project, reaper
from tests.conftest import AMQP_URL
from tests.patterns.conftest import (
    Cleanup,
    broker_kind,
    cleanup,
    connect_broker,
    connection,
    pytest_generate_tests,
)

__all__ = [
    "Cleanup",
    "broker_kind",
    "cleanup",
    "connect_broker",
    "connection",
    "project",
    "pytest_generate_tests",
    "reaper",
    "revoked",
]


@pytest.fixture
async def revoked(broker_kind: str) -> AsyncIterator[list[str]]:
    """Task names whose revocation queues a test makes; deleted when it ends."""
    tasks: list[str] = []
    yield tasks
    if broker_kind != "rabbitmq" or not tasks:
        return
    async with await connect(AMQP_URL) as conn:
        channel = await conn.channel()
        for task in tasks:
            await channel.queue_delete(revoked_queue(task))
