"""AMQP channels: their life, synchronous methods, publishing and consuming.

A channel's broker-side life (an *incarnation*: from ``channel.open`` to its
close) owns an :class:`~._acks.AckWindow` (settling deliveries), a
:class:`~._confirms.ConfirmWindow` (publisher confirms) and a
:class:`~._content.ChannelFrames` (the frames the protocol hands over). A
publish costs one future and no task; deliveries go from ``data_received``
straight to the consumer's callback; only an async callback gets a task (owned
by the channel, cancelled on close). The declaring methods come from
:class:`~._declare.Declarations` and ``consume``/``iterate`` from
:class:`~._consumer.Consuming` (both shared with the in-memory channel);
:class:`~._robust.RobustChannel` adds reopening.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from ..exceptions import (
    AMQPError,
    ChannelClosedError,
    ConfigurationError,
    MessageTooLargeError,
    ProtocolError,
    PublishError,
    PublishNotConfirmedError,
    broker_error,
)
from ._acks import AckWindow
from ._batch import publish_batches
from ._closing import AsyncClosing
from ._codec import Method, encode_method_frame, method_name
from ._confirms import (
    ConfirmWindow,
    Destination,
    ReturnCallback,
    dispatch_return,
    refused_as_too_large,
)
from ._consumer import Consumer, Consuming, broker_cancelled, notify_cancel
from ._content import ChannelFrames
from ._declare import Declarations
from ._frames import (
    Properties,
    encode_properties,
    id_properties,
    message_frames,
    publish_method_frame,
)
from ._get import Getting
from ._message import Delivery, ReturnedMessage
from ._states import ChannelState
from ._tasks import TaskOwner
from ._tx import Transactions

if TYPE_CHECKING:
    from ._connection import Connection

log = logging.getLogger("leveret.amqp")

_PUBLISH_CACHE_SIZE: Final = 1024

_OPENING: Final = ChannelState.OPENING
_OPEN: Final = ChannelState.OPEN
_CLOSING: Final = ChannelState.CLOSING
_CLOSED: Final = ChannelState.CLOSED


class Channel(Declarations, Consuming, Getting, Transactions, AsyncClosing):
    """An AMQP channel. Open one with :meth:`Connection.channel`; close it with
    :meth:`close` or ``async with``.

    With ``publisher_confirms=True`` (the default) :meth:`publish` returns
    only once the broker has confirmed the message. A channel opened with
    ``publisher_confirms=False`` can be made transactional instead
    (:meth:`tx_select`). On a robust connection the channel is a
    :class:`RobustChannel`: the same object survives reconnects.
    """

    _connection: Connection

    def __init__(self, connection: Connection, number: int, publisher_confirms: bool) -> None:
        self._connection = connection
        self._loop = connection.loop
        self.number = number
        self.publisher_confirms = publisher_confirms
        self._state = _OPENING
        self._open_sent = False  # channel.open written for this incarnation
        self._close_reason: BaseException | None = None
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
        #: In transaction mode (tx.select sent); kept across a robust channel's reopens.
        self._transactional = False
        # The ack window of the incarnation the open transaction began in: a
        # transaction does not outlive its incarnation (see tx_commit).
        self._tx_window: AckWindow | None = None
        # One incarnation's state, made anew by _open.
        self._acks: AckWindow
        self._confirms: ConfirmWindow
        self._frames: ChannelFrames
        self._get_waiter: asyncio.Future[Delivery | None] | None = None
        self._get_no_ack = False

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.number} {self._state.value} "
            f"on {self._connection.params.safe_url()}>"
        )

    @property
    def connection(self) -> Connection:
        return self._connection

    @property
    def is_open(self) -> bool:
        return self._state is _OPEN

    @property
    def is_closed(self) -> bool:
        """True once closed for good."""
        return self._state is _CLOSED

    # -- lifecycle ----------------------------------------------------------------

    async def _open(self) -> None:
        """Open (or reopen) the channel on the connection's current transport."""
        protocol = self._connection._protocol
        if protocol is None:
            raise ChannelClosedError(f"channel {self.number}: the connection is not open")
        self._state = _OPENING
        self._acks = AckWindow(self, protocol)
        self._confirms = ConfirmWindow(self.number)
        self._frames = ChannelFrames(self, self._consumers, self._acks, self._confirms, self._tasks)
        self._get_waiter = None
        self._connection._register_channel(self, self._frames)
        self._open_sent = True
        await self._call("channel.open", ("channel.open-ok",))
        if self.publisher_confirms:
            await self._call("confirm.select", ("confirm.select-ok",))
        if self._transactional:  # a robust channel reopening: its new life is transactional too
            await self._call("tx.select", ("tx.select-ok",))
        self._state = _OPEN
        self._acks.open = True
        self._close_reason = None

    async def close(self) -> None:
        """Close the channel: flush acks, stop consumers' tasks, send channel.close.

        Idempotent. Pending publishes fail with :class:`PublishNotConfirmedError`.
        """
        if self._state is _CLOSED:
            self._abandon(f"channel {self.number} was closed by its owner")
            return
        self._acks.flush()
        await self._tasks.cancel_all()
        if self._state is _OPEN:
            self._state = _CLOSING
            self._acks.open = False
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

    def _opening_on_broker(self) -> bool:
        """Whether ``channel.open`` went out and the channel is not open yet (its
        open-ok may be back already: a cancellation can land after it)."""
        return self._state is _OPENING and self._open_sent

    async def _close_abandoned(self) -> None:
        """Close a channel whose opening was cancelled, then free its number.

        The replies to what the opening sent still come first, to the cancelled
        waiters, which ignore them.
        """
        with contextlib.suppress(AMQPError):
            await self._call(
                "channel.close", ("channel.close-ok",), reply_code=200, reply_text="Normal shutdown"
            )
        self._finish(ChannelClosedError(f"channel {self.number}: its opening was cancelled"))
        self._abandon(f"channel {self.number}: its opening was cancelled")

    async def _connection_closing(self) -> None:
        """Its connection is being closed by its owner: settle what is settled, stop tasks."""
        self._acks.flush()
        await self._tasks.cancel_all()

    def _abandon(self, why: str) -> None:
        """Closed for good: nothing will reopen it."""
        self._connection._forget_channel(self)

    def _finish(
        self, reason: BaseException, *, notify_consumers: bool = True, unregister: bool = True
    ) -> None:
        """End this incarnation: fail everything waiting on it and mark it closed.

        ``notify_consumers=False`` keeps the consumers' owners in the dark (the
        consumers are kept, to be restarted when the channel reopens).
        ``unregister=False`` keeps taking its frames (see :meth:`_crossed_close`).
        """
        if unregister:
            self._connection._unregister_channel(self, self._frames)
        waiters, self._waiters = self._waiters, deque()
        for _, future in waiters:  # closed already: the close-ok of a crossed close
            if not future.done():
                future.set_exception(reason)
        if self._state is _CLOSED:
            return
        self._state = _CLOSED
        self._open_sent = False
        self._acks.open = False
        self._close_reason = reason
        if self._get_waiter is not None and not self._get_waiter.done():
            self._get_waiter.set_exception(reason)
        self._confirms.fail_all(reason)
        if notify_consumers:
            for consumer in self._consumers.values():
                notify_cancel(self._tasks, consumer, reason)
        for callback in list(self.close_callbacks):
            self._tasks.call(callback, self, reason)

    def _connection_lost(self, reason: BaseException) -> None:
        """The transport is gone (the connection says why)."""
        self._finish(reason)

    def _closed_by_broker(self, error: BaseException) -> None:
        """The broker closed the channel (``error`` is its reply code as an exception)."""
        self._finish(error)

    def _crossed_close(self, error: BaseException) -> None:
        """The broker closed the channel while our own ``channel.close`` was on its way.

        Trap: the broker still answers ours with a ``channel.close-ok``. Until it
        comes, the channel keeps taking its frames and its number (it stays listed
        until :meth:`close` has that answer): freed at once, the answer would reach no
        channel, or a new one on the same number, and either is a protocol error that
        takes the whole connection down. The rest waiting on the channel fails now.
        """
        owner = [waiter for waiter in self._waiters if "channel.close-ok" in waiter[0]]
        self._waiters = deque(w for w in self._waiters if "channel.close-ok" not in w[0])
        self._finish(error, unregister=False)
        self._waiters.extend(owner)

    async def _ensure_open(self) -> None:
        """Return when the channel is open.

        Raises:
            ChannelClosedError: it is closed (the reason is chained).
        """
        if self._state is not _OPEN:
            raise ChannelClosedError(
                f"channel {self.number} is closed: {self._close_reason}"
            ) from self._close_reason

    # -- synchronous methods --------------------------------------------------------

    async def _call(self, name: str, replies: tuple[str, ...], **args: Any) -> Method:
        """Send a method and wait for its reply (replies come back in order)."""
        protocol = self._connection._protocol
        if protocol is None:
            raise ChannelClosedError(f"channel {self.number}: the connection is not open")
        future: asyncio.Future[Method] = self._loop.create_future()
        self._waiters.append((replies, future))
        if self._acks.pending:  # an ack is never overtaken (see _acks)
            self._acks.flush()
        protocol.write(encode_method_frame(self.number, name, **args))
        return await future

    async def _ready_call(self, name: str, replies: tuple[str, ...], **args: Any) -> Method:
        if self._state is not _OPEN:
            await self._ensure_open()
        return await self._call(name, replies, **args)

    async def _declare(self, method: str, args: dict[str, Any]) -> dict[str, Any]:
        """Send a declaring method (see :class:`Declarations`); returns the reply's arguments."""
        return (await self._ready_call(method, (f"{method}-ok",), **args)).args

    async def qos(
        self, prefetch_count: int, *, prefetch_size: int = 0, global_: bool = False
    ) -> None:
        """Limit unacked deliveries: per consumer started afterwards, or (``global_``)
        shared by the whole channel. A robust channel restores it after reconnecting.
        """
        if not 0 <= prefetch_count <= 65535:
            raise ConfigurationError(f"prefetch_count={prefetch_count} is outside 0..65535")
        if self._state is not _OPEN:
            await self._ensure_open()
        await self._send_qos((prefetch_count, prefetch_size), global_=global_)
        if global_:
            self._global_prefetch = (prefetch_count, prefetch_size)
        else:
            self._prefetch = (prefetch_count, prefetch_size)

    async def _send_qos(self, prefetch: tuple[int, int], *, global_: bool = False) -> None:
        count, size = prefetch
        await self._call(
            "basic.qos",
            ("basic.qos-ok",),
            prefetch_count=count,
            prefetch_size=size,
            global_=global_,
        )

    def _write(self, frame: bytes) -> None:
        protocol = self._connection._protocol
        if protocol is not None:
            if self._acks.pending:
                self._acks.flush()
            protocol.write(frame)

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
            MessageTooLargeError: the body is over ``max_message_size`` (the
                connection's option: nothing was sent; or the broker's: it closed
                the channel over it). Final: the same body is refused every time.
            ConfigurationError: a property is invalid, or the properties do not
                fit in one frame; nothing was sent.
        """
        if self._state is not _OPEN:
            await self._ensure_open()
        connection = self._connection
        if not connection._may_write:
            await connection._wait_writable()
            if self._state is not _OPEN:
                await self._ensure_open()
        if body.__class__ is not bytes:  # the exact type is the fast path
            body = _as_bytes(body)
        if len(body) > connection.max_message_size:
            raise MessageTooLargeError(len(body), connection.max_message_size)
        if properties is not None:
            props = properties.encode()
        elif (  # a task's, a call's, a reply's properties: all but the ids cached
            headers is None
            and content_encoding is None
            and priority is None
            and expiration is None
            and timestamp is None
            and user_id is None
            and app_id is None
        ):
            props = id_properties(
                content_type, delivery_mode, message_id, correlation_id, reply_to, type
            )
        else:
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
        key = (exchange, routing_key, mandatory)
        method = self._publish_cache.get(key) or self._publish_method(key)
        protocol = connection._protocol
        assert protocol is not None
        frames = message_frames(method, self.number, props, body, connection.frame_max)
        if self._acks.pending:  # an ack is never overtaken (see _acks)
            self._acks.flush()
        confirms = self._confirms
        if not (self.publisher_confirms and confirm):
            if self.publisher_confirms:
                confirms.expect(None, None, body)  # the broker counts it and confirms it
            protocol.write(frames)
            return
        future: asyncio.Future[None] = self._loop.create_future()
        confirms.expect(future, key if mandatory else None, body)
        protocol.write(frames)
        try:
            await future
        except PublishNotConfirmedError as exc:
            refused = refused_as_too_large(exc, len(body))
            if refused is None:
                raise
            raise refused from exc.__cause__

    def flush(self) -> None:
        """Hand what this channel's connection has written so far (publishes, acks)
        to the socket now, not at the end of this loop turn.

        For a caller whose next step is to wait for an answer: what it wrote leaves
        a loop turn sooner. Writes made after it in the same turn go out in a send
        of their own, so a caller with many messages in flight should not.
        """
        protocol = self._connection._protocol
        if protocol is not None:
            protocol.flush()  # pending acks first: they are written just before it

    def _publish_method(self, key: Destination) -> bytes:
        """The ``basic.publish`` frame for ``(exchange, routing_key, mandatory)``, cached."""
        method = publish_method_frame(self.number, *key)
        if len(self._publish_cache) >= _PUBLISH_CACHE_SIZE:
            self._publish_cache.clear()
        self._publish_cache[key] = method
        return method

    async def publish_many(
        self,
        bodies: Sequence[bytes],
        *,
        routing_key: str,
        exchange: str = "",
        mandatory: bool = False,
        properties: Properties | None = None,
        message_ids: Sequence[str] | None = None,
        headers: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[PublishError | None]:
        """Publish many messages to one destination, written a batch at a time with their
        confirms pipelined; on a confirming channel, return once the broker has answered
        for every one.

        Every message has ``properties``, and its own message id and headers when
        ``message_ids`` or ``headers`` (one per body) are given. What they share is
        encoded once, not per message.

        Returns:
            For each body, ``None`` if the broker took it, else what :meth:`publish`
            would have raised for it: :class:`PublishNackedError`,
            :class:`MessageReturnedError` (``mandatory`` and unroutable), or
            :class:`PublishNotConfirmedError` (the channel closed before the broker
            answered, or before it was sent). On a channel without confirms, all
            ``None`` once written.

        Raises:
            ChannelClosedError: the channel is closed; nothing was sent.
            ConfigurationError: a property is invalid, or the properties do not fit
                in one frame; nothing was sent.
            ValueError: ``message_ids`` or ``headers`` has not one entry per body.
        """
        return await publish_batches(
            self, bodies, (exchange, routing_key, mandatory), properties, message_ids, headers
        )

    def _on_return(self, message: ReturnedMessage) -> None:
        """A ``basic.return``: to the publish awaiting it, else to the return callbacks."""
        if not self._confirms.claim_return(message):
            dispatch_return(self._tasks, self.return_callbacks, message)

    # -- consuming ----------------------------------------------------------------

    async def _consume(self, consumer: Consumer, prefetch_count: int | None) -> None:
        """Start a consumer for :meth:`consume` (which made it and claimed its tag)."""
        if prefetch_count is not None:
            async with self._consume_lock:
                await self.qos(prefetch_count)
                await self._consume(consumer, None)
            return
        if self._state is not _OPEN:
            await self._ensure_open()
        consumer.prefetch = self._prefetch
        self._consumers[consumer.tag] = consumer
        try:
            await self._start_consumer(consumer)
        except BaseException:
            self._consumers.pop(consumer.tag, None)
            raise

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
            if self._state is _OPEN:
                await self._call("basic.cancel", ("basic.cancel-ok",), consumer_tag=consumer_tag)
        finally:
            self._consumers.pop(consumer_tag, None)

    # -- incoming methods (from ChannelFrames) ------------------------------------------

    def _on_method(self, method: Method) -> None:
        """A method off the hot path: a reply we wait for, or the broker's own word."""
        name = method.name
        waiters = self._waiters
        if waiters and name in waiters[0][0]:
            _, future = waiters.popleft()
            if not future.done():
                future.set_result(method)
        elif name == "channel.close":
            args = method.args
            error = broker_error(
                args["reply_code"],
                args["reply_text"],
                scope="channel",
                method=method_name(args["class_id"], args["method_id"]),
            )
            self._write(encode_method_frame(self.number, "channel.close-ok"))
            log.warning("channel %d closed by the broker: %s", self.number, error)
            if any("channel.close-ok" in replies for replies, _ in self._waiters):
                self._crossed_close(error)
            else:
                self._closed_by_broker(error)
        elif name == "basic.cancel":
            consumer_tag = method.args["consumer_tag"]
            consumer = self._consumers.pop(consumer_tag, None)
            if consumer is not None:
                notify_cancel(self._tasks, consumer, broker_cancelled(consumer_tag, consumer.queue))
        elif name == "channel.flow":
            active = method.args["active"]
            self._write(encode_method_frame(self.number, "channel.flow-ok", active=active))
        else:
            raise ProtocolError(f"unexpected {name} on channel {self.number}")


def _as_bytes(body: Any) -> bytes:
    if isinstance(body, bytearray | memoryview):
        return bytes(body)
    raise ConfigurationError(f"message body must be bytes, not {type(body).__name__}")
