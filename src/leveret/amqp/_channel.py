"""AMQP channels: declares, qos, publish with confirms, consume, and settling deliveries.

Publisher confirms are tracked by sequence number in one dict: a publish costs
one future, no task. Deliveries are parsed in the protocol's
``data_received`` and handed to the consumer callback directly; only an async
callback gets a task (owned by the channel, cancelled on close).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import struct
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from inspect import isawaitable
from typing import TYPE_CHECKING, Any, Final

from ..exceptions import (
    AMQPError,
    ChannelClosedError,
    ConfigurationError,
    ConnectionClosedError,
    ConsumerCancelledError,
    DeliveryError,
    MessageReturnedError,
    ProtocolError,
    PublishNackedError,
    PublishNotConfirmedError,
    broker_error,
)
from ._codec import Method, decode_method, encode_method_frame, method_name
from ._frames import (
    BASIC_ACK,
    BASIC_DELIVER,
    BASIC_NACK,
    Properties,
    ack_frame,
    decode_content_header,
    decode_deliver,
    decode_tag_and_bits,
    encode_properties,
    message_frames,
    nack_frame,
    publish_method_frame,
    reject_frame,
)
from ._message import Delivery, QueueDeclareOk, ReturnedMessage
from ._tasks import TaskOwner

if TYPE_CHECKING:
    from ._connection import Connection

log = logging.getLogger("leveret.amqp")

DeliveryCallback = Callable[[Delivery], Awaitable[Any] | None]
CancelCallback = Callable[[ConsumerCancelledError], Any]
ReturnCallback = Callable[[ReturnedMessage], Any]

_OPENING: Final = 0
_OPEN: Final = 1
_CLOSING: Final = 2
_CLOSED: Final = 3

_CONTENT_NONE: Final = 0
_CONTENT_DELIVER: Final = 1
_CONTENT_RETURN: Final = 2
_CONTENT_GET: Final = 3

_ACK_PENDING: Final = "ack-pending"  # acked by the user, frame not written yet
_SETTLED: Final = "settled"  # frame written
_PUBLISH_CACHE_SIZE: Final = 1024
_tag_counter = itertools.count(1)
_method_id = struct.Struct(">I").unpack_from


class Consumer:
    """One ``basic.consume`` on a channel (what a robust channel restarts)."""

    __slots__ = (
        "arguments",
        "callback",
        "cancelled",
        "exclusive",
        "no_ack",
        "on_cancel",
        "prefetch",
        "queue",
        "tag",
    )

    def __init__(
        self,
        tag: str,
        queue: str,
        callback: DeliveryCallback,
        *,
        no_ack: bool,
        exclusive: bool,
        arguments: Mapping[str, Any] | None,
        on_cancel: CancelCallback | None,
        prefetch: tuple[int, int] | None,
    ) -> None:
        self.tag = tag
        self.queue = queue
        self.callback = callback
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.arguments = dict(arguments) if arguments else None
        self.on_cancel = on_cancel
        self.prefetch = prefetch
        self.cancelled = False


class Channel:
    """An AMQP channel. Open one with :meth:`Connection.channel`.

    With ``publisher_confirms=True`` (the default) :meth:`publish` returns
    only once the broker has confirmed the message. On a robust connection the
    same object survives reconnects: it is reopened, its qos restored and its
    consumers restarted.
    """

    def __init__(self, connection: Connection, number: int, publisher_confirms: bool) -> None:
        self._connection = connection
        self._loop = connection.loop
        self.number = number
        self.publisher_confirms = publisher_confirms
        self._state = _OPENING
        self._close_reason: BaseException | None = None
        self._reopened: asyncio.Future[None] | None = None
        self._generation = 0
        self._waiters: deque[tuple[tuple[str, ...], asyncio.Future[Method]]] = deque()
        self._consumers: dict[str, Consumer] = {}
        self._tasks = TaskOwner()
        self._publish_cache: dict[tuple[str, str, bool], bytes] = {}
        #: Called with each :class:`ReturnedMessage` no awaiting publish claims.
        self.return_callbacks: list[ReturnCallback] = []
        self.close_callbacks: list[Callable[[Channel, BaseException | None], Any]] = []
        self._prefetch: tuple[int, int] | None = None
        self._global_prefetch: tuple[int, int] | None = None
        self._consume_lock = asyncio.Lock()
        self._reset_incarnation()

    def _reset_incarnation(self) -> None:
        """Forget everything that belongs to one broker-side life of the channel."""
        self._next_seq = 1
        self._confirm_low = 1
        self._unconfirmed: dict[int, asyncio.Future[None]] = {}
        self._mandatory: dict[int, tuple[str, str, bytes]] = {}
        self._returned: dict[int, ReturnedMessage] = {}
        self._unsettled: deque[int] = deque()
        self._settled: dict[int, str] = {}
        self._acks_pending: list[int] = []
        self._ack_flush_scheduled = False
        self._content_kind = _CONTENT_NONE
        self._content_meta: Any = None
        self._content_props: Properties | None = None
        self._content_size = 0
        self._content_chunks: list[bytes] = []
        self._content_received = 0
        self._get_waiter: asyncio.Future[Delivery | None] | None = None
        self._get_no_ack = False

    def __repr__(self) -> str:
        state = ("opening", "open", "closing", "closed")[self._state]
        return f"<Channel {self.number} {state} on {self._connection.params.safe_url()}>"

    @property
    def connection(self) -> Connection:
        return self._connection

    @property
    def is_open(self) -> bool:
        return self._state == _OPEN

    @property
    def is_closed(self) -> bool:
        """True once closed for good (a robust channel between reopens is not)."""
        return self._state == _CLOSED and self._reopened is None

    # -- lifecycle ----------------------------------------------------------------

    async def _open(self) -> None:
        """Open (or reopen) the channel on the connection's current transport."""
        self._state = _OPENING
        self._reset_incarnation()
        self._connection._register_channel(self)
        await self._call("channel.open", ("channel.open-ok",))
        if self.publisher_confirms:
            await self._call("confirm.select", ("confirm.select-ok",))
        self._generation += 1
        self._state = _OPEN
        self._close_reason = None

    async def close(self) -> None:
        """Close the channel: flush acks, stop consumers' tasks, send channel.close.

        Idempotent. Pending publishes fail with :class:`PublishNotConfirmedError`.
        """
        if self._state == _CLOSED:
            self._abandon(f"channel {self.number} was closed by its owner")
            return
        self._flush_acks()
        await self._tasks.cancel_all()
        if self._state == _OPEN:
            self._state = _CLOSING
            # If the connection goes first, the channel is gone either way.
            with contextlib.suppress(AMQPError):
                await self._call(
                    "channel.close",
                    ("channel.close-ok",),
                    reply_code=200,
                    reply_text="Normal shutdown",
                )
        self._finish(ChannelClosedError(f"channel {self.number} was closed by its owner"))
        self._abandon(f"channel {self.number} was closed by its owner")

    def _abandon(self, why: str) -> None:
        """Closed for good: nothing will reopen it; wake whoever waits for that."""
        if self._reopened is not None and not self._reopened.done():
            self._reopened.set_exception(ChannelClosedError(why))
            self._reopened.exception()
            for consumer in self._consumers.values():
                self._notify_cancel(consumer, ChannelClosedError(why))
        self._reopened = None
        self._connection._forget_channel(self)

    def _finish(self, reason: BaseException, *, notify_consumers: bool = True) -> None:
        """Fail everything waiting on this incarnation and mark it closed."""
        if self._state == _CLOSED:
            return
        self._state = _CLOSED
        self._close_reason = reason
        self._connection._unregister_channel(self)
        waiters, self._waiters = self._waiters, deque()
        for _, future in waiters:
            if not future.done():
                future.set_exception(reason)
        if self._get_waiter is not None and not self._get_waiter.done():
            self._get_waiter.set_exception(reason)
        unconfirmed = self._unconfirmed
        self._unconfirmed = {}
        if unconfirmed:
            error = PublishNotConfirmedError(
                f"channel {self.number} closed before the broker confirmed the publish "
                f"({reason}); it may or may not have been routed"
            )
            error.__cause__ = reason
            for confirm in unconfirmed.values():
                if not confirm.done():
                    confirm.set_exception(error)
        if notify_consumers:
            for consumer in self._consumers.values():
                self._notify_cancel(consumer, reason)
        for callback in list(self.close_callbacks):
            self._tasks.call(callback, self, reason)

    def _connection_lost(self, reason: BaseException, reopen: bool) -> None:
        """The transport is gone; on a robust connection wait to be reopened."""
        if reopen and self._reopened is None and self._state != _CLOSED:
            self._reopened = self._loop.create_future()
        self._finish(reason, notify_consumers=not reopen)

    async def _ensure_open(self) -> None:
        """Return when the channel is open; on a robust one wait for its reopen."""
        while self._state != _OPEN:
            if self._reopened is None:
                raise ChannelClosedError(
                    f"channel {self.number} is closed: {self._close_reason}"
                ) from self._close_reason
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

    def _reopen_done(self, error: BaseException | None) -> None:
        """Called by the robust connection after (failing to) reopen the channel."""
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
                self._notify_cancel(consumer, error)

    # -- synchronous methods --------------------------------------------------------

    async def _call(self, name: str, replies: tuple[str, ...], **args: Any) -> Method:
        """Send a method and wait for its reply (replies come back in order)."""
        protocol = self._connection._protocol
        if protocol is None:
            raise ChannelClosedError(f"channel {self.number}: the connection is not open")
        future: asyncio.Future[Method] = self._loop.create_future()
        self._waiters.append((replies, future))
        protocol.write(encode_method_frame(self.number, name, **args))
        return await future

    async def _ready_call(self, name: str, replies: tuple[str, ...], **args: Any) -> Method:
        if self._state != _OPEN:
            await self._ensure_open()
        return await self._call(name, replies, **args)

    async def exchange_declare(
        self,
        exchange: str,
        type: str = "direct",
        *,
        passive: bool = False,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        """Declare an exchange (``passive`` only checks that it exists).

        Raises:
            NotFoundError: passive, and the exchange does not exist.
            PreconditionFailedError: it exists with other settings.
        """
        args = dict(
            exchange=exchange,
            type=type,
            passive=passive,
            durable=durable,
            auto_delete=auto_delete,
            internal=internal,
            arguments=arguments,
        )
        await self._ready_call("exchange.declare", ("exchange.declare-ok",), **args)
        if not passive:
            self._remember(("exchange", exchange), "exchange.declare", args)

    async def exchange_delete(self, exchange: str, *, if_unused: bool = False) -> None:
        await self._ready_call(
            "exchange.delete", ("exchange.delete-ok",), exchange=exchange, if_unused=if_unused
        )
        self._forget(("exchange", exchange))

    async def exchange_bind(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        *,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        args = dict(
            destination=destination, source=source, routing_key=routing_key, arguments=arguments
        )
        await self._ready_call("exchange.bind", ("exchange.bind-ok",), **args)
        self._remember(
            ("exchange-bind", destination, source, routing_key, repr(arguments)),
            "exchange.bind",
            args,
        )

    async def exchange_unbind(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        *,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        await self._ready_call(
            "exchange.unbind",
            ("exchange.unbind-ok",),
            destination=destination,
            source=source,
            routing_key=routing_key,
            arguments=arguments,
        )
        self._forget(("exchange-bind", destination, source, routing_key, repr(arguments)))

    async def queue_declare(
        self,
        queue: str = "",
        *,
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> QueueDeclareOk:
        """Declare a queue; ``""`` lets the broker choose the name (see the result).

        Raises:
            NotFoundError: passive, and the queue does not exist.
            PreconditionFailedError: it exists with other settings.
            ResourceLockedError: it is exclusive to another connection.
        """
        args = dict(
            queue=queue,
            passive=passive,
            durable=durable,
            exclusive=exclusive,
            auto_delete=auto_delete,
            arguments=arguments,
        )
        reply = await self._ready_call("queue.declare", ("queue.declare-ok",), **args)
        result = QueueDeclareOk(**reply.args)
        if not passive:
            self._remember(("queue", result.queue), "queue.declare", args)
        return result

    async def queue_bind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        *,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        args = dict(queue=queue, exchange=exchange, routing_key=routing_key, arguments=arguments)
        await self._ready_call("queue.bind", ("queue.bind-ok",), **args)
        self._remember(
            ("queue-bind", queue, exchange, routing_key, repr(arguments)), "queue.bind", args
        )

    async def queue_unbind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        *,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        await self._ready_call(
            "queue.unbind",
            ("queue.unbind-ok",),
            queue=queue,
            exchange=exchange,
            routing_key=routing_key,
            arguments=arguments,
        )
        self._forget(("queue-bind", queue, exchange, routing_key, repr(arguments)))

    async def queue_purge(self, queue: str) -> int:
        """Drop the queue's ready messages; returns how many."""
        reply = await self._ready_call("queue.purge", ("queue.purge-ok",), queue=queue)
        count: int = reply.args["message_count"]
        return count

    async def queue_delete(
        self, queue: str, *, if_unused: bool = False, if_empty: bool = False
    ) -> int:
        """Delete a queue; returns how many messages it held."""
        reply = await self._ready_call(
            "queue.delete",
            ("queue.delete-ok",),
            queue=queue,
            if_unused=if_unused,
            if_empty=if_empty,
        )
        self._forget(("queue", queue))
        count: int = reply.args["message_count"]
        return count

    async def qos(
        self, prefetch_count: int, *, prefetch_size: int = 0, global_: bool = False
    ) -> None:
        """Limit unacked deliveries: per consumer started afterwards, or (``global_``)
        shared by the whole channel. A robust channel restores it after reconnecting.
        """
        if not 0 <= prefetch_count <= 65535:
            raise ConfigurationError(f"prefetch_count={prefetch_count} is outside 0..65535")
        await self._ready_call(
            "basic.qos",
            ("basic.qos-ok",),
            prefetch_count=prefetch_count,
            prefetch_size=prefetch_size,
            global_=global_,
        )
        if global_:
            self._global_prefetch = (prefetch_count, prefetch_size)
        else:
            self._prefetch = (prefetch_count, prefetch_size)

    def _remember(self, key: tuple[str, ...], method: str, args: dict[str, Any]) -> None:
        topology = self._connection.topology
        if topology is not None:
            topology.remember(key, method, args)

    def _forget(self, key: tuple[str, ...]) -> None:
        topology = self._connection.topology
        if topology is not None:
            topology.forget(key)

    # -- publishing ------------------------------------------------------------------

    async def publish(
        self,
        body: bytes,
        *,
        routing_key: str,
        exchange: str = "",
        mandatory: bool = False,
        properties: Properties | None = None,
        content_type: str | None = None,
        content_encoding: str | None = None,
        headers: Mapping[str, Any] | None = None,
        delivery_mode: int | None = None,
        priority: int | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        expiration: str | int | None = None,
        message_id: str | None = None,
        timestamp: int | float | None = None,
        type: str | None = None,
        user_id: str | None = None,
        app_id: str | None = None,
        confirm: bool = True,
    ) -> None:
        """Publish a message; on a confirming channel, return once the broker took it.

        Pass either ``properties`` or the individual property keywords.
        ``expiration`` is in milliseconds. While the broker blocks the connection
        (memory or disk alarm) or the socket buffer is full, this waits.
        ``confirm=False`` returns as soon as the message is written, even on a
        confirming channel; if it is ``mandatory`` and unroutable, the returned
        message goes to :attr:`return_callbacks` instead of raising.

        Raises:
            PublishNackedError: the broker refused the message.
            MessageReturnedError: ``mandatory`` and no queue took it (attached).
            PublishNotConfirmedError: the channel closed before the confirm.
            ChannelClosedError: the channel is closed (or did not reopen in time).
            ConfigurationError: a property is invalid, or the properties do not
                fit in one frame; nothing was sent.
        """
        if self._state != _OPEN:
            await self._ensure_open()
        connection = self._connection
        protocol = connection._protocol
        if connection._blocked is not None or (protocol is not None and protocol.write_paused):
            await connection._wait_flow()
            if self._state != _OPEN:
                await self._ensure_open()
            protocol = connection._protocol
        if body.__class__ is not bytes:  # the exact type is the fast path
            body = _as_bytes(body)
        if properties is None:
            props = encode_properties(
                content_type,
                content_encoding,
                headers,
                delivery_mode,
                priority,
                correlation_id,
                reply_to,
                expiration,
                message_id,
                timestamp,
                type,
                user_id,
                app_id,
            )
        else:
            props = properties.encode()
        key = (exchange, routing_key, mandatory)
        method = self._publish_cache.get(key)
        if method is None:
            method = publish_method_frame(self.number, exchange, routing_key, mandatory)
            if len(self._publish_cache) >= _PUBLISH_CACHE_SIZE:
                self._publish_cache.clear()
            self._publish_cache[key] = method
        assert protocol is not None
        frames = message_frames(method, self.number, props, body, connection.frame_max)
        if not (self.publisher_confirms and confirm):
            if self.publisher_confirms:
                self._next_seq += 1  # the broker counts it; its confirm is ignored
            protocol.write(frames)
            return
        seq = self._next_seq
        self._next_seq = seq + 1
        future: asyncio.Future[None] = self._loop.create_future()
        self._unconfirmed[seq] = future
        if mandatory:
            self._mandatory[seq] = key[0], key[1], body
        protocol.write(frames)
        await future

    def _on_confirm(self, tag: int, multiple: bool, ack: bool) -> None:
        unconfirmed = self._unconfirmed
        if multiple:
            for seq in range(self._confirm_low, tag + 1):
                future = unconfirmed.pop(seq, None)
                if future is not None:
                    self._resolve_confirm(seq, future, ack)
            if tag >= self._confirm_low:
                self._confirm_low = tag + 1
            return
        future = unconfirmed.pop(tag, None)
        if future is not None:
            self._resolve_confirm(tag, future, ack)
        if tag == self._confirm_low:
            low = tag + 1
            while low < self._next_seq and low not in unconfirmed:
                low += 1
            self._confirm_low = low

    def _resolve_confirm(self, seq: int, future: asyncio.Future[None], ack: bool) -> None:
        returned = None
        if self._mandatory:
            self._mandatory.pop(seq, None)
            returned = self._returned.pop(seq, None)
        if future.done():
            return  # the publisher gave up (timeout or cancel)
        if not ack:
            future.set_exception(
                PublishNackedError(
                    f"broker refused the message (basic.nack) on channel {self.number}"
                )
            )
        elif returned is not None:
            future.set_exception(MessageReturnedError(returned))
        else:
            future.set_result(None)

    def _on_return(self, message: ReturnedMessage) -> None:
        """Attribute a basic.return to the oldest matching unconfirmed mandatory publish.

        A return always precedes the confirm of the same message, and the
        broker sends them in publish order, so the oldest pending publish with the
        same destination and body is the one returned (byte-identical messages are
        interchangeable).
        """
        for seq, (exchange, routing_key, body) in self._mandatory.items():
            if (
                exchange == message.exchange
                and routing_key == message.routing_key
                and body == message.body
                and seq not in self._returned
            ):
                self._returned[seq] = message
                return
        if not self.return_callbacks:
            log.warning(
                "message returned by the broker and nobody listens for it: %s %s "
                "(exchange %r, routing key %r)",
                message.reply_code,
                message.reply_text,
                message.exchange,
                message.routing_key,
            )
        for callback in list(self.return_callbacks):
            self._tasks.call(callback, message)

    # -- consuming ----------------------------------------------------------------

    async def consume(
        self,
        queue: str,
        callback: DeliveryCallback,
        *,
        no_ack: bool = False,
        exclusive: bool = False,
        consumer_tag: str | None = None,
        arguments: Mapping[str, Any] | None = None,
        on_cancel: CancelCallback | None = None,
        prefetch_count: int | None = None,
    ) -> str:
        """Start a consumer; returns its consumer tag.

        ``callback`` is called with each :class:`Delivery`. A plain function runs
        right away in the event loop; if it returns an awaitable (an ``async def``),
        that runs as a task owned by the channel. ``on_cancel`` is called if the
        broker cancels the consumer (its queue was deleted); without it, the
        cancellation is logged. ``prefetch_count`` sets this consumer's own qos
        (``basic.qos`` then ``basic.consume``, never interleaved with another
        consumer's on this channel).
        """
        if prefetch_count is not None:
            async with self._consume_lock:
                await self.qos(prefetch_count)
                return await self.consume(
                    queue,
                    callback,
                    no_ack=no_ack,
                    exclusive=exclusive,
                    consumer_tag=consumer_tag,
                    arguments=arguments,
                    on_cancel=on_cancel,
                )
        tag = consumer_tag or f"leveret.{self._connection.id}.{next(_tag_counter)}"
        if tag in self._consumers:
            raise ConfigurationError(f"consumer tag {tag!r} is already in use on this channel")
        if self._state != _OPEN:
            await self._ensure_open()
        consumer = Consumer(
            tag,
            queue,
            callback,
            no_ack=no_ack,
            exclusive=exclusive,
            arguments=arguments,
            on_cancel=on_cancel,
            prefetch=self._prefetch,
        )
        self._consumers[tag] = consumer
        try:
            await self._start_consumer(consumer)
        except BaseException:
            self._consumers.pop(tag, None)
            raise
        return tag

    async def _start_consumer(self, consumer: Consumer) -> None:
        await self._call(
            "basic.consume",
            ("basic.consume-ok",),
            queue=consumer.queue,
            consumer_tag=consumer.tag,
            no_ack=consumer.no_ack,
            exclusive=consumer.exclusive,
            arguments=consumer.arguments,
        )

    async def cancel(self, consumer_tag: str) -> None:
        """Stop a consumer. Deliveries that arrive after this call are requeued."""
        consumer = self._consumers.get(consumer_tag)
        if consumer is None:
            return
        consumer.cancelled = True
        try:
            if self._state == _OPEN:
                await self._call("basic.cancel", ("basic.cancel-ok",), consumer_tag=consumer_tag)
        finally:
            self._consumers.pop(consumer_tag, None)

    def iterate(
        self,
        queue: str,
        *,
        no_ack: bool = False,
        exclusive: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> DeliveryIterator:
        """Consume as an async iterator; use it as ``async with``::

            async with channel.iterate("jobs") as deliveries:
                async for delivery in deliveries:
                    ...
                    delivery.ack()

        Leaving the block cancels the consumer and requeues deliveries that
        were received but not yet handed out.
        """
        return DeliveryIterator(
            self, queue, no_ack=no_ack, exclusive=exclusive, arguments=arguments
        )

    async def get(self, queue: str, *, no_ack: bool = False) -> Delivery | None:
        """Fetch one message with ``basic.get``; ``None`` if the queue is empty."""
        if self._state != _OPEN:
            await self._ensure_open()
        if self._get_waiter is not None:
            raise ConfigurationError(f"channel {self.number} already has a basic.get in flight")
        waiter: asyncio.Future[Delivery | None] = self._loop.create_future()
        self._get_waiter = waiter
        self._get_no_ack = no_ack
        try:
            reply = await self._call(
                "basic.get", ("basic.get-ok", "basic.get-empty"), queue=queue, no_ack=no_ack
            )
            if reply.name == "basic.get-empty":
                return None
            return await waiter
        finally:
            self._get_waiter = None
            if not waiter.done():
                waiter.cancel()
            elif not waiter.cancelled():
                waiter.exception()  # failed with the channel; the caller got that error

    # -- settling deliveries -----------------------------------------------------------

    def _settle(self, delivery: Delivery, kind: str, requeue: bool) -> None:
        if delivery.settled is not None:
            if delivery.no_ack:
                raise DeliveryError(
                    f"delivery {delivery.delivery_tag} was consumed with no_ack=True; "
                    "the broker already considers it acknowledged"
                )
            raise DeliveryError(
                f"delivery {delivery.delivery_tag} on channel {self.number} was already "
                f"settled ({delivery.settled}); a second {kind} would close the channel"
            )
        if delivery._generation != self._generation or self._state != _OPEN:
            raise DeliveryError(
                f"channel {self.number} closed after delivery {delivery.delivery_tag} arrived; "
                f"the {kind} cannot be sent and the broker will redeliver the message"
            )
        delivery.settled = kind
        tag = delivery.delivery_tag
        if kind == "ack":
            self._settled[tag] = _ACK_PENDING
            self._acks_pending.append(tag)
            if not self._ack_flush_scheduled:
                protocol = self._connection._protocol
                assert protocol is not None
                self._ack_flush_scheduled = True
                protocol.before_flush(self._flush_acks)
            return
        self._settled[tag] = _SETTLED
        protocol = self._connection._protocol
        assert protocol is not None
        if kind == "nack":
            protocol.write(nack_frame(self.number, tag, False, requeue))
        else:
            protocol.write(reject_frame(self.number, tag, requeue))

    def _flush_acks(self) -> None:
        """Write pending acks: one ``multiple`` ack covers the fully settled prefix."""
        self._ack_flush_scheduled = False
        pending = self._acks_pending
        if not pending:
            return
        protocol = self._connection._protocol
        if protocol is None or self._state != _OPEN:
            pending.clear()
            return
        unsettled = self._unsettled
        settled = self._settled
        prefix_ack = 0
        while unsettled:
            kind = settled.get(unsettled[0])
            if kind is None:
                break
            tag = unsettled.popleft()
            del settled[tag]
            if kind is _ACK_PENDING:
                prefix_ack = tag
        if prefix_ack:
            protocol.write(ack_frame(self.number, prefix_ack, True))
        for tag in pending:
            if tag > prefix_ack:
                protocol.write(ack_frame(self.number, tag, False))
                settled[tag] = _SETTLED
        pending.clear()

    # -- incoming frames (called by the protocol) ------------------------------------

    def on_method(self, buf: bytes, start: int, end: int) -> None:
        (method_id,) = _method_id(buf, start)
        if method_id == BASIC_DELIVER:
            self._content_kind = _CONTENT_DELIVER
            self._content_meta = decode_deliver(buf, start + 4)
        elif method_id in (BASIC_ACK, BASIC_NACK):
            tag, bits = decode_tag_and_bits(buf, start + 4)
            self._on_confirm(tag, bool(bits & 1), method_id == BASIC_ACK)
        else:
            self._on_other_method(decode_method(buf, start, end))

    def on_header(self, buf: bytes, start: int, end: int) -> None:
        if self._content_kind == _CONTENT_NONE:
            raise ProtocolError(f"content header on channel {self.number} without a method")
        size, props = decode_content_header(buf, start)
        if size == 0:
            self._content_complete(props, b"")
        else:
            self._content_props = props
            self._content_size = size
            self._content_received = 0
            self._content_chunks = []

    def on_body(self, body: bytes) -> None:
        props = self._content_props
        if props is None:
            raise ProtocolError(f"content body on channel {self.number} without a header")
        received = self._content_received + len(body)
        if received < self._content_size:
            self._content_chunks.append(body)
            self._content_received = received
            return
        if self._content_chunks:
            self._content_chunks.append(body)
            body = b"".join(self._content_chunks)
            self._content_chunks = []
        self._content_props = None
        self._content_complete(props, body)

    def _content_complete(self, props: Properties, body: bytes) -> None:
        kind = self._content_kind
        self._content_kind = _CONTENT_NONE
        if kind == _CONTENT_DELIVER:
            self._on_delivery(self._content_meta, props, body)
        elif kind == _CONTENT_RETURN:
            code, text, exchange, routing_key = self._content_meta
            self._on_return(ReturnedMessage(code, text, exchange, routing_key, body, props))
        elif kind == _CONTENT_GET:
            tag, redelivered, exchange, routing_key, count = self._content_meta
            no_ack = self._get_no_ack
            if not no_ack:
                self._unsettled.append(tag)
            delivery = Delivery(
                self,
                self._generation,
                body,
                props,
                tag,
                exchange,
                routing_key,
                redelivered,
                None,
                no_ack,
                count,
            )
            if self._get_waiter is not None and not self._get_waiter.done():
                self._get_waiter.set_result(delivery)

    def _on_delivery(
        self, meta: tuple[str, int, bool, str, str], props: Properties, body: bytes
    ) -> None:
        consumer_tag, tag, redelivered, exchange, routing_key = meta
        consumer = self._consumers.get(consumer_tag)
        if consumer is None:
            log.error(
                "delivery %d for unknown consumer %r on channel %d", tag, consumer_tag, self.number
            )
            return
        no_ack = consumer.no_ack
        if consumer.cancelled:
            if not no_ack:
                self._unsettled.append(tag)
                self._settled[tag] = _SETTLED
                protocol = self._connection._protocol
                assert protocol is not None
                protocol.write(nack_frame(self.number, tag, False, True))
            return
        if not no_ack:
            self._unsettled.append(tag)
        # Positional: this line runs once per message (keywords cost twice as much).
        delivery = Delivery(
            self,
            self._generation,
            body,
            props,
            tag,
            exchange,
            routing_key,
            redelivered,
            consumer_tag,
            no_ack,
        )
        try:
            result = consumer.callback(delivery)
        except Exception:
            log.exception("consumer %r callback failed on %r", consumer_tag, delivery)
            return
        if result is not None and isawaitable(result):
            self._tasks.spawn(result, f"leveret consumer {consumer_tag}")

    def _on_other_method(self, method: Method) -> None:
        name = method.name
        waiters = self._waiters
        if waiters and name in waiters[0][0]:
            _, future = waiters.popleft()
            if name == "basic.get-ok":
                args = method.args
                self._content_kind = _CONTENT_GET
                self._content_meta = (
                    args["delivery_tag"],
                    args["redelivered"],
                    args["exchange"],
                    args["routing_key"],
                    args["message_count"],
                )
            if not future.done():
                future.set_result(method)
            return
        if name == "basic.return":
            args = method.args
            self._content_kind = _CONTENT_RETURN
            self._content_meta = (
                args["reply_code"],
                args["reply_text"],
                args["exchange"],
                args["routing_key"],
            )
        elif name == "channel.close":
            self._on_broker_close(method)
        elif name == "basic.cancel":
            self._on_broker_cancel(method.args["consumer_tag"])
        elif name == "channel.flow":
            active = method.args["active"]
            self._connection._send(
                encode_method_frame(self.number, "channel.flow-ok", active=active)
            )
        else:
            raise ProtocolError(f"unexpected {name} on channel {self.number}")

    def _on_broker_close(self, method: Method) -> None:
        args = method.args
        error = broker_error(
            args["reply_code"],
            args["reply_text"],
            scope="channel",
            method=method_name(args["class_id"], args["method_id"]),
        )
        self._connection._send(encode_method_frame(self.number, "channel.close-ok"))
        log.warning("channel %d closed by the broker: %s", self.number, error)
        robust = self._connection.topology is not None and self._state == _OPEN
        # A reconnect or an earlier reopen that is restoring this channel reopens it
        # again itself; a second reopen would send a second channel.open, which the
        # broker punishes by closing the whole connection (504 CHANNEL_ERROR).
        reopening = self._reopened is not None
        self._connection_lost(error, reopen=robust)
        if robust and not reopening:
            self._connection._reopen_channel_later(self)

    def _on_broker_cancel(self, consumer_tag: str) -> None:
        consumer = self._consumers.pop(consumer_tag, None)
        if consumer is not None:
            self._notify_cancel(consumer, broker_cancelled(consumer_tag, consumer.queue))

    def _notify_cancel(self, consumer: Consumer, reason: BaseException) -> None:
        notify_cancel(self._tasks, consumer.tag, consumer.on_cancel, reason, consumer.cancelled)


def broker_cancelled(consumer_tag: str, queue: str) -> ConsumerCancelledError:
    """What a consumer's owner is told when the broker sends ``basic.cancel``."""
    return ConsumerCancelledError(
        f"the broker cancelled consumer {consumer_tag!r} on queue {queue!r} "
        "(the queue was deleted or is unavailable)"
    )


def notify_cancel(
    tasks: TaskOwner,
    consumer_tag: str,
    on_cancel: CancelCallback | None,
    reason: BaseException,
    cancelled_by_owner: bool = False,
) -> None:
    """Tell a consumer's owner that it stopped: through ``on_cancel``, else a warning
    (none when its owner stopped it or closed its channel or connection)."""
    if isinstance(reason, ConsumerCancelledError):
        error = reason
    else:
        error = ConsumerCancelledError(f"consumer {consumer_tag!r} stopped: {reason}")
        error.__cause__ = reason
    if on_cancel is not None:
        tasks.call(on_cancel, error)
    elif not cancelled_by_owner and not isinstance(
        reason, ChannelClosedError | ConnectionClosedError
    ):
        log.warning("%s", error)


def _as_bytes(body: Any) -> bytes:
    if isinstance(body, bytearray | memoryview):
        return bytes(body)
    raise ConfigurationError(f"message body must be bytes, not {type(body).__name__}")


class DeliveryIterator:
    """Deliveries of one consumer as an async iterator (see :meth:`Channel.iterate`)."""

    def __init__(
        self,
        channel: Channel,
        queue: str,
        *,
        no_ack: bool,
        exclusive: bool,
        arguments: Mapping[str, Any] | None,
    ) -> None:
        self._channel = channel
        self._queue = queue
        self._options = dict(no_ack=no_ack, exclusive=exclusive, arguments=arguments)
        self._buffer: deque[Delivery] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: ConsumerCancelledError | None = None
        self.consumer_tag: str | None = None

    async def __aenter__(self) -> DeliveryIterator:
        self.consumer_tag = await self._channel.consume(
            self._queue,
            self._push,
            on_cancel=self._cancelled,
            **self._options,  # type: ignore[arg-type]
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.cancel()

    async def cancel(self) -> None:
        """Stop consuming and requeue what was received but not handed out."""
        if self.consumer_tag is not None:
            tag, self.consumer_tag = self.consumer_tag, None
            try:
                await self._channel.cancel(tag)
            finally:
                while self._buffer:
                    delivery = self._buffer.popleft()
                    if delivery.settled is None and self._channel.is_open:
                        delivery.nack(requeue=True)

    def _push(self, delivery: Delivery) -> None:
        self._buffer.append(delivery)
        self._wake()

    def _cancelled(self, error: ConsumerCancelledError) -> None:
        if isinstance(error.__cause__, ChannelClosedError | ConnectionClosedError):
            self.consumer_tag = None  # closed by its owner: the iteration just ends
        else:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self

    async def __anext__(self) -> Delivery:
        while not self._buffer:
            if self._error is not None:
                raise self._error
            if self.consumer_tag is None:
                raise StopAsyncIteration
            self._waiter = self._channel._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._buffer.popleft()
