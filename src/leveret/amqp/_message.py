"""What the broker hands us: deliveries, returned messages, declare results; and the
settle seam a delivery talks to."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, NoReturn, Protocol

from ..exceptions import DeliveryError
from ._frames import Properties

if TYPE_CHECKING:
    from ._consumer import ConsumingChannel

#: How a delivery is settled: ``"ack"``, ``"nack"`` or ``"reject"``.
SettleKind = Literal["ack", "nack", "reject"]
#: The queue types RabbitMQ offers (``x-queue-type``).
QueueType = Literal["classic", "quorum", "stream"]


class Settler(Protocol):
    """Where a delivery's ack, nack and reject go: the settle seam.

    A channel gives each delivery the settler of its current life on the
    broker (the AMQP channel's ack window, the in-memory channel's unacked
    deliveries). :class:`Delivery` checks that the settle is allowed (not settled
    yet, not ``no_ack``, the channel still open), then calls :meth:`settle`.
    """

    @property
    def open(self) -> bool:
        """False once the channel has closed or reopened since the delivery arrived:
        the broker has requeued what it held and a settle cannot be sent."""

    @property
    def channel(self) -> ConsumingChannel:
        """The channel the deliveries arrived on."""

    def settle(self, delivery_tag: int, kind: SettleKind, requeue: bool) -> None:
        """Send (or queue) the ack, nack or reject of ``delivery_tag``; never raises."""


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
        "_settler",
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
        settler: Settler,
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
        self._settler = settler
        self.body = body
        self.properties = properties
        self.delivery_tag = delivery_tag
        self.exchange = exchange
        self.routing_key = routing_key
        self.redelivered = redelivered
        self.consumer_tag = consumer_tag
        self.no_ack = no_ack
        self.message_count = message_count
        #: ``None`` until settled, then ``"ack"``, ``"nack"`` or ``"reject"``
        #: (``"auto"`` from the start when consumed with ``no_ack``).
        self.settled: SettleKind | Literal["auto"] | None = "auto" if no_ack else None

    @property
    def channel(self) -> ConsumingChannel:
        """The channel this delivery arrived on."""
        return self._settler.channel

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
        settler = self._settler
        if self.settled is not None or not settler.open:
            self._refuse("ack")
        self.settled = "ack"
        settler.settle(self.delivery_tag, "ack", False)

    def nack(self, requeue: bool = True) -> None:
        """Negative acknowledgement: requeue it, or drop/dead-letter it.

        Raises:
            DeliveryError: as for :meth:`ack`.
        """
        settler = self._settler
        if self.settled is not None or not settler.open:
            self._refuse("nack")
        self.settled = "nack"
        settler.settle(self.delivery_tag, "nack", requeue)

    def reject(self, requeue: bool = False) -> None:
        """Reject it: requeue it, or drop/dead-letter it.

        Raises:
            DeliveryError: as for :meth:`ack`.
        """
        settler = self._settler
        if self.settled is not None or not settler.open:
            self._refuse("reject")
        self.settled = "reject"
        settler.settle(self.delivery_tag, "reject", requeue)

    def _refuse(self, kind: SettleKind) -> NoReturn:
        """Why this delivery cannot be settled (again), as the error to raise."""
        tag = self.delivery_tag
        number = self._settler.channel.number
        if self.no_ack:
            raise DeliveryError(
                f"delivery {tag} was consumed with no_ack=True; "
                "the broker already considers it acknowledged"
            )
        if self.settled is not None:
            raise DeliveryError(
                f"delivery {tag} on channel {number} was already "
                f"settled ({self.settled}); a second {kind} would close the channel"
            )
        raise DeliveryError(
            f"channel {number} closed after delivery {tag} arrived; "
            f"the {kind} cannot be sent and the broker will redeliver the message"
        )

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
