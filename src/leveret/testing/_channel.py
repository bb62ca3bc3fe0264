"""The in-memory channel: the pattern seam (and the rest of a channel's API) on a
:class:`MemoryBroker`.

It behaves as :class:`leveret.amqp.Channel` on RabbitMQ: a refused request
raises the same :class:`~leveret.exceptions.BrokerError` and closes the channel;
deliveries are real :class:`~leveret.amqp.Delivery` objects whose ``ack()``,
``nack()`` and ``reject()`` come back here; unacked deliveries are requeued when
the channel closes; a confirming publish returns once the broker took the message
(on a later event-loop turn) and raises if it was returned or refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Unpack

from ..amqp import (
    Declarations,
    Properties,
    PropertyValues,
    ReturnCallback,
    ReturnedMessage,
    dispatch_return,
    encode_shortstr,
    publish_not_confirmed,
    resolve_confirm,
)
from ..exceptions import ChannelClosedError, ConfigurationError, PublishError
from ._broker import REPLY_TO
from ._channel_core import ChannelCore, log
from ._errors import Refusal, not_implemented
from ._message import decode, normalize_table

if TYPE_CHECKING:
    from ._connection import MemoryConnection

_AUTHENTICATED_USER = "guest"


class MemoryChannel(ChannelCore, Declarations):
    """A channel of a :class:`MemoryConnection`; open one with ``connection.channel()``.

    Implements :class:`leveret.patterns.PatternChannel` and the rest of
    :class:`leveret.amqp.Channel`'s API that tests use (``get``, ``iterate``,
    ``qos``, declares, bindings, purge, delete). Exchange-to-exchange bindings
    are not implemented: ``exchange_bind`` and ``exchange_unbind`` raise
    :class:`~leveret.exceptions.NotImplementedByBrokerError` (and close the channel).
    """

    def __init__(self, connection: MemoryConnection, number: int, publisher_confirms: bool) -> None:
        super().__init__(connection, number)
        self.publisher_confirms = publisher_confirms
        #: Called with each :class:`ReturnedMessage` no awaiting publish claims.
        self.return_callbacks: list[ReturnCallback] = []

    # -- declarations (the methods are leveret.amqp's Declarations) ----------------------

    async def _declare(self, method: str, args: dict[str, Any]) -> dict[str, Any]:
        """Carry out a declaring method on the broker; returns the reply's arguments."""
        broker, connection = self._broker, self._connection
        if method == "queue.declare":  # as the broker receives them (raises as the client would)
            arguments = normalize_table(args["arguments"])

        def carry_out() -> dict[str, Any]:
            if method == "queue.declare":
                return broker.declare_queue(
                    connection,
                    args["queue"],
                    passive=args["passive"],
                    durable=args["durable"],
                    exclusive=args["exclusive"],
                    auto_delete=args["auto_delete"],
                    arguments=arguments,
                )._asdict()
            if method == "queue.bind":
                broker.bind(connection, args["queue"], args["exchange"], args["routing_key"])
            elif method == "queue.unbind":
                broker.unbind(connection, args["queue"], args["exchange"], args["routing_key"])
            elif method == "queue.purge":
                return {"message_count": broker._queue(args["queue"], connection).purge()}
            elif method == "queue.delete":
                count = broker.delete_queue(
                    connection,
                    args["queue"],
                    if_unused=args["if_unused"],
                    if_empty=args["if_empty"],
                )
                return {"message_count": count}
            elif method == "exchange.declare":
                broker.declare_exchange(
                    args["exchange"],
                    args["type"],
                    passive=args["passive"],
                    durable=args["durable"],
                    auto_delete=args["auto_delete"],
                )
            elif method == "exchange.delete":
                broker.delete_exchange(args["exchange"], if_unused=args["if_unused"])
            else:  # exchange.bind, exchange.unbind
                raise not_implemented("exchange-to-exchange bindings")
            return {}

        return await self._request(method, carry_out)

    async def qos(
        self, prefetch_count: int, *, prefetch_size: int = 0, global_: bool = False
    ) -> None:
        """Limit unacked deliveries: per consumer started afterwards, or (``global_``)
        shared by the whole channel."""
        if not 0 <= prefetch_count <= 65535:
            raise ConfigurationError(f"prefetch_count={prefetch_count} is outside 0..65535")

        def apply() -> None:
            if global_:
                self._global_prefetch = prefetch_count
                self._wake_consumers()
            else:
                self._prefetch = prefetch_count

        await self._request("basic.qos", apply)

    # -- publishing -------------------------------------------------------------------

    async def publish(
        self,
        body: bytes,
        *,
        routing_key: str,
        exchange: str = "",
        mandatory: bool = False,
        properties: Properties | None = None,
        confirm: bool = True,
        **values: Unpack[PropertyValues],
    ) -> None:
        """Publish a message; on a confirming channel, return once the broker took it.

        As :meth:`leveret.amqp.Channel.publish` (the property keywords are the same):
        ``expiration`` is in milliseconds; ``confirm=False`` (or a channel without
        publisher confirms) returns at once and hands an unroutable ``mandatory``
        message to :attr:`return_callbacks`.

        Raises:
            MessageReturnedError: ``mandatory`` and no queue took it (attached).
            PublishNackedError: a queue refused it (``x-overflow: reject-publish``).
            PublishNotConfirmedError: the broker closed the channel over it (an unknown
                exchange, no direct reply-to consumer, a bad expiration or user_id).
            ChannelClosedError: the channel is closed.
            ConfigurationError: a property cannot be encoded.
        """
        self._ensure_open()
        if body.__class__ is not bytes:
            if not isinstance(body, bytearray | memoryview):
                raise ConfigurationError(f"message body must be bytes, not {type(body).__name__}")
            body = bytes(body)
        keywords = Properties(**values)  # an unknown keyword raises TypeError, as on Channel
        if properties is None:
            properties = keywords
        encode_shortstr(exchange, "exchange name")
        encode_shortstr(routing_key, "routing key")
        encoded = properties.encode()  # a value that cannot travel raises here, as on the wire
        confirming = self.publisher_confirms and confirm
        try:
            refused, returned = self._route(
                exchange, routing_key, mandatory, body, properties, encoded
            )
        except Refusal as refusal:
            error = self._refused(refusal, "basic.publish")
            if not confirming:
                return  # on the wire the channel closes after this publish returned
            raise publish_not_confirmed(self.number, error) from error
        if not confirming:
            if returned is not None:
                self._loop.call_soon(self._on_return, returned)
            return
        future: asyncio.Future[None] = self._loop.create_future()
        self._unconfirmed.add(future)
        self._loop.call_soon(self._confirm, future, returned, refused)
        try:
            await future
        finally:
            self._unconfirmed.discard(future)

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
        """Publish many messages to one destination; for each, ``None`` if the broker took
        it, else what :meth:`publish` would have raised. As
        :meth:`leveret.amqp.Channel.publish_many` (here one message after the other).

        Raises:
            ChannelClosedError: the channel is closed; nothing was sent.
            ConfigurationError: a property cannot be encoded; nothing was sent.
            ValueError: ``message_ids`` or ``headers`` has not one entry per body.
        """
        count = len(bodies)
        for given in (message_ids, headers):
            if given is not None and len(given) != count:
                raise ValueError(f"publish_many: {len(given)} message ids or headers for {count}")
        shared = properties or Properties()
        each = [
            shared.replace(
                **({} if message_ids is None else {"message_id": message_ids[i]}),
                **({} if headers is None else {"headers": headers[i]}),
            )
            for i in range(count)
        ]
        for message in each:
            message.encode()  # nothing is sent if one cannot be
        self._ensure_open()
        results: list[PublishError | None] = []
        for body, message in zip(bodies, each, strict=True):
            try:
                await self.publish(
                    body,
                    routing_key=routing_key,
                    exchange=exchange,
                    mandatory=mandatory,
                    properties=message,
                )
            except PublishError as exc:
                results.append(exc)
            except ChannelClosedError as exc:  # closed by an earlier one: never sent
                results.append(publish_not_confirmed(self.number, exc))
            else:
                results.append(None)
        return results

    def _route(
        self,
        exchange: str,
        routing_key: str,
        mandatory: bool,
        body: bytes,
        properties: Properties,
        encoded: bytes,
    ) -> tuple[bool, ReturnedMessage | None]:
        """Route a publish: (refused by a queue, the returned message if unroutable)."""
        ttl = _expiration(properties.expiration)
        if properties.user_id is not None and properties.user_id != _AUTHENTICATED_USER:
            raise Refusal(
                406,
                f"PRECONDITION_FAILED - user_id property set to '{properties.user_id}' but "
                f"authenticated user was '{_AUTHENTICATED_USER}'",
            )
        if properties.reply_to == REPLY_TO:
            # Direct reply-to: the caller's channel gets a private address of its own.
            if self._reply_queue is None:
                raise Refusal(406, "PRECONDITION_FAILED - fast reply consumer does not exist")
            properties = properties.replace(reply_to=self._reply_queue.name)
            encoded = properties.encode()
        routed, refused = self._broker.publish(exchange, routing_key, body, encoded, ttl)
        returned = None
        if mandatory and not routed:
            returned = ReturnedMessage(
                312, "NO_ROUTE", exchange, routing_key, body, decode(encoded)
            )
        return refused, returned

    def _confirm(
        self, future: asyncio.Future[None], returned: ReturnedMessage | None, refused: bool
    ) -> None:
        resolve_confirm(future, self.number, ack=not refused, returned=returned)

    def _on_return(self, message: ReturnedMessage) -> None:
        if self._open:
            dispatch_return(self._tasks, self.return_callbacks, message, log)


def _expiration(value: str | None) -> int | None:
    """A per-message TTL in ms, refused as RabbitMQ refuses it."""
    if value is None:
        return None
    try:
        ttl = int(value)
    except ValueError:
        raise Refusal(
            406, f"PRECONDITION_FAILED - invalid expiration '{value}': no_integer"
        ) from None
    if ttl < 0:
        raise Refusal(
            406, f"PRECONDITION_FAILED - invalid expiration '{value}': {{value_negative,{ttl}}}"
        )
    return ttl


if TYPE_CHECKING:
    # The in-memory channel implements the seams, checked statically: the
    # patterns' channel, consuming (DeliveryIterator), and settling deliveries.
    from ..amqp import ConsumingChannel, Settler
    from ..patterns import PatternChannel
    from ._unacked import UnackedDeliveries

    _pattern_channel: type[PatternChannel] = MemoryChannel
    _consuming_channel: type[ConsumingChannel] = MemoryChannel
    _settler: type[Settler] = UnackedDeliveries
