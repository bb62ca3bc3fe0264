"""What the broker hands us: deliveries, returned messages, declare results."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

from ._frames import Properties

if TYPE_CHECKING:
    from ._channel import Channel

# What a delivery without headers shows: one shared, read-only empty mapping, so
# reading headers costs no allocation per message.
_NO_HEADERS: Mapping[str, Any] = MappingProxyType({})


class Delivery:
    """A message delivered to a consumer (or fetched with ``basic.get``).

    Settle it exactly once with :meth:`ack`, :meth:`nack` or :meth:`reject`
    unless it was consumed with ``no_ack=True``. The methods are plain
    (not coroutines): they queue the frame and return at once; leveret may
    coalesce acks into one ``multiple`` ack, but only over deliveries that were
    all settled already.
    """

    __slots__ = (
        "_channel",
        "_generation",
        "body",
        "consumer_tag",
        "delivery_tag",
        "exchange",
        "message_count",
        "no_ack",
        "properties",
        "redelivered",
        "routing_key",
        "settled",
    )

    def __init__(
        self,
        channel: Channel,
        generation: int,
        body: bytes,
        properties: Properties,
        delivery_tag: int,
        exchange: str,
        routing_key: str,
        redelivered: bool,
        consumer_tag: str | None,
        no_ack: bool,
        message_count: int | None = None,
    ) -> None:
        self._channel = channel
        self._generation = generation
        self.body = body
        self.properties = properties
        self.delivery_tag = delivery_tag
        self.exchange = exchange
        self.routing_key = routing_key
        self.redelivered = redelivered
        self.consumer_tag = consumer_tag
        self.no_ack = no_ack
        self.message_count = message_count
        #: ``None`` until settled, then ``"ack"``, ``"nack"`` or ``"reject"``.
        self.settled: str | None = "auto" if no_ack else None

    @property
    def channel(self) -> Channel:
        """The channel this delivery arrived on."""
        return self._channel

    @property
    def headers(self) -> Mapping[str, Any]:
        """The message's headers (``properties.headers``); empty, never ``None``,
        when it carries none. Read-only: change headers by publishing a copy."""
        return self.properties.headers or _NO_HEADERS

    def ack(self) -> None:
        """Acknowledge: the broker forgets the message.

        Raises:
            DeliveryError: already settled, consumed with ``no_ack``, or the
                channel has closed or reopened since (the broker has requeued it).
        """
        self._channel._settle(self, "ack", False)

    def nack(self, requeue: bool = True) -> None:
        """Negative acknowledgement: requeue it, or drop/dead-letter it.

        Raises:
            DeliveryError: as for :meth:`ack`.
        """
        self._channel._settle(self, "nack", requeue)

    def reject(self, requeue: bool = False) -> None:
        """Reject it: requeue it, or drop/dead-letter it.

        Raises:
            DeliveryError: as for :meth:`ack`.
        """
        self._channel._settle(self, "reject", requeue)

    def __repr__(self) -> str:
        return (
            f"<Delivery tag={self.delivery_tag} exchange={self.exchange!r} "
            f"routing_key={self.routing_key!r} redelivered={self.redelivered} "
            f"{len(self.body)} bytes>"
        )


class ReturnedMessage(NamedTuple):
    """A message the broker returned with ``basic.return`` (unroutable, mandatory)."""

    reply_code: int
    reply_text: str
    exchange: str
    routing_key: str
    body: bytes
    properties: Properties


class QueueDeclareOk(NamedTuple):
    """The broker's answer to ``queue.declare``."""

    queue: str
    message_count: int
    consumer_count: int
