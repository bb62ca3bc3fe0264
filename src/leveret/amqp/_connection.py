"""Connections: opening, the channel registry, flow control, losing and closing.

Reply codes the broker closes the connection with are mapped to exceptions by
:func:`leveret.exceptions.broker_error`; every pending operation on every
channel fails with that exception. The handshake is in :mod:`._handshake`,
heartbeats in the protocol; :mod:`._robust` adds reconnecting.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from ..exceptions import (
    AMQPError,
    AuthenticationError,
    ConfigurationError,
    ConnectError,
    ConnectionClosedError,
    ConnectionLostError,
    HeartbeatTimeoutError,
    ProtocolError,
    broker_error,
)
from ._channel import Channel
from ._closing import AsyncClosing
from ._codec import Method, decode_method, encode_method_frame, method_name
from ._content import ChannelFrames
from ._handshake import handshake, open_socket
from ._protocol import FrameHandler, FrameProtocol
from ._states import ConnectionState
from ._tasks import TaskOwner
from ._url import DEFAULT_URL, ConnectionParameters, parse_urls

log = logging.getLogger("leveret.amqp")

CloseCallback = Callable[["Connection", BaseException | None], Any]
BlockedCallback = Callable[["Connection", str | None], Any]


_CONNECTING: Final = ConnectionState.CONNECTING
_OPEN: Final = ConnectionState.OPEN
_LOST: Final = ConnectionState.LOST
_CLOSING: Final = ConnectionState.CLOSING
_CLOSED: Final = ConnectionState.CLOSED


class _ConnectionFrames:
    """Channel 0's frames and the socket's events, handed to the connection."""

    __slots__ = ("_connection",)

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def on_method(self, buf: bytes, start: int, end: int) -> None:
        self._connection._on_method(decode_method(buf, start, end))

    def on_header(self, buf: bytes, start: int, end: int) -> None:
        raise ProtocolError("content header on channel 0")

    def on_body(self, body: bytes) -> None:
        raise ProtocolError("content body on channel 0")

    def frame_error(self, protocol: FrameProtocol, exc: ProtocolError) -> None:
        self._connection._frame_error(exc)

    def transport_lost(self, protocol: FrameProtocol, exc: Exception | None) -> None:
        self._connection._transport_lost(protocol, exc)

    def write_flow_changed(self, protocol: FrameProtocol) -> None:
        self._connection._update_flow()


class Connection(AsyncClosing):
    """An AMQP 0-9-1 connection. Create it with :func:`connect`.

    Use it as ``async with`` or call :meth:`close`; closing cancels and awaits
    every task the connection owns.
    """

    def __init__(
        self,
        params: ConnectionParameters,
        *,
        client_properties: Mapping[str, Any] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.params = params
        self.loop = asyncio.get_running_loop()
        self.id = secrets.token_hex(4)
        self._client_properties = dict(client_properties or {})
        self._ssl_context = ssl_context
        self._frames = _ConnectionFrames(self)
        self._handlers: dict[int, FrameHandler] = {}
        self._channels: dict[int, Channel] = {}
        self._protocol: FrameProtocol | None = None
        self._state = _CONNECTING
        #: Why the current (or last) transport went away; None while it is fine.
        self._close_reason: BaseException | None = None
        self._closed: asyncio.Future[None] = self.loop.create_future()
        self._waiters: deque[tuple[tuple[str, ...], asyncio.Future[Method]]] = deque()
        self._blocked: str | None = None
        #: Whether a publish may write now: a transport, not blocked by the broker, its
        #: socket buffer not full. Kept up to date by _update_flow; read by every publish.
        self._may_write = False
        self._flow_waiters: list[asyncio.Future[None]] = []
        self.address: tuple[str, int] | None = None
        self.server_properties: dict[str, Any] = {}
        self.frame_max = params.frame_max
        self.max_message_size = params.max_message_size
        self.channel_max = params.channel_max
        self.heartbeat = 0
        self._tasks = TaskOwner()
        #: Called with ``(connection, reason)`` once it is closed for good (plain or async);
        #: ``reason`` is ``None`` when its owner closed it.
        self.close_callbacks: list[CloseCallback] = []
        self.blocked_callbacks: list[BlockedCallback] = []

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"<{type(self).__name__} {self.params.safe_url(self.address)} {state}>"

    @property
    def state(self) -> ConnectionState:
        """Where the connection is in its life (see :class:`ConnectionState`)."""
        return self._state

    @property
    def is_open(self) -> bool:
        """True while the connection can carry channels (not during a (re)connect handshake)."""
        return self._state is _OPEN

    @property
    def is_closed(self) -> bool:
        """True once the connection is closed for good."""
        return self._closed.done()

    @property
    def blocked(self) -> str | None:
        """The broker's reason while it blocks publishing (``connection.blocked``)."""
        return self._blocked

    # -- opening ------------------------------------------------------------------

    async def _connect(self, addresses: Sequence[tuple[str, int]] | None = None) -> None:
        """Open a socket to the first address that answers and do the handshake.

        Raises:
            ConnectError: no address could be reached (each failure is listed).
            AuthenticationError: the broker refused the credentials.
        """
        failures = []
        last: BaseException | None = None
        self._state = _CONNECTING
        for address in addresses or self.params.addresses:
            try:
                async with asyncio.timeout(self.params.connection_timeout):
                    await self._connect_to(address)
                return
            except AuthenticationError:
                self._drop_transport()
                raise
            except TimeoutError as exc:
                self._drop_transport()
                last = exc
                failures.append(
                    f"{self.params.safe_url(address)}: no answer within "
                    f"{self.params.connection_timeout:g} s"
                )
            except ConnectError as exc:
                self._drop_transport()
                last = exc.__cause__ or exc
                failures.append(str(exc))
            except BaseException:
                self._drop_transport()
                raise
        raise ConnectError("cannot connect to RabbitMQ: " + "; ".join(failures)) from last

    async def _connect_to(self, address: tuple[str, int]) -> None:
        url = self.params.safe_url(address)
        context = self._ssl_context or self.params.ssl_context()
        self._state = _CONNECTING
        self._close_reason = None
        protocol = FrameProtocol(self.loop, self._handlers, self._frames)
        self._handlers.clear()
        self._handlers[0] = self._frames
        self._protocol = protocol
        start = self._expect(("connection.start",))
        try:
            await open_socket(self.loop, protocol, address, context, url)
        except BaseException:
            # Nobody will await the start waiter (also when cancelled: connection_timeout
            # ran out, or the owner closed a reconnecting connection); failed later by
            # _drop_transport, it would log "exception was never retrieved".
            start.cancel()
            raise
        self.address = address
        tuning = await handshake(
            start, self._expect, protocol.write, self.params, self._client_properties, url
        )
        self.server_properties, self.channel_max, self.frame_max, self.heartbeat = tuning
        protocol.frame_max = self.frame_max
        self._state = _OPEN
        self._update_flow()
        protocol.start_heartbeat(self.heartbeat, self._heartbeat_missed)
        log.info("connected to %s", url)

    # -- channels -------------------------------------------------------------------

    async def channel(self, *, publisher_confirms: bool = True) -> Channel:
        """Open a new channel.

        Raises:
            ConnectionClosedError: the connection was closed by its owner.
            ConnectionLostError: the connection was lost (e.g. HeartbeatTimeoutError).
            BrokerError: the broker closed the connection (e.g. ConnectionForcedError).
            ConfigurationError: all ``channel_max`` channel numbers are in use.
        """
        await self._ensure_connected()
        number = next((n for n in range(1, self.channel_max + 1) if n not in self._channels), 0)
        if not number:
            raise ConfigurationError(f"all {self.channel_max} channels are in use")
        return await self._open_channel(self._new_channel(number, publisher_confirms))

    def _new_channel(self, number: int, publisher_confirms: bool) -> Channel:
        """The channel object :meth:`channel` opens (a robust connection makes robust ones)."""
        return Channel(self, number, publisher_confirms)

    async def _open_channel(self, channel: Channel, *, listed: bool = True) -> Channel:
        """Open ``channel``; ``listed`` ones are closed, lost and restored with the connection."""
        if listed:
            self._channels[channel.number] = channel
        try:
            await channel._open()
        except asyncio.CancelledError:
            if channel._opening_on_broker():
                # Trap: the broker has the channel (or will, once it reads the open), so
                # its number must not be reused before it is closed there: a second
                # channel.open on it is a connection error (504).
                self._tasks.spawn(channel._close_abandoned(), f"close channel {channel.number}")
            else:
                self._forget_channel(channel)
                self._handlers.pop(channel.number, None)
            raise
        except BaseException:
            self._forget_channel(channel)
            self._handlers.pop(channel.number, None)
            raise
        return channel

    async def _ensure_connected(self) -> None:
        if self._state is _CLOSING or self._state is _CLOSED:
            raise ConnectionClosedError(f"{self!r} was closed")
        # A connection that was lost (heartbeat, broker close) says why, not "closed".
        if self._state is not _OPEN:
            raise self._close_reason or ConnectionLostError(f"{self!r} is not open")

    def _register_channel(self, channel: Channel, frames: ChannelFrames) -> None:
        self._handlers[channel.number] = frames

    def _unregister_channel(self, channel: Channel, frames: ChannelFrames) -> None:
        if self._handlers.get(channel.number) is frames:
            del self._handlers[channel.number]

    def _forget_channel(self, channel: Channel) -> None:
        if self._channels.get(channel.number) is channel:
            del self._channels[channel.number]

    # -- frames on channel 0 -----------------------------------------------------

    def _expect(self, replies: tuple[str, ...]) -> asyncio.Future[Method]:
        future: asyncio.Future[Method] = self.loop.create_future()
        self._waiters.append((replies, future))
        return future

    def _on_method(self, method: Method) -> None:
        name = method.name
        if self._waiters and name in self._waiters[0][0]:
            _, future = self._waiters.popleft()
            if not future.done():
                future.set_result(method)
        elif name == "connection.close":
            args = method.args
            error = broker_error(
                args["reply_code"],
                args["reply_text"],
                scope="connection",
                method=method_name(args["class_id"], args["method_id"]),
            )
            log.warning(
                "broker closed the connection to %s: %s", self.params.safe_url(self.address), error
            )
            self._write(encode_method_frame(0, "connection.close-ok"))
            self._lose(error)
        elif name == "connection.blocked":
            self._set_blocked(method.args["reason"] or "blocked")
        elif name == "connection.unblocked":
            self._set_blocked(None)
        else:
            raise ProtocolError(f"unexpected {name} on channel 0")

    def _write(self, frame: bytes) -> None:
        if self._protocol is not None:
            self._protocol.write(frame)

    # -- flow control -----------------------------------------------------------------

    def _set_blocked(self, reason: str | None) -> None:
        self._blocked = reason
        if reason is None:
            log.info("broker unblocked publishing on %s", self.params.safe_url(self.address))
        else:
            log.warning(
                "broker blocked publishing on %s: %s", self.params.safe_url(self.address), reason
            )
        self._update_flow()
        for callback in list(self.blocked_callbacks):
            self._tasks.call(callback, self, reason)

    def _update_flow(self) -> None:
        """Recompute whether publishes may write: on connecting, block/unblock, the
        socket buffer filling or draining, and loss. Wakes the waiting publishes when
        they may write again, or when the transport is gone (they then find their
        channel closed)."""
        protocol = self._protocol
        self._may_write = (
            protocol is not None and self._blocked is None and not protocol.write_paused
        )
        if self._flow_waiters and (self._may_write or protocol is None):
            waiters, self._flow_waiters = self._flow_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def _wait_writable(self) -> None:
        """Wait while the broker blocks us or the socket buffer is full (not past a loss)."""
        while not self._may_write and self._protocol is not None:
            waiter: asyncio.Future[None] = self.loop.create_future()
            self._flow_waiters.append(waiter)
            await waiter

    # -- losing and closing -------------------------------------------------------------

    def _heartbeat_missed(self) -> None:
        url = self.params.safe_url(self.address)
        silence = f"{2 * self.heartbeat} s (heartbeat {self.heartbeat} s)"
        incomplete = self._protocol.incomplete if self._protocol is not None else 0
        if incomplete:
            error = HeartbeatTimeoutError(
                f"no complete frame from {url} for {silence}: {incomplete} bytes of a frame "
                "wait for the rest (a corrupt frame length, or the broker or network is gone)"
            )
        else:
            error = HeartbeatTimeoutError(
                f"no data from {url} for {silence}: the broker or the network is gone"
            )
        log.error("%s", error)
        self._lose(error, abort=True)

    def _frame_error(self, exc: ProtocolError) -> None:
        log.error("protocol error on %s: %s", self.params.safe_url(self.address), exc)
        self._write(
            encode_method_frame(0, "connection.close", reply_code=501, reply_text=str(exc)[:200])
        )
        self._lose(exc)

    def _lose(self, reason: BaseException, *, abort: bool = False) -> None:
        """Close the transport (``abort``: at once); pending operations fail with ``reason``."""
        if self._close_reason is None:
            self._close_reason = reason
        if self._state is _OPEN:
            self._state = _LOST
        if self._protocol is not None:
            if abort:
                self._protocol.abort()
            else:
                self._protocol.close()

    def _drop_transport(self) -> None:
        """Abandon the current transport at once (a failed connect or restore).

        Everything waiting on it fails as if the socket had died, but no
        reconnect is started: the caller decides what comes next.
        """
        protocol = self._protocol
        if protocol is None:
            self._fail_waiters(self._close_reason or ConnectionLostError("connection dropped"))
            return
        protocol.abort()
        self._transport_gone(None)

    def _fail_waiters(self, reason: BaseException) -> None:
        waiters, self._waiters = self._waiters, deque()
        for _, future in waiters:
            if not future.done():
                future.set_exception(reason)

    def _transport_lost(self, protocol: FrameProtocol, exc: Exception | None) -> None:
        """The socket is closed: fail everything; then, unless (re)connecting, react."""
        if protocol is not self._protocol:
            return  # a transport we already dropped (a failed connect attempt)
        connecting = self._state is _CONNECTING
        reason = self._transport_gone(exc)
        if not connecting:
            self._on_lost(reason)

    def _transport_gone(self, exc: Exception | None) -> BaseException:
        """Forget the transport; fail what waits on it; returns the reason."""
        self._protocol = None
        if self._state is _CLOSING:
            reason: BaseException = ConnectionClosedError(f"{self!r} was closed by its owner")
        elif self._close_reason is not None:
            reason = self._close_reason
        else:
            detail = f": {exc}" if exc else " without a connection.close"
            reason = ConnectionLostError(
                f"connection to {self.params.safe_url(self.address)} lost{detail}"
            )
        self._close_reason = reason
        if self._state is not _CLOSING:
            self._state = _LOST
        self._fail_waiters(reason)
        if self._blocked is not None:
            self._blocked = None  # a new connection starts unblocked
            for callback in list(self.blocked_callbacks):
                self._tasks.call(callback, self, None)
        self._update_flow()
        for channel in list(self._channels.values()):
            channel._connection_lost(reason)
        self._handlers.clear()
        return reason

    def _on_lost(self, reason: BaseException) -> None:
        """A plain connection is finished once its transport is gone."""
        self._finish(reason)

    def _finish(self, reason: BaseException | None) -> None:
        if self._closed.done():
            return
        for channel in list(self._channels.values()):
            channel._abandon(f"{self!r} was closed")
        self._channels.clear()
        self._closed.set_result(None)
        if self._state is _CLOSING:
            reason = None
        for callback in list(self.close_callbacks):
            self._tasks.call(callback, self, reason)

    async def close(self, *, timeout: float = 5.0) -> None:
        """Close the connection: cancel owned tasks, send connection.close, wait.

        Idempotent. A robust connection closed this way never reconnects.
        """
        if self._state is _CLOSING or self._state is _CLOSED:
            await asyncio.shield(self._closed)
            return
        self._state = _CLOSING
        await self._cancel_tasks()
        for channel in list(self._channels.values()):
            await channel._connection_closing()
        protocol = self._protocol
        if protocol is not None and self._close_reason is None:
            reply = self._expect(("connection.close-ok",))
            protocol.write(
                encode_method_frame(
                    0, "connection.close", reply_code=200, reply_text="Normal shutdown"
                )
            )
            try:
                async with asyncio.timeout(timeout):
                    await reply
            except (TimeoutError, AMQPError):
                pass  # the peer is gone or slow; the socket is closed either way
            self._lose(ConnectionClosedError(f"{self!r} was closed by its owner"))
        protocol = self._protocol
        if protocol is not None:
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(protocol.lost)
            except TimeoutError:
                protocol.abort()
                await asyncio.shield(protocol.lost)
        self._finish(None)
        self._state = _CLOSED
        await self._tasks.wait_all(timeout)  # async close callbacks
        log.info("closed %s", self.params.safe_url(self.address))

    async def _cancel_tasks(self) -> None:
        """Cancel and await the tasks this connection owns (the first step of closing)."""
        await self._tasks.cancel_all()


