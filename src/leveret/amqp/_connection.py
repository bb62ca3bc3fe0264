"""Connections: the handshake, channel registry, heartbeats, flow control, closing.

Reply codes the broker closes the connection with are mapped to exceptions by
:func:`leveret.exceptions.broker_error`; every pending operation on every
channel fails with that exception.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import ssl
import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from ..exceptions import (
    AMQPError,
    AuthenticationError,
    BrokerError,
    ConfigurationError,
    ConnectError,
    ConnectionClosedError,
    ConnectionLostError,
    HeartbeatTimeoutError,
    ProtocolError,
    broker_error,
)
from ._channel import Channel
from ._codec import FRAME_END, FRAME_HEADER_STRUCT, Method, decode_method, encode_method_frame
from ._codec import method_name as _method_name
from ._protocol import FrameHandler, FrameProtocol
from ._tasks import TaskOwner
from ._url import DEFAULT_URL, ConnectionParameters, parse_urls

if TYPE_CHECKING:
    from ._robust import Topology

log = logging.getLogger("leveret.amqp")

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
HEARTBEAT_FRAME = FRAME_HEADER_STRUCT.pack(8, 0, 0) + FRAME_END
_VERSION = "0.1.0"
_MISSED_HEARTBEAT_TICKS = 4  # ticks are half an interval apart: two intervals of silence

CloseCallback = Callable[["Connection", BaseException | None], Any]


def _negotiate(client: int | None, server: int) -> int:
    """Tune a limit: the smaller non-zero value; 0 means "no limit" on either side."""
    if client is None:
        return server
    if client == 0 or server == 0:
        return max(client, server)
    return min(client, server)


class Connection:
    """An AMQP 0-9-1 connection. Create it with :func:`connect`.

    Use it as ``async with`` or call :meth:`close`; closing cancels and awaits
    every task the connection owns.
    """

    #: Set by robust connections: the declarations to replay after a reconnect.
    topology: Topology | None = None
    #: How long an operation waits for a robust channel to come back.
    reconnect_timeout: float = 0.0

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
        self._handlers: dict[int, FrameHandler] = {}
        self._channels: dict[int, Channel] = {}
        self._protocol: FrameProtocol | None = None
        #: True from connection.open-ok until the transport goes: usable for channels.
        self._handshake_done = False
        self._waiters: deque[tuple[tuple[str, ...], asyncio.Future[Method]]] = deque()
        self._close_reason: BaseException | None = None
        self._closed_by_owner = False
        self._closed: asyncio.Future[None] = self.loop.create_future()
        self._transport_gone: asyncio.Future[None] | None = None
        self._blocked: str | None = None
        self._flow_waiters: list[asyncio.Future[None]] = []
        self._heartbeat_handle: asyncio.TimerHandle | None = None
        self._silent_ticks = 0
        self._connecting = False
        self.address: tuple[str, int] | None = None
        self.server_properties: dict[str, Any] = {}
        self.frame_max = params.frame_max
        self.channel_max = params.channel_max
        self.heartbeat = 0
        self._tasks = TaskOwner()
        #: Called with ``(connection, reason)`` once it is closed for good (plain or async);
        #: ``reason`` is ``None`` when its owner closed it.
        self.close_callbacks: list[CloseCallback] = []
        self.blocked_callbacks: list[Callable[[Connection, str | None], Any]] = []

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"<{type(self).__name__} {self.params.safe_url(self.address)} {state}>"

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def is_open(self) -> bool:
        """True while the connection can carry channels (not during a (re)connect handshake)."""
        return self._handshake_done and self._protocol is not None and self._close_reason is None

    @property
    def is_closed(self) -> bool:
        """True once the connection is closed for good."""
        return self._closed.done()

    @property
    def blocked(self) -> str | None:
        """The broker's reason while it blocks publishing (``connection.blocked``)."""
        return self._blocked

    @property
    def _flow_stopped(self) -> bool:
        protocol = self._protocol
        return self._blocked is not None or (protocol is not None and protocol.write_paused)

    # -- opening ------------------------------------------------------------------

    async def _connect(self, addresses: Sequence[tuple[str, int]] | None = None) -> None:
        """Open a socket to the first address that answers and do the handshake.

        Raises:
            ConnectError: no address could be reached (each failure is listed).
            AuthenticationError: the broker refused the credentials.
        """
        failures = []
        last: BaseException | None = None
        self._connecting = True
        try:
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
        finally:
            self._connecting = False
        raise ConnectError("cannot connect to RabbitMQ: " + "; ".join(failures)) from last

    async def _connect_to(self, address: tuple[str, int]) -> None:
        host, port = address
        url = self.params.safe_url(address)
        context = self._ssl_context or self.params.ssl_context()
        self._close_reason = None
        self._handshake_done = False
        self._transport_gone = self.loop.create_future()
        protocol = FrameProtocol(self.loop, self._handlers, self)
        self._handlers.clear()
        self._handlers[0] = self
        self._protocol = protocol
        start = self._expect(("connection.start",))
        try:
            await self.loop.create_connection(
                lambda: protocol,
                host,
                port,
                ssl=context,
                server_hostname=host if context else None,
            )
        except ssl.SSLCertVerificationError as exc:
            start.cancel()
            raise ConnectError(
                f"{url}: the broker's TLS certificate could not be verified: {exc.verify_message}"
            ) from exc
        except ssl.SSLError as exc:
            start.cancel()
            raise ConnectError(
                f"{url}: TLS handshake failed ({exc.reason or exc}); is the port a TLS listener?"
            ) from exc
        except OSError as exc:
            start.cancel()
            detail = os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__
            raise ConnectError(f"{url}: {detail}") from exc
        except BaseException:
            # Cancelled: connection_timeout ran out while the peer did not answer, or the
            # owner closed a reconnecting connection. Nobody will await the start waiter;
            # failed later by _drop_transport, it would log "exception was never retrieved".
            start.cancel()
            raise
        self.address = address
        protocol.write(PROTOCOL_HEADER)
        try:
            await self._handshake(start, url)
        except BrokerError as exc:
            if exc.reply_code == 403:
                raise AuthenticationError(f"{url}: {exc.reply_text}") from exc
            raise ConnectError(f"{url}: {exc.reply_text}") from exc
        except (ConnectionLostError, ProtocolError) as exc:
            raise ConnectError(
                f"{url}: the server closed the connection during the AMQP handshake "
                f"(is it RabbitMQ, and is TLS set as the server expects?): {exc}"
            ) from exc
        self._handshake_done = True
        self._start_heartbeat()
        log.info("connected to %s", url)

    async def _handshake(self, start_waiter: asyncio.Future[Method], url: str) -> None:
        start = (await start_waiter).args
        self.server_properties = start["server_properties"]
        mechanism = self.params.auth_mechanism
        offered = start["mechanisms"].decode().split()
        if mechanism not in offered:
            raise AuthenticationError(
                f"{url}: the broker offers {' '.join(offered)}, not {mechanism}"
            )
        if mechanism == "PLAIN":
            response = f"\0{self.params.username}\0{self.params.password}".encode()
        else:
            response = b""
        tune_waiter = self._expect(("connection.tune",))
        self._send(
            encode_method_frame(
                0,
                "connection.start-ok",
                client_properties=self._build_client_properties(),
                mechanism=mechanism,
                response=response,
                locale="en_US",
            )
        )
        tune = (await tune_waiter).args
        self.channel_max = _negotiate(self.params.channel_max, tune["channel_max"]) or 65535
        self.frame_max = _negotiate(self.params.frame_max, tune["frame_max"])
        self.heartbeat = _negotiate(self.params.heartbeat, tune["heartbeat"])
        open_waiter = self._expect(("connection.open-ok",))
        self._send(
            encode_method_frame(
                0,
                "connection.tune-ok",
                channel_max=self.channel_max,
                frame_max=self.frame_max,
                heartbeat=self.heartbeat,
            )
        )
        assert self._protocol is not None
        self._protocol.frame_max = self.frame_max
        self._send(encode_method_frame(0, "connection.open", virtual_host=self.params.virtualhost))
        await open_waiter

    def _build_client_properties(self) -> dict[str, Any]:
        capabilities = {
            "authentication_failure_close": True,
            "basic.nack": True,
            "connection.blocked": True,
            "consumer_cancel_notify": True,
            "exchange_exchange_bindings": True,
            "per_consumer_qos": True,
            "publisher_confirms": True,
        }
        properties: dict[str, Any] = {
            "product": "leveret",
            "version": _VERSION,
            "platform": f"Python {sys.version.split()[0]}",
        }
        if self.params.connection_name:
            properties["connection_name"] = self.params.connection_name
        user = dict(self._client_properties)
        capabilities.update(user.pop("capabilities", {}))
        properties.update(user)
        properties["capabilities"] = capabilities
        return properties

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
        channel = Channel(self, number, publisher_confirms)
        self._channels[number] = channel
        try:
            await channel._open()
        except BaseException:
            self._channels.pop(number, None)
            self._handlers.pop(number, None)
            raise
        return channel

    async def _ensure_connected(self) -> None:
        if self._closed_by_owner:
            raise ConnectionClosedError(f"{self!r} was closed")
        # A connection that was lost (heartbeat, broker close) says why, not "closed".
        if not self.is_open:
            raise self._close_reason or ConnectionLostError(f"{self!r} is not open")

    def _register_channel(self, channel: Channel) -> None:
        self._handlers[channel.number] = channel

    def _unregister_channel(self, channel: Channel) -> None:
        if self._handlers.get(channel.number) is channel:
            del self._handlers[channel.number]

    def _forget_channel(self, channel: Channel) -> None:
        if self._channels.get(channel.number) is channel:
            del self._channels[channel.number]

    def _reopen_channel_later(self, channel: Channel) -> None:
        """Robust connections reopen a channel the broker closed; plain ones do not."""

    # -- frames on channel 0 -----------------------------------------------------

    def _send(self, data: bytes) -> None:
        if self._protocol is not None:
            self._protocol.write(data)

    def _expect(self, replies: tuple[str, ...]) -> asyncio.Future[Method]:
        future: asyncio.Future[Method] = self.loop.create_future()
        self._waiters.append((replies, future))
        return future

    def on_method(self, buf: bytes, start: int, end: int) -> None:
        method = decode_method(buf, start, end)
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
                method=_method_name(args["class_id"], args["method_id"]),
            )
            log.warning(
                "broker closed the connection to %s: %s", self.params.safe_url(self.address), error
            )
            self._send(encode_method_frame(0, "connection.close-ok"))
            self._lose(error)
        elif name == "connection.blocked":
            self._set_blocked(method.args["reason"] or "blocked")
        elif name == "connection.unblocked":
            self._set_blocked(None)
        else:
            raise ProtocolError(f"unexpected {name} on channel 0")

    def on_header(self, buf: bytes, start: int, end: int) -> None:
        raise ProtocolError("content header on channel 0")

    def on_body(self, body: bytes) -> None:
        raise ProtocolError("content body on channel 0")

    # -- flow control -----------------------------------------------------------------

    def _set_blocked(self, reason: str | None) -> None:
        self._blocked = reason
        if reason is None:
            log.info("broker unblocked publishing on %s", self.params.safe_url(self.address))
            self.writing_resumed()
        else:
            log.warning(
                "broker blocked publishing on %s: %s", self.params.safe_url(self.address), reason
            )
        for callback in list(self.blocked_callbacks):
            self._tasks.call(callback, self, reason)

    def writing_resumed(self) -> None:
        if self._flow_stopped:
            return
        waiters, self._flow_waiters = self._flow_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _wait_flow(self) -> None:
        """Wait while the broker blocks us or the socket buffer is full."""
        while self._flow_stopped:
            waiter: asyncio.Future[None] = self.loop.create_future()
            self._flow_waiters.append(waiter)
            await waiter

    # -- heartbeats -------------------------------------------------------------------

    def _start_heartbeat(self) -> None:
        self._silent_ticks = 0
        if self.heartbeat:
            self._heartbeat_handle = self.loop.call_later(self.heartbeat / 2, self._heartbeat_tick)

    def _heartbeat_tick(self) -> None:
        protocol = self._protocol
        if protocol is None or self._close_reason is not None:
            return
        if protocol.received:
            protocol.received = False
            self._silent_ticks = 0
        else:
            self._silent_ticks += 1
            if self._silent_ticks >= _MISSED_HEARTBEAT_TICKS:
                self._close_reason = HeartbeatTimeoutError(
                    f"no data from {self.params.safe_url(self.address)} for "
                    f"{2 * self.heartbeat} s (heartbeat {self.heartbeat} s): "
                    "the broker or the network is gone"
                )
                log.error("%s", self._close_reason)
                protocol.abort()
                return
        if not protocol.sent:
            protocol.write(HEARTBEAT_FRAME)
        protocol.sent = False
        self._heartbeat_handle = self.loop.call_later(self.heartbeat / 2, self._heartbeat_tick)

    # -- losing and closing -------------------------------------------------------------

    def frame_error(self, protocol: FrameProtocol, exc: ProtocolError) -> None:
        log.error("protocol error on %s: %s", self.params.safe_url(self.address), exc)
        self._send(
            encode_method_frame(0, "connection.close", reply_code=501, reply_text=str(exc)[:200])
        )
        self._lose(exc)

    def _lose(self, reason: BaseException) -> None:
        """Close the transport; pending operations fail with ``reason``."""
        if self._close_reason is None:
            self._close_reason = reason
        if self._protocol is not None:
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
        self._transport_gone_for(None)

    def _fail_waiters(self, reason: BaseException) -> None:
        waiters, self._waiters = self._waiters, deque()
        for _, future in waiters:
            if not future.done():
                future.set_exception(reason)

    def transport_lost(self, protocol: FrameProtocol, exc: Exception | None) -> None:
        """The socket is closed: fail everything, then let the subclass react."""
        if protocol is not self._protocol:
            return  # a transport we already dropped (a failed connect attempt)
        reason = self._transport_gone_for(exc)
        if not self._connecting:
            self._on_lost(reason)

    def _transport_gone_for(self, exc: Exception | None) -> BaseException:
        """Forget the transport; fail what waits on it; returns the reason."""
        if self._heartbeat_handle is not None:
            self._heartbeat_handle.cancel()
            self._heartbeat_handle = None
        self._protocol = None
        self._handshake_done = False
        if self._closed_by_owner:
            reason: BaseException = ConnectionClosedError(f"{self!r} was closed by its owner")
        elif self._close_reason is not None:
            reason = self._close_reason
        else:
            detail = f": {exc}" if exc else " without a connection.close"
            reason = ConnectionLostError(
                f"connection to {self.params.safe_url(self.address)} lost{detail}"
            )
        self._close_reason = reason
        if self._transport_gone is not None and not self._transport_gone.done():
            self._transport_gone.set_result(None)
        self._fail_waiters(reason)
        for waiter in self._flow_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._flow_waiters.clear()
        if self._blocked is not None:
            self._blocked = None  # a new connection starts unblocked
            for callback in list(self.blocked_callbacks):
                self._tasks.call(callback, self, None)
        reopen = not self._closed_by_owner and self.topology is not None
        for channel in list(self._channels.values()):
            channel._connection_lost(reason, reopen=reopen)
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
        if self._closed_by_owner:
            reason = None
        for callback in list(self.close_callbacks):
            self._tasks.call(callback, self, reason)

    async def close(self, *, timeout: float = 5.0) -> None:
        """Close the connection: cancel owned tasks, send connection.close, wait.

        Idempotent. A robust connection closed this way never reconnects.
        """
        if self._closed_by_owner:
            await asyncio.shield(self._closed)
            return
        self._closed_by_owner = True
        await self._stop_background()
        await self._tasks.cancel_all()
        for channel in list(self._channels.values()):
            channel._flush_acks()
            await channel._tasks.cancel_all()
        protocol = self._protocol
        if protocol is not None and self._close_reason is None:
            reply = self._expect(("connection.close-ok",))
            self._send(
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
        if self._protocol is not None and self._transport_gone is not None:
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(self._transport_gone)
            except TimeoutError:
                if self._protocol is not None:
                    self._protocol.abort()
                await asyncio.shield(self._transport_gone)
        self._finish(None)
        await self._tasks.wait_all(timeout)  # async close callbacks
        log.info("closed %s", self.params.safe_url(self.address))

    async def _stop_background(self) -> None:
        """Robust connections stop reconnecting here (before the owned tasks are cancelled)."""


async def connect(
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
) -> Connection:
    """Open an AMQP connection.

    ``url`` is ``amqp://`` or ``amqps://`` (or a list of them, or several
    comma-separated hosts: tried in order), with optional query options
    ``heartbeat``, ``frame_max``, ``channel_max``, ``connection_timeout``, ``name``,
    ``auth_mechanism`` (``PLAIN`` or ``EXTERNAL``), ``cafile``, ``certfile`` and
    ``keyfile``; the keyword arguments of the same names override them.
    ``client_properties`` are sent to the broker (``connection_name`` shows in
    its management UI). ``memory://`` (or ``memory://name``) connects to the
    in-memory broker of :mod:`leveret.testing` instead.

    Raises:
        ConfigurationError: the URL or an option is invalid.
        ConnectError: no broker address could be reached, or the handshake failed.
        AuthenticationError: the broker refused the credentials.
    """
    if isinstance(url, str) and url.startswith("memory://"):
        return await _connect_memory(url, name)
    params = parse_urls(
        url,
        heartbeat=heartbeat,
        frame_max=frame_max,
        channel_max=channel_max,
        connection_timeout=connection_timeout,
        name=name,
        auth_mechanism=auth_mechanism,
    )
    connection = Connection(params, client_properties=client_properties, ssl_context=ssl_context)
    await connection._connect()
    return connection


async def _connect_memory(url: str, name: str | None) -> Connection:
    """The in-memory broker's connection, for ``memory://`` URLs.

    It offers what the patterns use (channels, ``close``, ``async with``), not
    every feature of a real connection; typed as one so that code written for
    RabbitMQ runs on it unchanged.
    """
    # Imported here: leveret.testing builds on leveret.amqp and leveret.patterns.
    from ..testing import connect_memory

    return cast(Connection, await connect_memory(url, name=name))
