"""Fixtures for the fault tests: a TCP proxy to the shared broker, a private node."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

import pytest

from tests.conftest import AMQP_URL
from tests.support.brokers import PrivateNode
from tests.support.proxy import TCPProxy

# The node index this module owns: see the list in tests/support/brokers.py.
_PRIVATE_NODE_INDEX = 3


@pytest.fixture
async def proxy(amqp_url: str) -> AsyncIterator[TCPProxy]:
    """A proxy in front of the shared broker that the test can stall or reset."""
    parts = urlsplit(AMQP_URL)
    started = await TCPProxy(parts.hostname or "127.0.0.1", parts.port or 5672).start()
    try:
        yield started
    finally:
        await started.close()


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A local port that never answers a TCP handshake (its accept queue is full)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port: int = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    try:
        yield port
    finally:
        for sock in [*fillers, listener]:
            sock.close()


@pytest.fixture(scope="session")
def private_node() -> Iterator[PrivateNode]:
    """One private RabbitMQ node shared by the tests that stop, restart or block a broker.

    A test that changes the node (stops it, sets an alarm) puts it back before it ends.
    """
    with PrivateNode(_PRIVATE_NODE_INDEX).running() as node:
        yield node
