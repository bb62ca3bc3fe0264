"""Robust connections: reconnect with capped, jittered backoff, then restore everything.

After a reconnect the connection re-declares the exchanges, queues and
bindings declared through it (in the order they were declared; server-named
queues get new names, reported to ``queue_renamed_callbacks``), then reopens
each channel with its publisher confirms (or transaction mode), qos and consumers. Publishes that
were in flight when the connection dropped fail with
:class:`~leveret.exceptions.PublishNotConfirmedError`: nothing is reported as
confirmed that the broker did not confirm.

All of it lives here: :class:`RobustChannel` reopens itself and records what
it declares; :class:`RobustConnection` reconnects and restores. The plain
:class:`~leveret.amqp.Connection` and :class:`~leveret.amqp.Channel` know
nothing of it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..exceptions import (
    AMQPError,
    BrokerError,
    ChannelClosedError,
    ConnectionClosedError,
    ConnectionLostError,
)
from ._channel import Channel
from ._connection import Connection
from ._consumer import notify_cancel
from ._states import ChannelState, ConnectionState
from ._topology import Topology
from ._url import DEFAULT_URL, ConnectionParameters, parse_urls

log = logging.getLogger("leveret.amqp")


class RobustChannel(Channel):
    """A channel of a :class:`RobustConnection`: it survives reconnects and broker
    closes. While it is down, operations wait for it to reopen (at most the
    connection's ``reconnect_timeout``); it is reopened with its publisher
    confirms or transaction mode, qos and consumers (a transaction open when it
    closed is lost: see :meth:`tx_commit`)."""

    _connection: RobustConnection

    def __init__(self, connection: RobustConnection, number: int, publisher_confirms: bool) -> None:
        super().__init__(connection, number, publisher_confirms)
        #: Resolved once the channel is open again (failed when it cannot be).
        self._reopened: asyncio.Future[None] | None = None

    @property
    def is_closed(self) -> bool:
        """True once closed for good (not while it waits to be reopened)."""
        return self._state is ChannelState.CLOSED and self._reopened is None

    async def _declare(self, method: str, args: dict[str, Any]) -> dict[str, Any]:
        reply = await super()._declare(method, args)
        self._connection.topology.record(method, args, reply)
        return reply

    def _abandon(self, why: str) -> None:
        if self._reopened is not None and not self._reopened.done():
            self._reopened.set_exception(ChannelClosedError(why))
            self._reopened.exception()
            for consumer in self._consumers.values():
                notify_cancel(self._tasks, consumer, ChannelClosedError(why))
        self._reopened = None
        super()._abandon(why)

    def _connection_lost(self, reason: BaseException) -> None:
        if self._connection.state is ConnectionState.CLOSING:
            super()._connection_lost(reason)
            return
        # The connection reconnects; the consumers wait to be restarted.
        if self._reopened is None and self._state is not ChannelState.CLOSED:
            self._reopened = self._loop.create_future()
        self._finish(reason, notify_consumers=False)

    def _closed_by_broker(self, error: BaseException) -> None:
        reopen = self._state is ChannelState.OPEN
        # A reconnect or an earlier reopen that is restoring this channel reopens it
        # again itself; a second reopen would send a second channel.open, which the
        # broker punishes by closing the whole connection (504 CHANNEL_ERROR).
        reopening = self._reopened is not None
        if reopen and self._reopened is None:
            self._reopened = self._loop.create_future()
        self._finish(error, notify_consumers=not reopen)
        if reopen and not reopening:
            self._connection._reopen_later(self)

    async def _ensure_open(self) -> None:
        """Return when the channel is open; wait for a reopen that is under way.

        Raises:
            ChannelClosedError: it is closed for good, did not reopen within the
                connection's ``reconnect_timeout``, or could not reopen.
        """
        while self._state is not ChannelState.OPEN:
            if self._reopened is None:
                await super()._ensure_open()
            assert self._reopened is not None
            timeout = self._connection.reconnect_timeout
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(self._reopened)
            except TimeoutError:
                raise ChannelClosedError(
                    f"channel {self.number} did not reopen within {timeout} s: {self._close_reason}"
                ) from self._close_reason
            except ChannelClosedError:
                raise
            except AMQPError as exc:
                raise ChannelClosedError(f"channel {self.number} could not reopen: {exc}") from exc

    async def _restore(self, renames: Mapping[str, str]) -> None:
        """Reopen and restart the consumers (with the qos each started under).

        A consumer the broker refuses (its queue is gone) is dropped and its owner
        told through ``on_cancel``; the channel is reopened for the others. If the
        connection goes meanwhile (even closed by the broker with a reply code) this
        raises and keeps every consumer, for the next reconnect to restore.
        """
        while True:
            await self._open()
            if self._global_prefetch is not None:
                await self._send_qos(self._global_prefetch, global_=True)
            current: tuple[int, int] | None = None
            try:
                for consumer in list(self._consumers.values()):
                    if consumer.cancelled:
                        self._consumers.pop(consumer.tag, None)
                        continue
                    consumer.queue = renames.get(consumer.queue, consumer.queue)
                    if consumer.prefetch is not None and consumer.prefetch != current:
                        current = consumer.prefetch
                        await self._send_qos(current)
                    try:
                        await self._start_consumer(consumer)
                    except BrokerError as exc:
                        # A connection.close (a node shutting down: 320, or crashing the
                        # channel: 541) fails this wait too, but says nothing about the
                        # queue: dropping the consumer then would stop it for good.
                        if exc.scope == "channel":
                            self._consumers.pop(consumer.tag, None)
                            notify_cancel(self._tasks, consumer, exc)
                        raise
            except BrokerError as exc:
                if exc.scope != "channel":
                    raise
                continue
            if self._prefetch is not None and self._prefetch != current:
                await self._send_qos(self._prefetch)
            return

    def _reopen_done(self, error: BaseException | None) -> None:
        """After (failing) to reopen: wake whoever waits; on failure, close for good."""
        waiter, self._reopened = self._reopened, None
        if waiter is not None and not waiter.done():
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)
                waiter.exception()
        if error is not None:
            self._connection._forget_channel(self)
            for consumer in self._consumers.values():
                notify_cancel(self._tasks, consumer, error)


class RobustConnection(Connection):
    """A connection that reconnects by itself and restores what was declared on it.

    ``reconnect_callbacks`` are called with the connection after each successful
    reconnect; ``queue_renamed_callbacks`` with ``(old, new)`` for each
    server-named queue that got a new name. A connection closed by its owner is
    never reconnected. :meth:`channel` called during a reconnect waits until every
    channel is restored (at most ``reconnect_timeout``).
    """

    def __init__(
        self,
        params: ConnectionParameters,
        *,
        client_properties: Mapping[str, Any] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        reconnect_interval: float = 0.5,
        max_reconnect_interval: float = 30.0,
        reconnect_timeout: float = 30.0,
    ) -> None:
        super().__init__(params, client_properties=client_properties, ssl_context=ssl_context)
        #: The declarations to replay after a reconnect.
        self.topology = Topology()
        self.reconnect_interval = reconnect_interval
        self.max_reconnect_interval = max_reconnect_interval
        #: How long an operation waits for the connection or a channel to come back.
        self.reconnect_timeout = reconnect_timeout
        self.reconnects = 0
        self.reconnect_callbacks: list[Callable[[RobustConnection], Any]] = []
        self.queue_renamed_callbacks: list[Callable[[str, str], Any]] = []
        self._reconnected: asyncio.Future[None] | None = None
        self._restoring = False

    def _new_channel(self, number: int, publisher_confirms: bool) -> Channel:
        return RobustChannel(self, number, publisher_confirms)

    def _on_lost(self, reason: BaseException) -> None:
        if self.state is ConnectionState.CLOSING:
            self._finish(reason)
            return
        if self._restoring:
            return  # the restore fails with it, and the reconnect tries again
        log.warning(
            "connection to %s lost (%s); reconnecting", self.params.safe_url(self.address), reason
        )
        if self._reconnected is None or self._reconnected.done():
            self._reconnected = self.loop.create_future()
        self._tasks.spawn(self._reconnect(), "leveret reconnect")

    def _next_addresses(self) -> list[tuple[str, int]]:
        """All addresses, starting after the one we lost (fail over to the others)."""
        addresses = list(self.params.addresses)
        if self.address in addresses:
            index = addresses.index(self.address) + 1
            addresses = addresses[index:] + addresses[:index]
        return addresses

    async def _reconnect(self) -> None:
        delay = self.reconnect_interval
        while True:
            try:
                await self._connect(self._next_addresses())
                self._restoring = True
                try:
                    renames = await self._restore()
                finally:
                    self._restoring = False
                if not self.is_open:
                    raise ConnectionLostError("connection lost while restoring it")
                break
            except (AMQPError, OSError) as exc:
                self._drop_transport()
                pause = delay / 2 + random.uniform(0, delay / 2)
                log.warning(
                    "reconnecting to %s failed: %s; next attempt in %.1f s",
                    self.params.safe_url(),
                    exc,
                    pause,
                )
                await asyncio.sleep(pause)
                delay = min(delay * 2, self.max_reconnect_interval)
        self.reconnects += 1
        log.info("reconnected to %s", self.params.safe_url(self.address))
        if self._reconnected is not None and not self._reconnected.done():
            self._reconnected.set_result(None)
        for old, new in renames.items():
            for renamed in list(self.queue_renamed_callbacks):
                self._tasks.call(renamed, old, new)
        for callback in list(self.reconnect_callbacks):
            self._tasks.call(callback, self)

    async def _restore(self) -> dict[str, str]:
        renames = await self.topology.restore(self._scratch_channel)
        for channel in list(self._channels.values()):
            assert isinstance(channel, RobustChannel)
            await channel._restore(renames)
            channel._reopen_done(None)
        return renames

    async def _scratch_channel(self) -> Channel:
        """A plain channel outside the registry, for replaying declarations."""
        number = next(n for n in range(self.channel_max, 0, -1) if n not in self._channels)
        return await self._open_channel(Channel(self, number, False), listed=False)

    def _reopen_later(self, channel: RobustChannel) -> None:
        """Reopen a channel the broker closed, in a task of this connection."""
        self._tasks.spawn(self._reopen(channel), f"leveret reopen channel {channel.number}")

    async def _reopen(self, channel: RobustChannel) -> None:
        try:
            await channel._restore({})
        except AMQPError as exc:
            if self.is_open:  # otherwise the reconnect restores it
                channel._reopen_done(exc)
            return
        channel._reopen_done(None)

    async def _ensure_connected(self) -> None:
        if self.state in (ConnectionState.CLOSING, ConnectionState.CLOSED) or self.is_closed:
            raise ConnectionClosedError(f"{self!r} was closed")
        waiter = self._reconnected
        # Wait for the whole restore, not just the handshake: a channel opened while
        # the reconnect reopens the registered ones would be opened twice.
        reconnecting = waiter is not None and not waiter.done()
        if self.is_open and not reconnecting:
            return
        if waiter is None or not reconnecting:
            raise self._close_reason or ConnectionLostError(f"{self!r} is not open")
        try:
            async with asyncio.timeout(self.reconnect_timeout):
                await asyncio.shield(waiter)
        except TimeoutError:
            raise ConnectionLostError(
                f"{self!r} did not reconnect within {self.reconnect_timeout} s"
            ) from self._close_reason

    async def _cancel_tasks(self) -> None:
        await super()._cancel_tasks()  # the reconnect, and channel reopens
        if self._reconnected is not None and not self._reconnected.done():
            self._reconnected.set_exception(ConnectionClosedError(f"{self!r} was closed"))
            self._reconnected.exception()


async def connect_robust(
    url: str | Sequence[str] = DEFAULT_URL,
    *,
    client_properties: Mapping[str, Any] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    heartbeat: int | None = None,
    frame_max: int | None = None,
    max_message_size: int | None = None,
    channel_max: int | None = None,
    connection_timeout: float | None = None,
    name: str | None = None,
    auth_mechanism: str | None = None,
    reconnect_interval: float = 0.5,
    max_reconnect_interval: float = 30.0,
    reconnect_timeout: float = 30.0,
) -> RobustConnection:
    """Open a connection that survives broker restarts and network failures.

    Takes the same arguments as :func:`connect`, plus the backoff between
    attempts (``reconnect_interval`` doubling up to ``max_reconnect_interval``,
    with jitter) and ``reconnect_timeout``: how long an operation waits for the
    connection to come back before it fails with a clear error. With several
    addresses, a reconnect tries the other nodes first.

    Raises:
        ConfigurationError: the URL or an option is invalid (``memory://`` URLs
            go to :func:`leveret.connect_robust`).
        ConnectError: the first connection could not be made (no retry then:
            a wrong address should fail fast).
    """
    params = parse_urls(
        url,
        heartbeat=heartbeat,
        frame_max=frame_max,
        max_message_size=max_message_size,
        channel_max=channel_max,
        connection_timeout=connection_timeout,
        name=name,
        auth_mechanism=auth_mechanism,
    )
    connection = RobustConnection(
        params,
        client_properties=client_properties,
        ssl_context=ssl_context,
        reconnect_interval=reconnect_interval,
        max_reconnect_interval=max_reconnect_interval,
        reconnect_timeout=reconnect_timeout,
    )
    await connection._connect()
    return connection
