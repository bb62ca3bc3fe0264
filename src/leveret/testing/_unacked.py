"""A memory channel's unacked deliveries: what its deliveries settle through.

:class:`UnackedDeliveries` is the in-memory side of the settle seam
(:class:`leveret.amqp.Settler`): :class:`~leveret.amqp.Delivery` checks that a
settle is allowed, then :meth:`UnackedDeliveries.settle` does what RabbitMQ
does with it: forget the message, requeue it, or dead-letter it.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from ..amqp import SettleKind
from ._errors import Refusal
from ._transaction import Held

if TYPE_CHECKING:
    from ._channel_core import ChannelCore
    from ._message import StoredMessage
    from ._queue import MemoryQueue, Subscription


class UnackedDeliveries:
    """The deliveries of one memory channel the broker still holds for it, by tag."""

    __slots__ = ("_held", "_tags", "by_consumers", "channel")

    def __init__(self, channel: ChannelCore) -> None:
        self.channel = channel
        #: How many of them went to consumers (for the channel's global prefetch).
        self.by_consumers = 0
        self._held: dict[int, Held] = {}
        self._tags = itertools.count(1)

    @property
    def open(self) -> bool:
        """False once the channel closed (see :attr:`leveret.amqp.Settler.open`)."""
        return self.channel.is_open

    def next_tag(self) -> int:
        """The delivery tag of the channel's next delivery."""
        return next(self._tags)

    def hold(
        self,
        tag: int,
        queue: MemoryQueue,
        message: StoredMessage,
        subscription: Subscription | None,
    ) -> None:
        """A delivery that needs an ack (``subscription`` is None for ``basic.get``)."""
        self._held[tag] = (queue, message, subscription)
        if subscription is not None:
            self.by_consumers += 1
        queue.delivered(subscription)

    def settle(self, delivery_tag: int, kind: SettleKind, requeue: bool) -> None:
        """Settle a delivery (at commit, in a transaction). An unknown tag closes the
        channel with 406, as RabbitMQ closes it (the close arrives after the call)."""
        entry = self._held.pop(delivery_tag, None)
        channel = self.channel
        if entry is None:
            refusal = Refusal(406, f"PRECONDITION_FAILED - unknown delivery tag {delivery_tag}")
            channel._loop.call_soon(channel._refused, refusal, f"basic.{kind}")
            return
        transaction = channel._transaction
        if transaction is not None:
            transaction.settles.append((delivery_tag, entry, kind, requeue))
            return
        self.apply(entry, kind, requeue)

    def restore(self, delivery_tag: int, entry: Held) -> None:
        """A rolled-back settle: the delivery is unacked on this channel again."""
        self._held[delivery_tag] = entry

    def apply(self, entry: Held, kind: SettleKind, requeue: bool) -> None:
        """What the broker does with a settled delivery."""
        queue, message, subscription = entry
        if subscription is not None:
            self.by_consumers -= 1
            self.channel._consumer_settled()
        queue.settled(subscription)
        broker = self.channel._broker
        if kind != "ack":
            if requeue:
                queue.requeue(message)
            elif not queue.deleted:
                broker._dead_letter(message, queue, "rejected")
        broker._changed()

    def release(self) -> None:
        """The channel closed: every held delivery goes back to its queue, in order."""
        held, self._held = self._held, {}
        self.by_consumers = 0
        for tag in sorted(held):
            queue, message, subscription = held[tag]
            queue.settled(subscription)
            queue.requeue(message)
