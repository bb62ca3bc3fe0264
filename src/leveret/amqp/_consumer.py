"""Consumers, as both brokers' channels keep them, and consuming as an async iterator.

A :class:`Consumer` is one ``basic.consume``: its tag, queue, callback and what a
restart needs. :class:`Consuming` gives a channel ``consume`` and ``iterate``
over its own ``_consume``. Deliveries reach the callback through the channel's
:class:`~leveret.amqp.TaskOwner` (``tasks.call(consumer.callback, delivery)``);
when a consumer stops, :func:`notify_cancel` tells its owner.
:class:`DeliveryIterator` works on any channel that offers
:class:`ConsumingChannel`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ..exceptions import (
    ChannelClosedError,
    ConfigurationError,
    ConnectionClosedError,
    ConsumerCancelledError,
)

if TYPE_CHECKING:
    from ._message import Delivery
    from ._tasks import TaskOwner

log = logging.getLogger("leveret.amqp")

DeliveryCallback = Callable[["Delivery"], Awaitable[Any] | None]
CancelCallback = Callable[[ConsumerCancelledError], Any]

_tag_counter = itertools.count(1)


class ConsumingChannel(Protocol):
    """What consuming needs of a channel; the AMQP and the in-memory channel offer it."""

    @property
    def number(self) -> int:
        """The channel number on its connection."""

    @property
    def is_open(self) -> bool:
        """True while the channel can consume and settle."""

    async def consume(
        self,
        queue: str,
        callback: DeliveryCallback,
        *,
        no_ack: bool = False,
        exclusive: bool = False,
        arguments: Mapping[str, Any] | None = None,
        on_cancel: CancelCallback | None = None,
    ) -> str:
        """Start a consumer; returns its tag."""

    async def cancel(self, consumer_tag: str) -> None:
        """Stop a consumer."""


class Consumer:
    """One ``basic.consume`` on a channel: what delivers to it, and what a restart needs.

    ``prefetch`` is the per-consumer qos (count, size) it started under (set by
    the channel when it starts it);
    ``cancelled`` is set once its owner cancels it (deliveries still in flight
    are then requeued, and its end is not reported as a surprise).
    """

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


class _Connection(Protocol):
    @property
    def id(self) -> str: ...


class Consuming:
    """``consume`` and ``iterate``, written once for both brokers' channels.

    The channel they are mixed into starts the consumer in ``_consume``; its
    ``_consumers`` are the tags in use, ``_connection.id`` makes new ones.
    """

    _connection: _Connection
    _consumers: Mapping[str, object]
    #: Start ``consumer`` (under its own qos when ``prefetch_count`` is given).
    _consume: Callable[[Consumer, int | None], Awaitable[None]]

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

        Raises:
            ConfigurationError: ``consumer_tag`` is in use on this channel, or
                ``prefetch_count`` is outside 0..65535.
            NotFoundError, ResourceLockedError, AccessRefusedError: the broker
                refused the queue (missing, another connection's, in exclusive use).
        """
        if prefetch_count is not None and not 0 <= prefetch_count <= 65535:
            raise ConfigurationError(f"prefetch_count={prefetch_count} is outside 0..65535")
        tag = claim_consumer_tag(self._consumers, self._connection.id, consumer_tag)
        consumer = Consumer(
            tag,
            queue,
            callback,
            no_ack=no_ack,
            exclusive=exclusive,
            arguments=arguments,
            on_cancel=on_cancel,
            prefetch=None,
        )
        await self._consume(consumer, prefetch_count)
        return tag

    def iterate(
        self: ConsumingChannel,
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


def claim_consumer_tag(
    consumers: Mapping[str, object], connection_id: str, requested: str | None
) -> str:
    """The tag for a new consumer: ``requested``, or a fresh one unique to the process.

    Raises:
        ConfigurationError: ``requested`` is already in use on the channel.
    """
    tag = requested or f"leveret.{connection_id}.{next(_tag_counter)}"
    if tag in consumers:
        raise ConfigurationError(f"consumer tag {tag!r} is already in use on this channel")
    return tag


def broker_cancelled(consumer_tag: str, queue: str) -> ConsumerCancelledError:
    """What a consumer's owner is told when the broker sends ``basic.cancel``."""
    return ConsumerCancelledError(
        f"the broker cancelled consumer {consumer_tag!r} on queue {queue!r} "
        "(the queue was deleted or is unavailable)"
    )


def notify_cancel(tasks: TaskOwner, consumer: Consumer, reason: BaseException) -> None:
    """Tell a consumer's owner that it stopped: through ``on_cancel``, else a warning
    (none when its owner stopped it or closed its channel or connection)."""
    if isinstance(reason, ConsumerCancelledError):
        error = reason
    else:
        error = ConsumerCancelledError(f"consumer {consumer.tag!r} stopped: {reason}")
        error.__cause__ = reason
    if consumer.on_cancel is not None:
        tasks.call(consumer.on_cancel, error)
    elif not consumer.cancelled and not isinstance(
        reason, ChannelClosedError | ConnectionClosedError
    ):
        log.warning("%s", error)


class DeliveryIterator:
    """Deliveries of one consumer as an async iterator (see :meth:`Channel.iterate`)."""

    def __init__(
        self,
        channel: ConsumingChannel,
        queue: str,
        *,
        no_ack: bool,
        exclusive: bool,
        arguments: Mapping[str, Any] | None,
    ) -> None:
        self._channel = channel
        self._queue = queue
        self._no_ack = no_ack
        self._exclusive = exclusive
        self._arguments = arguments
        self._buffer: deque[Delivery] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: ConsumerCancelledError | None = None
        self.consumer_tag: str | None = None

    async def __aenter__(self) -> DeliveryIterator:
        self.consumer_tag = await self._channel.consume(
            self._queue,
            self._push,
            no_ack=self._no_ack,
            exclusive=self._exclusive,
            arguments=self._arguments,
            on_cancel=self._cancelled,
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
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._buffer.popleft()
