"""Fixtures shared by every test: the shared broker, connections, unique queue names.

Tests talk to the real RabbitMQ on ``AMQP_URL`` (default 127.0.0.1:5672).
Without a broker they are skipped locally, but fail under CI (``CI=true``).
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

import pytest

from leveret.amqp import Channel, Connection, connect
from tests.support.brokers import remove_nodes_root_if_empty

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")

# tests/testing/test_pytest_plugin.py runs user test files in a sub-session.
pytest_plugins = ["pytester"]


class _AsyncioLeakDetector(logging.Handler):
    """Collects asyncio's reports of leaked tasks and unretrieved exceptions."""

    PATTERNS = ("Task was destroyed but it is pending", "exception was never retrieved")

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.leaks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if any(pattern in message for pattern in self.PATTERNS):
            self.leaks.append(message)


_leaks = _AsyncioLeakDetector()
logging.getLogger("asyncio").addHandler(_leaks)


@pytest.fixture(autouse=True)
def _no_leaked_tasks_or_futures() -> Iterator[None]:
    """Fail a test after which asyncio reports a pending task or unretrieved exception."""
    yield
    gc.collect()
    leaks, _leaks.leaks[:] = list(_leaks.leaks), []
    assert not leaks, f"asyncio reported leaks: {leaks}"


def _broker_reachable() -> bool:
    parts = urlsplit(AMQP_URL)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def amqp_url() -> str:
    if not _broker_reachable():
        message = f"RabbitMQ is not reachable at {AMQP_URL}"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI=true: tests that need the broker must not skip)")
        pytest.skip(message)
    return AMQP_URL


@pytest.fixture
async def connection(amqp_url: str) -> AsyncIterator[Connection]:
    conn = await connect(amqp_url, name="leveret-tests")
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def channel(connection: Connection) -> Channel:
    return await connection.channel()


@pytest.fixture
def unique() -> str:
    """A name no other test uses (queues, exchanges)."""
    return f"leveret-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def queue(connection: Connection, unique: str) -> AsyncIterator[str]:
    """A durable-less queue named for this test, deleted afterwards."""
    setup = await connection.channel()
    await setup.queue_declare(unique)
    yield unique
    cleanup = await connect(AMQP_URL)
    try:
        await (await cleanup.channel()).queue_delete(unique)
    finally:
        await cleanup.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    remove_nodes_root_if_empty()
    gc.collect()
    if _leaks.leaks:
        print(f"\nasyncio reported leaks after the last test: {_leaks.leaks}")
        session.exitstatus = 1
