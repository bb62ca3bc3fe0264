"""A memory channel's open transaction (``tx.select``): what waits for ``tx.commit``.

As on RabbitMQ, a publish in a transaction is routed when it is made (an unknown
or internal exchange closes the channel at once) and reaches its queues at
commit; an ack, nack or reject takes its delivery off the channel's unacked
ones at once and acts at commit; a rollback drops the publishes and gives the
deliveries back to the channel, unacked (they are not requeued).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..amqp import ReturnedMessage, SettleKind

if TYPE_CHECKING:
    from ._message import StoredMessage
    from ._queue import MemoryQueue, Subscription

#: An unacked delivery as a channel holds it: its queue, message and consumer.
Held = tuple["MemoryQueue", "StoredMessage", "Subscription | None"]


class Transaction:
    """The publishes and settles of one transaction, in the order they were made."""

    __slots__ = ("publishes", "settles")

    def __init__(self) -> None:
        #: Enqueue a routed publish, and the message to return if it was unroutable.
        self.publishes: list[tuple[Callable[[], bool], ReturnedMessage | None]] = []
        #: (tag, delivery, kind, requeue) of each settle.
        self.settles: list[tuple[int, Held, SettleKind, bool]] = []

    def take(
        self,
    ) -> tuple[
        list[tuple[Callable[[], bool], ReturnedMessage | None]],
        list[tuple[int, Held, SettleKind, bool]],
    ]:
        """Everything pending, leaving the transaction empty for the next one."""
        publishes, self.publishes = self.publishes, []
        settles, self.settles = self.settles, []
        return publishes, settles
