"""What an in-memory channel is: its state, its life, and what flows to its consumers.

:class:`ChannelCore` holds a channel's consumers, runs its requests as round
trips, closes it (its unacked deliveries go back, as RabbitMQ does) and hands
deliveries to consumers, which settle them through its
:class:`~._unacked.UnackedDeliveries`. :class:`MemoryChannel` (in
:mod:`._channel`) adds what a channel asks of the broker: declarations, qos and
publishes. Consumers, iteration, confirms and returns follow the rules
:mod:`leveret.amqp` shares with the real channel.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..amqp import (
    AsyncClosing,
    Consumer,
    Consuming,
    Delivery,
    TaskOwner,
    broker_cancelled,
    notify_cancel,
    publish_not_confirmed,
)
from ..exceptions import BrokerError, ChannelClosedError, broker_error
from ._errors import Refusal, amqp_type
from ._exchanges import REPLY_TO
from ._message import normalize_table
from ._queue import MemoryQueue, Subscription
from ._transaction import Transaction
from ._unacked import UnackedDeliveries

if TYPE_CHECKING:
    from ._connection import MemoryConnection
    from ._message import StoredMessage

log = logging.getLogger("leveret.testing")

T = TypeVar("T")


class ChannelCore(Consuming, AsyncClosing):
    """State, lifecycle, consuming and settling of a :class:`MemoryChannel`."""

    _connection: MemoryConnection

    def __init__(self, connection: MemoryConnection, number: int) -> None:
        self._connection = connection
        self._broker = connection.broker
        self._loop = connection.loop
        self.number = number
        self._open = True
        self._close_reason: BaseException | None = None
        self._consumers: dict[str, Subscription] = {}
        self._unacked = UnackedDeliveries(self)
        #: The open transaction once ``tx_select`` made this a transactional channel.
        self._transaction: Transaction | None = None
        self._prefetch = 0
        self._global_prefetch = 0
        self._unconfirmed: set[asyncio.Future[None]] = set()
        self._reply_queue: MemoryQueue | None = None
        self._tasks = TaskOwner(log)
        #: Called with ``(channel, reason)`` when the channel closes (plain or async).
        self.close_callbacks: list[Callable[[Any, BaseException | None], Any]] = []

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"<{type(self).__name__} {self.number} {state} on {self._broker.url}>"

    @property
    def connection(self) -> MemoryConnection:
        return self._connection

    @property
    def is_open(self) -> bool:
        return self._open

    @property
    def is_closed(self) -> bool:
        """True once closed (an in-memory channel never reopens)."""
        return not self._open

    # -- lifecycle --------------------------------------------------------------------

    async def close(self) -> None:
        """Close the channel: unacked deliveries go back to their queues. Idempotent."""
        if not self._open:
            return
        await self._tasks.cancel_all()
        self._finish(ChannelClosedError(f"channel {self.number} was closed by its owner"))

    def _finish(self, reason: BaseException) -> None:
        """Closed, by its owner or the broker: what RabbitMQ and the client both do."""
        if not self._open:
            return
        self._open = False
        self._close_reason = reason
        # The broker's side: an open transaction is rolled back, unacked deliveries
        # go back (in order), consumers go.
        if self._transaction is not None:
            self._rollback()
        self._unacked.release()
        subscriptions = list(self._consumers.values())
        self._consumers.clear()
        for subscription in subscriptions:
            subscription.queue.remove_consumer(subscription)
        if self._reply_queue is not None:
            self._broker.drop_reply_queue(self._reply_queue)
            self._reply_queue = None
        # The client's side: nothing waits for this channel any more.
        unconfirmed, self._unconfirmed = self._unconfirmed, set()
        for future in unconfirmed:
            if not future.done():
                future.set_exception(publish_not_confirmed(self.number, reason))
        self._connection._forget_channel(self)
        for subscription in subscriptions:
            notify_cancel(self._tasks, subscription.consumer, reason)
        for callback in list(self.close_callbacks):
            self._tasks.call(callback, self, reason)
        self._broker._changed()

    def _abandon(self, reason: BaseException) -> None:
        """Its event loop is gone: give back what it holds on the broker, wake nobody
        (futures and callbacks of a closed loop cannot run)."""
        self.close_callbacks.clear()
        self._unconfirmed.clear()
        for subscription in self._consumers.values():
            subscription.consumer.on_cancel = None
        self._finish(reason)

    def _rollback(self) -> None:
        """Drop the transaction's publishes; its settled deliveries are unacked again."""
        assert self._transaction is not None
        _, settles = self._transaction.take()
        for tag, entry, _kind, _requeue in settles:
            self._unacked.restore(tag, entry)

    def _ensure_open(self) -> None:
        if not self._open:
            raise ChannelClosedError(
                f"channel {self.number} is closed: {self._close_reason}"
            ) from self._close_reason

    def _refused(self, refusal: Refusal, method: str) -> BrokerError:
        """The broker closes the channel (or the connection) over ``refusal``."""
        error = broker_error(refusal.code, refusal.text, scope=refusal.scope, method=method)
        if refusal.scope == "connection":
            log.warning("broker closed the connection to %s: %s", self._broker.url, error)
            self._connection._lost(error)
        else:
            log.warning("channel %d closed by the broker: %s", self.number, error)
            self._finish(error)
        return error

    async def _request(self, method: str, operation: Callable[[], T]) -> T:
        """Run a synchronous broker method as the round trip it is on the wire."""
        self._ensure_open()
        try:
            result = operation()
        except Refusal as refusal:
            raise self._refused(refusal, method) from None
        # The reply arrives on a later loop turn, as from a socket: whatever the
        # request set going (deliveries, expiry) may run before the caller resumes.
        await asyncio.sleep(0)
        return result

    # -- consuming --------------------------------------------------------------------

    async def _consume(self, consumer: Consumer, prefetch_count: int | None) -> None:
        """Start a consumer for :meth:`consume` (which made it and claimed its tag).

        ``prefetch_count`` sets its own window (a ``basic.qos`` first). Consuming
        ``amq.rabbitmq.reply-to`` (with ``no_ack=True``) starts this channel's
        direct reply-to consumer; a second one, or one that acks, is refused (406).
        """

        def start() -> None:
            if prefetch_count is not None:  # basic.qos then basic.consume, nothing between
                self._prefetch = prefetch_count
            if consumer.queue == REPLY_TO:
                if not consumer.no_ack:
                    raise Refusal(406, "PRECONDITION_FAILED - reply consumer cannot acknowledge")
                if self._reply_queue is not None:
                    raise Refusal(406, "PRECONDITION_FAILED - reply consumer already set")
                target = self._reply_queue = self._broker.new_reply_queue()
            else:
                target = self._broker._queue(consumer.queue, self._connection)
                priority = normalize_table(consumer.arguments).get("x-priority")
                if priority is not None and (
                    not isinstance(priority, int) or isinstance(priority, bool)
                ):
                    raise Refusal(
                        406,
                        f"PRECONDITION_FAILED - invalid arg 'x-priority' for queue "
                        f"'{consumer.queue}' in vhost '/': \"expected integer, got "
                        f'{amqp_type(priority)}"',
                    )
                if target.exclusive_consumer() or (consumer.exclusive and target.has_consumers):
                    raise Refusal(
                        403,
                        f"ACCESS_REFUSED - queue '{consumer.queue}' in vhost '/' in exclusive use",
                    )
            consumer.prefetch = (self._prefetch, 0) if self._prefetch else None
            subscription = self._consumers[consumer.tag] = Subscription(consumer, target, self)
            target.add_consumer(subscription)

        await self._request("basic.consume", start)

    async def cancel(self, consumer_tag: str) -> None:
        """Stop a consumer; its unacked deliveries stay unacked (settle them as usual)."""
        subscription = self._consumers.pop(consumer_tag, None)
        if subscription is None:
            return
        if subscription.queue is self._reply_queue:
            self._broker.drop_reply_queue(subscription.queue)
            self._reply_queue = None
        else:
            subscription.queue.remove_consumer(subscription)
        self._broker._changed()
        if self._open:
            await asyncio.sleep(0)  # basic.cancel-ok's round trip

    async def get(self, queue: str, *, no_ack: bool = False) -> Delivery | None:
        """Fetch one message with ``basic.get``; ``None`` if the queue is empty."""

        def take() -> Delivery | None:
            source = self._broker._queue(queue, self._connection)
            message = source.take()
            if message is None:
                return None
            tag = self._unacked.next_tag()
            props = message.delivery_properties(quorum=source.is_quorum, always_count=True)
            delivery = Delivery(
                self._unacked,
                message.body,
                props,
                tag,
                message.exchange,
                message.routing_key,
                message.redelivered,
                None,
                no_ack,
                source.message_count,
            )
            if not no_ack:
                self._unacked.hold(tag, source, message, None)
            self._broker._changed()
            return delivery

        return await self._request("basic.get", take)

    def _has_capacity(self) -> bool:
        return not self._global_prefetch or self._unacked.by_consumers < self._global_prefetch

    def _consumer_settled(self) -> None:
        """A consumer's delivery was settled: the channel's global window has room."""
        if self._global_prefetch:
            self._wake_consumers()

    def _wake_consumers(self) -> None:
        for subscription in self._consumers.values():
            subscription.queue.schedule()

    def _deliver(self, subscription: Subscription, message: StoredMessage) -> None:
        """Hand a message to a consumer (called by the queue's dispatch, never re-entrantly)."""
        unacked = self._unacked
        tag = unacked.next_tag()
        queue, consumer = subscription.queue, subscription.consumer
        delivery = Delivery(
            unacked,
            message.body,
            message.delivery_properties(quorum=queue.is_quorum),
            tag,
            message.exchange,
            message.routing_key,
            message.redelivered,
            consumer.tag,
            consumer.no_ack,
        )
        if not consumer.no_ack:
            unacked.hold(tag, queue, message, subscription)
        self._tasks.call(consumer.callback, delivery)

    def _broker_cancelled(self, subscription: Subscription) -> None:
        """The consumer's queue was deleted: RabbitMQ sends basic.cancel."""
        consumer = subscription.consumer
        if self._consumers.pop(consumer.tag, None) is not None:
            notify_cancel(self._tasks, consumer, broker_cancelled(consumer.tag, consumer.queue))
