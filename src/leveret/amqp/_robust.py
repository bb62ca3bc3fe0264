"""Robust connections: reconnect with capped, jittered backoff, then restore everything.

After a reconnect the connection re-declares the exchanges, queues and
bindings declared through it (in the order they were declared; server-named
queues get new names, reported to ``queue_renamed_callbacks``), then reopens
each channel with its publisher confirms, qos and consumers. Publishes that
were in flight when the connection dropped fail with
:class:`~leveret.exceptions.PublishNotConfirmedError`: nothing is reported as
confirmed that the broker did not confirm.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

from ..exceptions import AMQPError, BrokerError, ConnectionClosedError, ConnectionLostError
from ._channel import Channel
from ._connection import Connection, _connect_memory
from ._url import DEFAULT_URL, ConnectionParameters, parse_urls

log = logging.getLogger("leveret.amqp")

_REPLIES = {
    "exchange.declare": ("exchange.declare-ok",),
    "exchange.bind": ("exchange.bind-ok",),
    "queue.declare": ("queue.declare-ok",),
    "queue.bind": ("queue.bind-ok",),
}


class Topology:
    """The declarations a robust connection replays, in the order they were made."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, ...], tuple[str, dict[str, Any]]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, key: tuple[str, ...], method: str, args: dict[str, Any]) -> None:
        if key[0] == "queue" and not args["queue"]:
            args = {**args, "queue": key[1], "server_named": True}
        self._entries[key] = (method, args)

    def forget(self, key: tuple[str, ...]) -> None:
        """Drop a declaration, and with a queue or exchange, the bindings that use it."""
        self._entries.pop(key, None)
        kind, name = key[0], key[1]
        if kind not in ("queue", "exchange"):
            return
        for other in list(self._entries):
            if (
                other[0] == "queue-bind"
                and (
                    (kind == "queue" and other[1] == name)
                    or (kind == "exchange" and other[2] == name)
                )
            ) or (other[0] == "exchange-bind" and kind == "exchange" and name in other[1:3]):
                del self._entries[other]

    async def restore(self, open_channel: Callable[[], Awaitable[Channel]]) -> dict[str, str]:
        """Replay every declaration; returns the renames of server-named queues.

        A declaration the broker refuses is logged and skipped (the broker closed
        the channel, so a new one is opened for the rest).
        """
        renames: dict[str, str] = {}
        restored: dict[tuple[str, ...], tuple[str, dict[str, Any]]] = {}
        channel = await open_channel()
        try:
            for key, (method, args) in self._entries.items():
                server_named = args.get("server_named", False)
                if method == "queue.bind" and args["queue"] in renames:
                    args = {**args, "queue": renames[args["queue"]]}
                    key = ("queue-bind", args["queue"], *key[2:])
                call_args = {k: v for k, v in args.items() if k != "server_named"}
                if server_named:
                    call_args["queue"] = ""
                try:
                    reply = await channel._call(method, _REPLIES[method], **call_args)
                except BrokerError as exc:
                    log.error(
                        "could not restore %s %s after reconnecting: %s", method, key[1:], exc
                    )
                    channel = await open_channel()
                    restored[key] = (method, args)
                    continue
                if server_named:
                    renames[key[1]] = reply.args["queue"]
                    key = ("queue", reply.args["queue"])
                    args = {**args, "queue": reply.args["queue"]}
                restored[key] = (method, args)
        finally:
            await channel.close()
        self._entries = restored
        return renames


async def _restore_channel(channel: Channel, renames: Mapping[str, str]) -> None:
    """Reopen a channel and restart its consumers (with the qos each started under).

    A consumer the broker refuses (its queue is gone) is dropped and its owner
    told through ``on_cancel``; the channel is reopened for the others. If the
    connection goes meanwhile (even closed by the broker with a reply code) this
    raises and keeps every consumer, for the next reconnect to restore.
    """
    while True:
        await channel._open()
        if channel._global_prefetch is not None:
            count, size = channel._global_prefetch
            await channel._call(
                "basic.qos",
                ("basic.qos-ok",),
                prefetch_count=count,
                prefetch_size=size,
                global_=True,
            )
        current: tuple[int, int] | None = None
        try:
            for consumer in list(channel._consumers.values()):
                if consumer.cancelled:
                    channel._consumers.pop(consumer.tag, None)
                    continue
                consumer.queue = renames.get(consumer.queue, consumer.queue)
                if consumer.prefetch is not None and consumer.prefetch != current:
                    current = consumer.prefetch
                    await channel._call(
                        "basic.qos",
                        ("basic.qos-ok",),
                        prefetch_count=current[0],
                        prefetch_size=current[1],
                    )
                try:
                    await channel._start_consumer(consumer)
                except BrokerError as exc:
                    # A connection.close (a node shutting down: 320, or crashing the
                    # channel: 541) fails this wait too, but says nothing about the
                    # queue: dropping the consumer then would stop it for good.
                    if exc.scope == "channel":
                        channel._consumers.pop(consumer.tag, None)
                        channel._notify_cancel(consumer, exc)
                    raise
        except BrokerError as exc:
            if exc.scope != "channel":
                raise
            continue
        if channel._prefetch is not None and channel._prefetch != current:
            count, size = channel._prefetch
            await channel._call(
                "basic.qos", ("basic.qos-ok",), prefetch_count=count, prefetch_size=size
            )
        return


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
        self.topology = Topology()
        self.reconnect_interval = reconnect_interval
        self.max_reconnect_interval = max_reconnect_interval
        self.reconnect_timeout = reconnect_timeout
        self.reconnects = 0
        self.reconnect_callbacks: list[Callable[[RobustConnection], Any]] = []
        self.queue_renamed_callbacks: list[Callable[[str, str], Any]] = []
        self._reconnected: asyncio.Future[None] | None = None

    def _on_lost(self, reason: BaseException) -> None:
        if self._closed_by_owner:
            self._finish(reason)
            return
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
                self._connecting = True
                try:
                    renames = await self._restore()
                finally:
                    self._connecting = False
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
        renames = await self.topology.restore(self._scratch_channel) if self.topology else {}
        for channel in list(self._channels.values()):
            await _restore_channel(channel, renames)
            channel._reopen_done(None)
        return renames

    async def _scratch_channel(self) -> Channel:
        """A channel outside the registry, for replaying declarations."""
        number = next(n for n in range(self.channel_max, 0, -1) if n not in self._channels)
        channel = Channel(self, number, publisher_confirms=False)
        await channel._open()
        return channel

    def _reopen_channel_later(self, channel: Channel) -> None:
        self._tasks.spawn(self._reopen_channel(channel), f"leveret reopen channel {channel.number}")

    async def _reopen_channel(self, channel: Channel) -> None:
        try:
            await _restore_channel(channel, {})
        except AMQPError as exc:
            if self.is_open:  # otherwise the reconnect restores it
                channel._reopen_done(exc)
            return
        channel._reopen_done(None)

    async def _ensure_connected(self) -> None:
        if self._closed_by_owner or self.is_closed:
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

    async def _stop_background(self) -> None:
        await self._tasks.cancel_all()  # the reconnect, and channel reopens
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
        ConnectError: the first connection could not be made (no retry then:
            a wrong address should fail fast).
    """
    if isinstance(url, str) and url.startswith("memory://"):
        return cast(RobustConnection, await _connect_memory(url, name))
    params = parse_urls(
        url,
        heartbeat=heartbeat,
        frame_max=frame_max,
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
