"""Connections to in-memory brokers, and ``memory://`` URLs.

``memory://`` alone is a fresh private broker; ``memory://name`` is the broker
registered under that name (created on first use), so the code under test and
the test itself can reach the same broker through a URL, and tests can isolate
themselves by choosing different names (or :func:`forget_brokers` between them).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..amqp import AsyncClosing, TaskOwner
from ..exceptions import ConfigurationError, ConnectionClosedError
from ._broker import MemoryBroker
from ._channel import MemoryChannel
from ._channel_core import ChannelCore

log = logging.getLogger("leveret.testing")

_registry: dict[str, MemoryBroker] = {}

CloseCallback = Callable[[Any, BaseException | None], Any]
BlockedCallback = Callable[[Any, str | None], Any]


def get_broker(url: str) -> MemoryBroker:
    """The broker a ``memory://`` URL names (a new private one for ``memory://``).

    Raises:
        ConfigurationError: not a ``memory://`` URL.
    """
    name = _broker_name(url)
    if not name:
        return MemoryBroker()
    broker = _registry.get(name)
    if broker is None:
        broker = _registry[name] = MemoryBroker(name)
    return broker


def forget_brokers(*names: str) -> None:
    """Drop named brokers (all of them if no name is given) from the registry.

    A later ``memory://name`` gets a fresh, empty broker. Connections already open
    keep working on the forgotten one.
    """
    for name in names or list(_registry):
        _registry.pop(_broker_name(name) if "://" in name else name, None)


def _broker_name(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "memory":
        raise ConfigurationError(f"{url!r} is not a memory:// URL")
    return (parts.netloc + parts.path).strip("/")


async def connect_memory(
    url: str = "memory://", *, broker: MemoryBroker | None = None, **options: Any
) -> MemoryConnection:
    """Connect to an in-memory broker, as :func:`leveret.connect` connects to RabbitMQ.

    ``url`` is ``memory://`` (a fresh private broker) or ``memory://name`` (the
    broker registered under ``name``); ``broker=`` picks one directly. The query
    option ``name`` and the keyword ``name=`` name the connection; the other
    options of :func:`leveret.connect` (heartbeat, TLS files ...) are accepted and
    ignored, so a ``memory://`` URL can replace an ``amqp://`` one anywhere.

    Raises:
        ConfigurationError: not a ``memory://`` URL, or the broker is in use on
            another event loop.
    """
    if broker is None:
        broker = get_broker(url)
    name = options.get("name")
    if name is None:
        names = parse_qs(urlsplit(url).query).get("name")
        name = names[0] if names else None
    return await broker.connect(name=name if isinstance(name, str) else None)


class MemoryConnection(AsyncClosing):
    """A connection to a :class:`MemoryBroker` (see :func:`connect_memory`).

    Use it as ``async with`` or call :meth:`close`. It never drops, so it serves
    code written for :func:`leveret.connect_robust` as well (its reconnect
    callbacks are simply never called).
    """

    #: As on a robust connection: how long an operation waits for the connection to
    #: come back (never needed: an in-memory connection never drops).
    reconnect_timeout: float = 0.0

    def __init__(self, broker: MemoryBroker, *, name: str | None = None) -> None:
        self.broker = broker
        self.loop = asyncio.get_running_loop()
        self.id = secrets.token_hex(4)
        self.name = name
        self._channels: dict[int, MemoryChannel] = {}
        self._closed = False
        self._close_reason: BaseException | None = None
        self._tasks = TaskOwner(log)
        #: Called with ``(connection, reason)`` once it is closed (plain or async);
        #: ``reason`` is ``None`` when its owner closed it.
        self.close_callbacks: list[CloseCallback] = []
        #: Never called: the in-memory broker never blocks publishers.
        self.blocked_callbacks: list[BlockedCallback] = []
        self.reconnect_callbacks: list[Callable[[Any], Any]] = []
        self.queue_renamed_callbacks: list[Callable[[str, str], Any]] = []

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        named = f" {self.name!r}" if self.name else ""
        return f"<MemoryConnection{named} {self.broker.url} {state}>"

    @property
    def is_open(self) -> bool:
        return not self._closed

    @property
    def is_closed(self) -> bool:
        return self._closed

    @property
    def blocked(self) -> str | None:
        """The in-memory broker never blocks publishers."""
        return None

    async def channel(self, *, publisher_confirms: bool = True) -> MemoryChannel:
        """Open a new channel.

        Raises:
            ConnectionClosedError: the connection was closed.
        """
        if self._closed:
            raise ConnectionClosedError(
                f"{self!r} was closed: {self._close_reason}"
                if self._close_reason
                else f"{self!r} was closed"
            )
        number = next(n for n in range(1, len(self._channels) + 2) if n not in self._channels)
        channel = MemoryChannel(self, number, publisher_confirms)
        self._channels[number] = channel
        await asyncio.sleep(0)  # channel.open-ok's round trip
        return channel

    def _forget_channel(self, channel: ChannelCore) -> None:
        if self._channels.get(channel.number) is channel:
            del self._channels[channel.number]

    async def close(self, *, timeout: float = 5.0) -> None:
        """Close every channel (their unacked deliveries are requeued) and the
        connection; exclusive queues it declared are deleted. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._tasks.cancel_all()
        channels = list(self._channels.values())
        for channel in channels:
            await channel._tasks.cancel_all()
        reason = ConnectionClosedError(f"{self!r} was closed by its owner")
        for channel in channels:
            channel._finish(reason)
        self.broker._connection_gone(self)
        for callback in list(self.close_callbacks):
            self._tasks.call(callback, self, None)
        await self._tasks.wait_all(timeout)  # async close callbacks

    def _lost(self, reason: BaseException) -> None:
        """The broker closed the connection (a connection-level refusal)."""
        if self._closed:
            return
        self._closed = True
        self._close_reason = reason
        for channel in list(self._channels.values()):
            channel._finish(reason)
        self.broker._connection_gone(self)
        for callback in list(self.close_callbacks):
            self._tasks.call(callback, self, reason)

    def _abandon(self) -> None:
        """Its event loop is gone: release what it held on the broker, call nobody."""
        self._closed = True
        for channel in list(self._channels.values()):
            channel._abandon(ConnectionClosedError(f"{self!r}: its event loop was closed"))
        self.broker._connection_gone(self)
