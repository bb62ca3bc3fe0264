"""A queue of the in-memory broker: ready messages, consumers, expiry, dead-lettering.

Consumers get messages only from :meth:`MemoryQueue._dispatch`, which runs as
its own event-loop callback (``call_soon``) after whatever made a delivery
possible: a publish, a requeue, an ack that frees a consumer's prefetch, a new
consumer. So a consumer is never called from inside ``publish`` or ``ack``, and
deliveries arrive in queue order. Message TTLs and ``x-expires`` run on the
broker's clock (:mod:`._clock`) and, as in RabbitMQ, only the message at the
head of the queue expires: a long TTL in front holds back a shorter one behind it.

Consumers are served by priority (the consumer argument ``x-priority``, highest
first while it has room), round-robin among equals; with
``x-single-active-consumer`` only the earliest consumer still there gets
deliveries, and the next one takes over when it goes.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
from collections import deque
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ..amqp import Consumer, QueueType
from ._clock import CLOCK_SLACK
from ._message import QueuedMessage, StoredMessage, decode

if TYPE_CHECKING:
    from ._broker import MemoryBroker
    from ._channel_core import ChannelCore


class Subscription:
    """A consumer as its queue keeps it: the client's :class:`~leveret.amqp.Consumer`,
    the channel it delivers to, and how many of its deliveries are unacked (against
    its prefetch window)."""

    __slots__ = ("channel", "consumer", "priority", "queue", "unacked")

    def __init__(self, consumer: Consumer, queue: MemoryQueue, channel: ChannelCore) -> None:
        self.consumer = consumer
        self.queue = queue
        self.channel = channel
        self.unacked = 0
        priority = (consumer.arguments or {}).get("x-priority", 0)
        self.priority: int = priority if isinstance(priority, int) else 0

    def has_capacity(self) -> bool:
        consumer = self.consumer
        if consumer.no_ack:  # prefetch limits unacked deliveries; these are never unacked
            return True
        if consumer.prefetch is not None and self.unacked >= consumer.prefetch[0]:
            return False
        return self.channel._has_capacity()


class MemoryQueue:
    """A queue of a :class:`MemoryBroker`.

    Read its state through the properties (``message_count``, ``unacked_count``,
    ``consumer_count``, ``arguments`` ...) and :meth:`messages`; change it only
    through a channel, as on RabbitMQ.
    """

    def __init__(
        self,
        broker: MemoryBroker,
        name: str,
        *,
        durable: bool,
        exclusive_owner: object | None,
        auto_delete: bool,
        arguments: dict[str, Any],
    ) -> None:
        self._broker = broker
        self.name = name
        self.durable = durable
        self.auto_delete = auto_delete
        self._owner = exclusive_owner
        self._arguments = arguments
        self.queue_type: QueueType = arguments.get("x-queue-type", "classic")
        self._ttl = _non_negative_int(arguments.get("x-message-ttl"))
        self._max_length = _non_negative_int(arguments.get("x-max-length"))
        self._max_bytes = _non_negative_int(arguments.get("x-max-length-bytes"))
        self._max_priority = _non_negative_int(arguments.get("x-max-priority"))
        self._overflow = arguments.get("x-overflow", "drop-head")
        self._delivery_limit = _non_negative_int(arguments.get("x-delivery-limit"))
        self._single_active = arguments.get("x-single-active-consumer") is True
        expires = _non_negative_int(arguments.get("x-expires"))
        self._expires = None if expires is None else expires / 1000
        self._clock = broker.clock
        self._expires_at: float | None = None
        self._ready: deque[StoredMessage] = deque()  # by priority, then position
        self._ready_bytes = 0
        self._subscriptions: list[Subscription] = []
        self._next_subscription = 0
        self._unacked = 0
        self._had_consumers = False
        self._seq = itertools.count(1)
        self._dispatch_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.deleted = False
        self.used()

    def __repr__(self) -> str:
        return (
            f"<MemoryQueue {self.name!r} {self.queue_type} ready={len(self._ready)} "
            f"unacked={self._unacked} consumers={len(self._subscriptions)}>"
        )

    # -- what a test may look at ------------------------------------------------------

    @property
    def exclusive(self) -> bool:
        return self._owner is not None

    @property
    def arguments(self) -> MappingProxyType[str, Any]:
        return MappingProxyType(self._arguments)

    @property
    def message_count(self) -> int:
        """Messages ready for delivery (RabbitMQ's ``message_count``: unacked not included)."""
        return len(self._ready)

    @property
    def unacked_count(self) -> int:
        """Messages delivered and not settled yet."""
        return self._unacked

    @property
    def consumer_count(self) -> int:
        return len(self._subscriptions)

    def messages(self) -> list[QueuedMessage]:
        """Snapshots of the ready messages, head first (nothing is consumed)."""
        return [
            QueuedMessage(m.body, decode(m.encoded), m.exchange, m.routing_key, m.redelivered)
            for m in self._ready
        ]

    # -- the broker's side ------------------------------------------------------------

    @property
    def is_quorum(self) -> bool:
        return self.queue_type == "quorum"

    @property
    def at_least_once_dead_lettering(self) -> bool:
        """RabbitMQ 3.10 dead-letters at least once only from a quorum queue with
        ``x-overflow: reject-publish`` (otherwise at most once)."""
        arguments = self._arguments
        return (
            self.is_quorum
            and arguments.get("x-dead-letter-strategy") == "at-least-once"
            and self._overflow == "reject-publish"
        )

    @property
    def has_consumers(self) -> bool:
        return bool(self._subscriptions)

    def owned_by(self, connection: object) -> bool:
        return self._owner is None or self._owner is connection

    def enqueue(
        self,
        body: bytes,
        encoded: bytes,
        exchange: str,
        routing_key: str,
        ttl: int | None,
        priority: int | None,
    ) -> bool:
        """Take a message; ``False`` if ``x-overflow: reject-publish`` refuses it.

        As on RabbitMQ, a message that finds the queue empty and a consumer with
        room goes straight to it: length limits and a TTL of 0 do not apply.
        Otherwise it joins the queue (by ``priority`` under ``x-max-priority``),
        and messages over the length limits leave from the head (``drop-head``,
        dead-lettered) or the new one is refused (``reject-publish``; with
        ``reject-publish-dlx`` it is dead-lettered too).
        """
        if self._ttl is not None:
            ttl = self._ttl if ttl is None else min(ttl, self._ttl)
        expires_at = None if ttl is None else self._clock.now() + ttl / 1000
        level = 0
        if self._max_priority is not None and priority:
            level = min(priority, self._max_priority)
        message = StoredMessage(
            body, encoded, exchange, routing_key, next(self._seq), expires_at, level
        )
        if not self._ready:
            subscription = self._pick_consumer()
            if subscription is not None:
                subscription.channel._deliver(subscription, message, later=True)
                return True
        if self._overflow != "drop-head" and self._would_overflow(len(body)):
            if self._overflow == "reject-publish-dlx":
                self._broker._dead_letter(message, self, "maxlen")
            return False  # the publisher gets a nack
        self._push(message)
        self._drop_overflow()
        self.schedule()
        return True

    def _would_overflow(self, size: int) -> bool:
        length, size_limit = self._max_length, self._max_bytes
        return (length is not None and len(self._ready) + 1 > length) or (
            size_limit is not None and self._ready_bytes + size > size_limit
        )

    def _drop_overflow(self) -> None:
        """``drop-head``: dead-letter from the head while the queue is over a limit."""
        if self._overflow != "drop-head":
            return
        length, size_limit = self._max_length, self._max_bytes
        while self._ready and (
            (length is not None and len(self._ready) > length)
            or (size_limit is not None and self._ready_bytes > size_limit)
        ):
            self._broker._dead_letter(self._pop_head(), self, "maxlen")

    def _push(self, message: StoredMessage) -> None:
        """Put a message in its place: behind those of its priority or higher that
        came before it (by ``seq``), ahead of the rest."""
        ready = self._ready
        key = (-message.priority, message.seq)
        if not ready or (-ready[-1].priority, ready[-1].seq) < key:
            ready.append(message)
        else:
            index = bisect.bisect_left(ready, key, key=lambda m: (-m.priority, m.seq))
            ready.insert(index, message)
        self._ready_bytes += len(message.body)

    def _pop_head(self) -> StoredMessage:
        message = self._ready.popleft()
        self._ready_bytes -= len(message.body)
        return message

    def requeue(self, message: StoredMessage, *, to_back: bool = False) -> None:
        """A delivery came back (nack/reject with requeue, or its channel closed).

        It returns to its old place (``to_back``: behind everything, as a quorum
        queue puts back a nacked message), marked redelivered; a quorum queue
        counts it and dead-letters it past ``x-delivery-limit``. A queue over its
        length limit then drops from the head, as for a publish.
        """
        if self.deleted:
            return
        message.redelivered = True
        if self.is_quorum:
            message.delivery_count += 1
            limit = self._delivery_limit
            if limit is not None and message.delivery_count > limit:
                self._broker._dead_letter(message, self, "delivery_limit")
                return
        if to_back:
            message.seq = next(self._seq)
        self._push(message)
        self._drop_overflow()
        self.schedule()

    def settled(self, subscription: Subscription | None) -> None:
        """An unacked delivery of this queue was settled."""
        self._unacked -= 1
        if subscription is not None:
            subscription.unacked -= 1
            if self._ready:
                self.schedule()  # its prefetch window has room again

    def delivered(self, subscription: Subscription | None) -> None:
        self._unacked += 1
        if subscription is not None:
            subscription.unacked += 1

    def used(self) -> None:
        """Declared, fetched from, or left by its last consumer: ``x-expires`` starts again."""
        if self._expires is not None and not self._subscriptions:
            self._expires_at = self._clock.now() + self._expires
            self._arm_timer()

    def take(self) -> StoredMessage | None:
        """The head message for ``basic.get`` (expired ones are dead-lettered first)."""
        self.used()
        self._expire_head()
        message = self._pop_head() if self._ready else None
        self._arm_timer()
        return message

    def ready_count(self) -> int:
        """``message_count`` after dropping what has expired (for declare-ok, get-ok)."""
        self._expire_head()
        self._arm_timer()
        return len(self._ready)

    def purge(self) -> int:
        count = len(self._ready)
        self._ready.clear()
        self._ready_bytes = 0
        self._arm_timer()
        return count

    def add_consumer(self, subscription: Subscription) -> None:
        self._subscriptions.append(subscription)
        self._had_consumers = True
        self._expires_at = None
        self.schedule()

    def remove_consumer(self, subscription: Subscription) -> None:
        """Forget a consumer; an auto-delete queue goes with its last consumer."""
        if subscription in self._subscriptions:
            index = self._subscriptions.index(subscription)
            del self._subscriptions[index]
            if index < self._next_subscription:
                self._next_subscription -= 1
        if (
            self.auto_delete
            and self._had_consumers
            and not self._subscriptions
            and not self.deleted
        ):
            self._broker._delete_queue(self)
        elif not self._subscriptions:
            self.used()
        else:
            self.schedule()  # under single active consumer, the next one takes over

    def exclusive_consumer(self) -> bool:
        return any(subscription.consumer.exclusive for subscription in self._subscriptions)

    def delete(self) -> list[Subscription]:
        """Drop everything; returns the consumers to tell (RabbitMQ sends basic.cancel)."""
        self.deleted = True
        self._ready.clear()
        self._ready_bytes = 0
        subscriptions, self._subscriptions = self._subscriptions, []
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._timer_at = None
        return subscriptions

    # -- delivering -------------------------------------------------------------------

    def schedule(self) -> None:
        """Run :meth:`_dispatch` soon (once, however often this is called meanwhile)."""
        loop = self._broker._loop
        if self._dispatch_scheduled or self.deleted or loop is None or loop.is_closed():
            return
        self._dispatch_scheduled = True
        loop.call_soon(self._scheduled_dispatch)

    @property
    def dispatch_pending(self) -> bool:
        return self._dispatch_scheduled

    def _scheduled_dispatch(self) -> None:
        if self._dispatch_scheduled:  # not done meanwhile by run_due
            self._dispatch()

    def rebind(self) -> None:
        """The broker moved to another event loop: re-arm timers and dispatch there."""
        self._dispatch_scheduled = False
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._timer_at = None
        self.schedule()

    def _dispatch(self) -> None:
        self._dispatch_scheduled = False
        if self.deleted:
            return
        # One pass hands out at most what was ready when it started, so a consumer
        # that requeues synchronously cannot keep the event loop busy forever.
        budget = len(self._ready)
        while self._ready and budget > 0:
            if self._expire_head(limit=1):
                budget -= 1
                continue
            subscription = self._pick_consumer()
            if subscription is None:
                break
            budget -= 1
            subscription.channel._deliver(subscription, self._pop_head())
        if self._ready and budget == 0 and self._pick_consumer(peek=True) is not None:
            self.schedule()
        self._arm_timer()
        self._broker._changed()

    def _pick_consumer(self, *, peek: bool = False) -> Subscription | None:
        """The consumer to serve next: of those with room, the highest priority, and
        among equals the first from the one after the last served (round-robin).
        Under single active consumer, only the earliest one, if it has room."""
        consumers = self._subscriptions
        if self._single_active:
            active = consumers[0] if consumers else None
            return active if active is not None and active.has_capacity() else None
        count = len(consumers)
        best: tuple[int, Subscription] | None = None
        for offset in range(count):
            index = (self._next_subscription + offset) % count
            consumer = consumers[index]
            if (best is None or consumer.priority > best[1].priority) and consumer.has_capacity():
                best = (index, consumer)
        if best is None:
            return None
        if not peek:
            self._next_subscription = (best[0] + 1) % count
        return best[1]

    # -- expiry -----------------------------------------------------------------------

    def next_due(self) -> float | None:
        """When (broker time) something is next due here: the head's expiry or the
        queue's own (``x-expires``); None if nothing is."""
        times = [at for at in (self._head_expiry(), self._expires_at) if at is not None]
        return min(times) if times else None

    def run_due(self) -> None:
        """Do what is due by now: expire (and hand out) messages, or delete the queue."""
        if self.deleted:
            return
        at = self._expires_at
        if at is not None and at <= self._clock.now() + CLOCK_SLACK and not self._subscriptions:
            self._broker._delete_queue(self)
            return
        self._dispatch()

    def _head_expiry(self) -> float | None:
        return self._ready[0].expires_at if self._ready else None

    def _expire_head(self, limit: int | None = None) -> int:
        """Dead-letter expired messages at the head (at most ``limit``); how many."""
        now = self._clock.now() + CLOCK_SLACK
        expired = 0
        ready = self._ready
        while ready and (limit is None or expired < limit):
            head = ready[0]
            if head.expires_at is None or head.expires_at > now:
                break
            self._pop_head()
            expired += 1
            self._broker._dead_letter(head, self, "expired")
        return expired

    def _arm_timer(self) -> None:
        at = self.next_due()
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None if at is None else self._clock.call_at(at, self._on_timer)
        self._timer_at = None if self._timer is None else at

    def rearm(self) -> None:
        """Broker time jumped: arm the timer anew for what is due next."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._timer_at = None
        self._arm_timer()

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        self.run_due()


def _non_negative_int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None
