"""pytest fixtures for testing code that uses leveret, on the in-memory broker.

Installed with leveret (entry point ``leveret`` in ``pytest11``), so the fixtures
are there in any project that has leveret and pytest-asyncio::

    from leveret.testing import drain

    async def test_resize_is_called(leveret_master) -> None:
        done = []
        await leveret_master.create_worker("resize", lambda *, path: done.append(path))
        await leveret_master.proxy.resize(path="a.png")
        await drain(leveret_master)
        assert done == ["a.png"]

Fixtures (all function-scoped; everything they open is closed after the test):

``leveret_broker``
    A fresh :class:`~leveret.testing.MemoryBroker`, registered under a unique
    name for the test's duration (see ``leveret_url``);
    ``leveret_broker.advance(seconds)`` moves its clock on (TTLs, ``x-expires``).
``leveret_url``
    The ``memory://<name>`` URL of ``leveret_broker``: hand it to code under test
    that connects by URL (``leveret.connect``, ``connect_robust``, ``App(url)``).
``leveret_connection``
    A connection to ``leveret_broker``.
``leveret_channel``
    A channel on ``leveret_connection``, with publisher confirms.
``leveret_master``
    A :class:`~leveret.patterns.Master` on ``leveret_channel``; its workers are
    closed after the test.
``leveret_rpc``
    An :class:`~leveret.patterns.RPC` on a channel of its own (one RPC per
    channel), serving and calling: ``register`` a function, then call it.

Then ``await drain(leveret_master)`` (or a worker, an RPC, a queue object, or a
queue name with what names its broker: ``drain(leveret_channel, "resize")``,
``drain("resize", broker=leveret_broker)``) runs until the tasks sent so far are
done, retries included, so a test can assert on what they did.

An :class:`~leveret.App` needs none of these: ``async with app.testing() as
running`` serves it on an in-memory broker of its own and points its ``send()``
and ``call()`` there (see :meth:`leveret.App.testing`).

The async fixtures (and async tests) need pytest-asyncio
(``pip install pytest-asyncio``); without it, they fail with a message saying so.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar, cast

import pytest

from ..patterns import RPC, Master
from ._broker import MemoryBroker
from ._channel import MemoryChannel
from ._connection import MemoryConnection, forget_brokers, get_broker

F = TypeVar("F", bound=Callable[..., Any])


def _async_fixture(function: F) -> F:
    """A pytest-asyncio fixture (in strict mode too); without pytest-asyncio, a fixture
    that fails saying what to install (the plugin must never break a test session)."""
    try:
        import pytest_asyncio
    except ImportError:  # pragma: no cover - only where pytest-asyncio is missing

        def needs_pytest_asyncio() -> None:
            pytest.fail(
                f"the {function.__name__} fixture is async: install pytest-asyncio "
                "(pip install pytest-asyncio) to use leveret's fixtures"
            )

        needs_pytest_asyncio.__name__ = function.__name__
        needs_pytest_asyncio.__doc__ = function.__doc__
        return pytest.fixture(needs_pytest_asyncio)  # type: ignore[return-value]
    return cast(F, pytest_asyncio.fixture(function))


@_async_fixture
async def leveret_broker() -> AsyncIterator[MemoryBroker]:
    """A fresh in-memory broker, reachable as ``leveret_url`` during the test."""
    broker = get_broker(f"memory://pytest-{uuid.uuid4().hex[:12]}")
    try:
        yield broker
    finally:
        forget_brokers(broker.name)
        await broker.close()


@pytest.fixture
def leveret_url(leveret_broker: MemoryBroker) -> str:
    """``memory://<name>`` of ``leveret_broker``."""
    return leveret_broker.url


@_async_fixture
async def leveret_connection(leveret_broker: MemoryBroker) -> AsyncIterator[MemoryConnection]:
    """A connection to ``leveret_broker``."""
    async with await leveret_broker.connect(name="pytest") as connection:
        yield connection


@_async_fixture
async def leveret_channel(leveret_connection: MemoryConnection) -> MemoryChannel:
    """A channel (publisher confirms on) on ``leveret_connection``."""
    return await leveret_connection.channel()


@_async_fixture
async def leveret_master(leveret_channel: MemoryChannel) -> AsyncIterator[Master]:
    """A Master on ``leveret_channel``; its workers are closed after the test."""
    master = Master(leveret_channel)
    try:
        yield master
    finally:
        await master.close(timeout=1)


@_async_fixture
async def leveret_rpc(leveret_connection: MemoryConnection) -> AsyncIterator[RPC]:
    """An RPC on a channel of its own; closed after the test."""
    rpc = await RPC.create(await leveret_connection.channel())
    try:
        yield rpc
    finally:
        await rpc.close(timeout=1)