async def connect(
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
) -> Connection:
    """Open an AMQP connection.

    ``url`` is ``amqp://`` or ``amqps://`` (or a list of them, or several
    comma-separated hosts: tried in order), with optional query options
    ``heartbeat``, ``frame_max``, ``max_message_size``, ``channel_max``,
    ``connection_timeout``, ``name``, ``auth_mechanism`` (``PLAIN`` or ``EXTERNAL``),
    ``cafile``, ``certfile`` and ``keyfile``; the keyword arguments of the same names
    override them. ``max_message_size`` (bytes, default 128 MiB as RabbitMQ's) is the
    broker's limit on a body, which the handshake does not tell: a publish over it
    raises :class:`MessageTooLargeError` before sending anything.
    ``client_properties`` are sent to the broker (``connection_name`` shows in
    its management UI). :func:`leveret.connect` takes the same arguments and
    also ``memory://`` URLs (the in-memory broker of :mod:`leveret.testing`).

    Raises:
        ConfigurationError: the URL or an option is invalid (the message names
            it; another scheme than ``amqp``/``amqps`` says where it belongs).
        ConnectError: no broker address could be reached, or the handshake failed.
        AuthenticationError: the broker refused the credentials.
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
    connection = Connection(params, client_properties=client_properties, ssl_context=ssl_context)
    await connection._connect()
    return connection
