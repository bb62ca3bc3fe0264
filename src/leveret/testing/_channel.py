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
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Unpack

from ..amqp import (
    ConnectionParameters,
    Declarations,
    Properties,
    PropertyValues,
    ReturnCallback,
    ReturnedMessage,
    dispatch_return,
    encode_shortstr,
    not_transactional,
    publish_not_confirmed,
    resolve_confirm,
    transactions_refused,
)
from ..exceptions import (
    ChannelClosedError,
    ConfigurationError,
    MessageTooLargeError,
    PublishError,
)
from ._channel_core import ChannelCore, log
from ._errors import Refusal
from ._exchanges import REPLY_TO
from ._message import decode, normalize_table
from ._transaction import Transaction
from ._validation import MAX_TTL

if TYPE_CHECKING:
    from ._connection import MemoryConnection

_AUTHENTICATED_USER = "guest"
# The arguments of declaring methods that travel as AMQP short strings (255 bytes).
_SHORT_STRINGS = ("queue", "exchange", "type", "routing_key", "destination", "source")

#: The largest body RabbitMQ takes by default (its ``max_message_size``).
_MAX_MESSAGE_SIZE = ConnectionParameters.max_message_size


class MemoryChannel(ChannelCore, Declarations):
    """A channel of a :class:`MemoryConnection`; open one with ``connection.channel()``.

    Implements :class:`leveret.patterns.PatternChannel` and the rest of
    :class:`leveret.amqp.Channel`'s API that tests use (``get``, ``iterate``,
    ``qos``, declares, bindings (exchange-to-exchange ones too), purge, delete)
    and transactions (``tx_select``, ``tx_commit``, ``tx_rollback``).
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
        for field in _SHORT_STRINGS:  # as the client refuses them before sending
            if isinstance(args.get(field), str):
                encode_shortstr(args[field], field)
        if method == "queue.declare":  # as the broker receives them (raises as the client would)
            arguments = normalize_table(args["arguments"])
        elif method.endswith("bind"):
            bind_arguments = normalize_table(args["arguments"])

        def carry_out() -> dict[str, Any]:
            if method == "queue.declare":
                declared = broker.declare_queue(
                    connection,
                    args["queue"],
                    passive=args["passive"],
                    durable=args["durable"],
                    exclusive=args["exclusive"],
                    auto_delete=args["auto_delete"],
                    arguments=arguments,
                )
                self._last_queue = declared.queue
                return declared._asdict()
            if args.get("queue") == "" and method.startswith("queue."):
                args["queue"] = self._last_declared()
            if method.endswith("bind"):  # queue.bind, exchange.bind and their unbinds
                kind = method.partition(".")[0]
                binding = (
                    (args["queue"], args["exchange"])
                    if kind == "queue"
                    else (args["destination"], args["source"])
                )
                carry = broker.unbind if method.endswith(".unbind") else broker.bind
                carry(connection, kind, *binding, args["routing_key"], bind_arguments)
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
                    internal=args["internal"],
                    arguments=normalize_table(args["arguments"]),
                )
            else:  # exchange.delete
                broker.delete_exchange(args["exchange"], if_unused=args["if_unused"])
            return {}

        return await self._request(method, carry_out)

    async def qos(
        self, prefetch_count: int, *, prefetch_size: int = 0, global_: bool = False
    ) -> None:
        """Limit unacked deliveries: per consumer started afterwards, or (``global_``)
        shared by the whole channel. As on RabbitMQ 3.10, a per-consumer limit set
        after a global one lifts the global one.

        Raises:
            NotImplementedByBrokerError: ``prefetch_size`` is not 0; RabbitMQ closes the
                connection over it (540), and so does the in-memory broker.
        """
        if not 0 <= prefetch_count <= 65535:
            raise ConfigurationError(f"prefetch_count={prefetch_count} is outside 0..65535")

        def apply() -> None:
            if prefetch_size:
                raise Refusal(
                    540,
                    f"NOT_IMPLEMENTED - prefetch_size!=0 ({prefetch_size})",
                    scope="connection",
                )
            if global_:
                self._global_prefetch = prefetch_count
                self._wake_consumers()
            else:
                self._prefetch = prefetch_count
                if self._global_prefetch:
                    self._global_prefetch = 0
                    self._wake_consumers()

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
        if len(body) > _MAX_MESSAGE_SIZE:  # RabbitMQ's default limit, as a Channel checks it
            raise MessageTooLargeError(len(body), _MAX_MESSAGE_SIZE)
        keywords = Properties(**values)  # an unknown keyword raises TypeError, as on Channel
        if properties is None:
            properties = keywords
        encode_shortstr(exchange, "exchange name")
        encode_shortstr(routing_key, "routing key")
        encoded = properties.encode()  # a value that cannot travel raises here, as on the wire
        confirming = self.publisher_confirms and confirm
        try:
            enqueue, returned = self._route(
                exchange, routing_key, mandatory, body, properties, encoded
            )
        except Refusal as refusal:
            error = self._refused(refusal, "basic.publish")
            if not confirming:
                return  # on the wire the channel closes after this publish returned
            raise publish_not_confirmed(self.number, error) from error
        if self._transaction is not None:
            self._transaction.publishes.append((enqueue, returned))
            return
        refused = enqueue()
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

    def flush(self) -> None:
        """Nothing to do: an in-memory publish is routed when it is made."""

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
    ) -> tuple[Callable[[], bool], ReturnedMessage | None]:
        """Route a publish: what enqueues it (and says whether a queue refused it),
        and the returned message if it is unroutable and ``mandatory``."""
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
        headers = properties.headers or {}
        routing_keys = [routing_key, *_sender_keys(headers, "CC"), *_sender_keys(headers, "BCC")]
        if "BCC" in headers:  # RabbitMQ strips BCC before delivering (CC stays)
            properties = properties.replace(
                headers={k: v for k, v in headers.items() if k != "BCC"}
            )
            encoded = properties.encode()
        targets, enqueue = self._broker.publish(
            exchange, routing_keys, headers, body, encoded, ttl, properties.priority
        )
        returned = None
        if mandatory and not targets:
            returned = ReturnedMessage(
                312, "NO_ROUTE", exchange, routing_key, body, decode(encoded)
            )
        return enqueue, returned

    def _confirm(
        self, future: asyncio.Future[None], returned: ReturnedMessage | None, refused: bool
    ) -> None:
        resolve_confirm(future, self.number, ack=not refused, returned=returned)

    def _on_return(self, message: ReturnedMessage) -> None:
        if self._open:
            dispatch_return(self._tasks, self.return_callbacks, message, log)

    # -- transactions -----------------------------------------------------------------

    async def tx_select(self) -> None:
        """Make this a transactional channel: publishes and settles take effect at
        :meth:`tx_commit`. A channel with publisher confirms refuses at once, as
        :meth:`leveret.amqp.Channel.tx_select` does (RabbitMQ would close it, 406):
        open the channel with ``publisher_confirms=False``.

        Raises:
            ConfigurationError: the channel is in confirm mode (it stays open).
        """
        if self.publisher_confirms:
            raise transactions_refused(self.number)

        def select() -> None:
            if self._transaction is None:
                self._transaction = Transaction()

        await self._request("tx.select", select)

    async def tx_commit(self) -> None:
        """Carry out the transaction's publishes (in order; unroutable mandatory ones
        are returned to :attr:`return_callbacks`) and settles; a new one begins.

        Raises:
            ConfigurationError: ``tx_select`` was not called (nothing is sent).
        """
        if self._transaction is None:
            raise not_transactional(self.number, "tx.commit")

        def commit() -> None:
            publishes, settles = self._transactional().take()
            for enqueue, returned in publishes:
                enqueue()
                if returned is not None:
                    self._loop.call_soon(self._on_return, returned)
            for _tag, entry, kind, requeue in settles:
                self._unacked.apply(entry, kind, requeue)

        await self._request("tx.commit", commit)

    async def tx_rollback(self) -> None:
        """Drop the transaction's publishes; deliveries it settled are unacked again on
        the broker, as on RabbitMQ (not requeued: they go back when the channel
        closes); a new transaction begins.

        Raises:
            ConfigurationError: ``tx_select`` was not called (nothing is sent).
        """
        if self._transaction is None:
            raise not_transactional(self.number, "tx.rollback")

        def rollback() -> None:
            self._transactional()
            self._rollback()

        await self._request("tx.rollback", rollback)

    def _transactional(self) -> Transaction:
        if self._transaction is None:
            raise Refusal(406, "PRECONDITION_FAILED - channel is not transactional")
        return self._transaction


def _sender_keys(headers: Any, name: str) -> list[str]:
    """The extra routing keys of a ``CC`` or ``BCC`` header (an array of strings)."""
    keys = headers.get(name)
    if not isinstance(keys, list):
        return []
    return [
        key.decode() if isinstance(key, bytes) else key
        for key in keys
        if isinstance(key, str | bytes)
    ]


def _expiration(value: str | None) -> int | None:
    """A per-message TTL in ms, refused as RabbitMQ refuses it (it reads the string
    as Erlang's ``string:to_integer`` does: an optional sign and digits, nothing more)."""
    if value is None:
        return None
    match = _INTEGER.match(value)
    if match is None:
        problem = "no_integer"
    elif match.end() < len(value):
        problem = f'{{leftover_string,"{value[match.end() :]}"}}'
    else:
        ttl = int(match.group())
        if ttl < 0:
            problem = f"{{value_negative,{ttl}}}"
        elif ttl > MAX_TTL:
            problem = f"{{value_too_large,{ttl}}}"
        else:
            return ttl
    raise Refusal(406, f"PRECONDITION_FAILED - invalid expiration '{value}': {problem}")


_INTEGER = re.compile(r"[+-]?[0-9]+")


if TYPE_CHECKING:
    # The in-memory channel implements the seams, checked statically: the
    # patterns' channel, consuming (DeliveryIterator), and settling deliveries.
    from ..amqp import ConsumingChannel, Settler
    from ..patterns import PatternChannel
    from ._unacked import UnackedDeliveries

    _pattern_channel: type[PatternChannel] = MemoryChannel
    _consuming_channel: type[ConsumingChannel] = MemoryChannel
    _settler: type[Settler] = UnackedDeliveries
