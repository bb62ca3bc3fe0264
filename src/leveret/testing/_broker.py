"""The in-memory broker: exchanges, queues, routing and dead-lettering.

One :class:`MemoryBroker` is one RabbitMQ vhost. Channels of its connections
ask it to declare, route and settle; it refuses as RabbitMQ does (see
:mod:`._errors`). It lives on one event loop at a time: it binds to the loop of
its first connection, and moves to another loop only once every connection of
the old one is closed (a broker shared by tests that each run their own loop).
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ..amqp import QueueDeclareOk
from ..exceptions import ConfigurationError
from ._errors import (
    Refusal,
    describe_arg,
    flag,
    inequivalent,
    locked,
    no_exchange,
    no_queue,
    not_implemented,
    reserved,
    type_class,
)
from ._message import StoredMessage, dead_lettered_properties, is_dead_letter_cycle
from ._queue import MemoryQueue

if TYPE_CHECKING:
    from ._connection import MemoryConnection

#: Direct reply-to: the pseudo-queue a caller consumes, and the prefix of its real names.
REPLY_TO = "amq.rabbitmq.reply-to"
REPLY_TO_PREFIX = REPLY_TO + "."

EXCHANGE_TYPES = ("direct", "fanout", "topic")
PREDECLARED = {"amq.direct": "direct", "amq.fanout": "fanout", "amq.topic": "topic"}

# Arguments RabbitMQ compares when a queue is declared again (others are ignored).
EQUIVALENT_ARGS = (
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-dead-letter-strategy",
    "x-delivery-limit",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-message-ttl",
    "x-overflow",
    "x-queue-mode",
    "x-queue-type",
    "x-single-active-consumer",
)


@dataclasses.dataclass(eq=False)
class Exchange:
    name: str
    type: str
    durable: bool = True
    auto_delete: bool = False
    bindings: list[tuple[MemoryQueue, str]] = dataclasses.field(default_factory=list)

    def route(self, routing_key: str) -> list[MemoryQueue]:
        if self.type == "fanout":
            matches = [queue for queue, _ in self.bindings]
        elif self.type == "topic":
            matches = [queue for queue, key in self.bindings if _topic_match(key, routing_key)]
        else:
            matches = [queue for queue, key in self.bindings if key == routing_key]
        return list(dict.fromkeys(matches))  # a queue bound twice gets one copy


class MemoryBroker:
    """An in-memory RabbitMQ for tests: one vhost with its exchanges and queues.

    ``await broker.connect()`` (or :func:`connect_memory`) opens a connection whose
    channels implement the pattern seam, so :class:`~leveret.patterns.Master`,
    :class:`~leveret.patterns.RPC`, retries and dead-letter queues run on it as on
    RabbitMQ. ``broker.queues[name]`` shows a queue's state. ``await broker.close()``
    closes every connection (tests should, so no task outlives them).
    """

    def __init__(self, name: str = "") -> None:
        self.name = name
        self._queues: dict[str, MemoryQueue] = {}
        self._exchanges: dict[str, Exchange] = {
            name: Exchange(name, kind) for name, kind in PREDECLARED.items()
        }
        self._replies: dict[str, MemoryQueue] = {}
        self._connections: set[MemoryConnection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: list[asyncio.Future[None]] = []

    def __repr__(self) -> str:
        return f"<MemoryBroker {self.url!r} queues={len(self._queues)}>"

    @property
    def url(self) -> str:
        return f"memory://{self.name}"

    @property
    def queues(self) -> Mapping[str, MemoryQueue]:
        """The queues by name (read-only; direct reply-to pseudo-queues not included)."""
        return MappingProxyType(self._queues)

    @property
    def exchanges(self) -> Mapping[str, str]:
        """Exchange names and their types (the default exchange ``""`` is implicit)."""
        return MappingProxyType({name: ex.type for name, ex in self._exchanges.items()})

    async def connect(self, *, name: str | None = None) -> MemoryConnection:
        """Open a connection to this broker (``name`` only shows in its repr)."""
        from ._connection import MemoryConnection

        self._bind_loop(asyncio.get_running_loop())
        connection = MemoryConnection(self, name=name)
        self._connections.add(connection)
        await asyncio.sleep(0)  # the handshake's round trip
        return connection

    async def close(self) -> None:
        """Close every connection of this broker (its queues and messages stay)."""
        for connection in list(self._connections):
            await connection.close()

    # -- the event loop ---------------------------------------------------------------

    def _bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        old = self._loop
        if old is loop:
            return
        if old is not None and self._connections:
            if not old.is_closed():
                raise ConfigurationError(
                    f"{self!r} has open connections on another event loop; close them first"
                )
            for connection in list(self._connections):  # their loop is gone, so are they
                connection._abandon()
        self._loop = loop
        self._waiters.clear()
        for queue in self._queues.values():
            queue.rebind()

    def _changed(self) -> None:
        """Wake whoever waits for the broker's state to change (see :func:`drain`)."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _wait_for_change(self) -> None:
        assert self._loop is not None
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        await waiter

    # -- queues -----------------------------------------------------------------------

    def _queue(self, name: str, connection: object) -> MemoryQueue:
        """The queue ``name`` as ``connection`` may use it (404, 405 otherwise)."""
        queue = self._queues.get(name)
        if queue is None:
            raise no_queue(name)
        if not queue.owned_by(connection):
            raise locked(name)
        return queue

    def declare_queue(
        self,
        connection: object,
        name: str,
        *,
        passive: bool,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        arguments: dict[str, Any],
    ) -> QueueDeclareOk:
        """``queue.declare`` for ``connection`` (the owner of exclusive queues).

        Raises:
            Refusal: 404 (passive, missing), 405 (exclusive elsewhere, or the
                exclusive flag differs), 406 (inequivalent, invalid for a quorum
                queue), 403 (``amq.`` prefix), 540 (stream queues).
        """
        if passive:
            if name == REPLY_TO:
                return QueueDeclareOk(name, 0, 0)
            queue = self._queue(name, connection)
            return QueueDeclareOk(name, queue.ready_count(), queue.consumer_count)
        if not name:
            name = "amq.gen-" + secrets.token_urlsafe(16)[:22]
        elif name.startswith("amq."):
            raise reserved("queue", name)
        existing = self._queues.get(name)
        if existing is not None:
            if not existing.owned_by(connection) or existing.exclusive != exclusive:
                raise locked(name)
            self._check_equivalent(existing, durable, auto_delete, arguments)
            return QueueDeclareOk(name, existing.ready_count(), existing.consumer_count)
        queue_type = arguments.get("x-queue-type", "classic")
        if queue_type == "quorum":
            for invalid, prop in (
                (not durable, "non-durable"),
                (exclusive, "exclusive-owner"),
                (auto_delete, "auto-delete"),
            ):
                if invalid:
                    raise Refusal(
                        406,
                        f"PRECONDITION_FAILED - invalid property '{prop}' for queue '{name}' "
                        "in vhost '/'",
                    )
        elif queue_type == "stream":
            raise not_implemented("stream queues")
        elif queue_type != "classic":
            raise Refusal(
                406,
                f"PRECONDITION_FAILED - invalid arg 'x-queue-type' for queue '{name}' in vhost "
                f"'/': \"unsupported queue type '{queue_type}'\"",
            )
        queue = MemoryQueue(
            self,
            name,
            durable=durable,
            exclusive_owner=connection if exclusive else None,
            auto_delete=auto_delete,
            arguments=arguments,
        )
        self._queues[name] = queue
        return QueueDeclareOk(name, 0, 0)

    def _check_equivalent(
        self, queue: MemoryQueue, durable: bool, auto_delete: bool, arguments: Mapping[str, Any]
    ) -> None:
        name = queue.name
        if queue.durable != durable:
            raise inequivalent("queue", name, "durable", flag(durable), flag(queue.durable))
        if queue.auto_delete != auto_delete:
            raise inequivalent(
                "queue", name, "auto_delete", flag(auto_delete), flag(queue.auto_delete)
            )
        current = queue.arguments
        for arg in EQUIVALENT_ARGS:
            mine, theirs = current.get(arg), arguments.get(arg)
            if (
                arg == "x-queue-type"
                and queue.queue_type == "classic"
                and theirs in (None, "classic")
            ):
                continue  # a classic queue is classic whether it says so or not
            both = mine is not None and theirs is not None
            if (mine is None and theirs is None) or (
                both and type_class(mine) == type_class(theirs) and mine == theirs
            ):
                continue
            raise inequivalent(
                "queue", name, arg, describe_arg(theirs, both), describe_arg(mine, both)
            )

    def _delete_queue(self, queue: MemoryQueue) -> int:
        """Remove a queue, its bindings and consumers (who are told); returns its ready count."""
        count = queue.message_count
        if self._queues.get(queue.name) is queue:
            del self._queues[queue.name]
        for exchange in list(self._exchanges.values()):
            kept = [(q, key) for q, key in exchange.bindings if q is not queue]
            if len(kept) != len(exchange.bindings):
                exchange.bindings = kept
                self._maybe_auto_delete(exchange)
        for subscription in queue.delete():
            subscription.channel._broker_cancelled(subscription)
        self._changed()
        return count

    def delete_queue(
        self, connection: object, name: str, *, if_unused: bool, if_empty: bool
    ) -> int:
        """``queue.delete``: how many ready messages went with it (0 if it was missing).

        Raises:
            Refusal: 405 (another connection's exclusive queue), 406 (in use, not empty).
        """
        queue = self._queues.get(name)
        if queue is None:
            return 0  # RabbitMQ: deleting a missing queue is fine
        if not queue.owned_by(connection):
            raise locked(name)
        if if_unused and queue.has_consumers:
            raise Refusal(406, f"PRECONDITION_FAILED - queue '{name}' in vhost '/' in use")
        if if_empty and queue.message_count:
            raise Refusal(406, f"PRECONDITION_FAILED - queue '{name}' in vhost '/' not empty")
        return self._delete_queue(queue)

    def new_reply_queue(self) -> MemoryQueue:
        """A direct reply-to pseudo-queue (never listed, never declared)."""
        name = REPLY_TO_PREFIX + secrets.token_urlsafe(18)
        queue = MemoryQueue(
            self, name, durable=False, exclusive_owner=None, auto_delete=False, arguments={}
        )
        self._replies[name] = queue
        return queue

    def drop_reply_queue(self, queue: MemoryQueue) -> None:
        self._replies.pop(queue.name, None)
        queue.delete()

    # -- exchanges and bindings -------------------------------------------------------

    def _exchange(self, name: str) -> Exchange:
        exchange = self._exchanges.get(name)
        if exchange is None:
            raise no_exchange(name)
        return exchange

    def declare_exchange(
        self, name: str, kind: str, *, passive: bool, durable: bool, auto_delete: bool
    ) -> None:
        """``exchange.declare`` of a direct, fanout or topic exchange.

        Raises:
            Refusal: 404 (passive, missing), 406 (inequivalent), 403 (the default
                exchange, ``amq.`` prefix), 503 (unknown type: closes the
                connection), 540 (headers exchanges).
        """
        if not name:
            raise Refusal(403, "ACCESS_REFUSED - operation not permitted on the default exchange")
        if passive:
            self._exchange(name)
            return
        if kind == "headers":
            raise not_implemented("headers exchanges")
        if kind not in EXCHANGE_TYPES:
            raise Refusal(503, f"COMMAND_INVALID - unknown exchange type '{kind}'")
        if name.startswith("amq."):
            raise reserved("exchange", name)
        exchange = self._exchanges.get(name)
        if exchange is None:
            self._exchanges[name] = Exchange(name, kind, durable, auto_delete)
            return
        if kind != exchange.type:
            raise inequivalent("exchange", name, "type", f"'{kind}'", f"'{exchange.type}'")
        for arg, theirs, mine in (
            ("durable", durable, exchange.durable),
            ("auto_delete", auto_delete, exchange.auto_delete),
        ):
            if theirs != mine:
                raise inequivalent("exchange", name, arg, flag(theirs), flag(mine))

    def delete_exchange(self, name: str, *, if_unused: bool) -> None:
        if not name:
            raise Refusal(403, "ACCESS_REFUSED - operation not permitted on the default exchange")
        exchange = self._exchanges.get(name)
        if exchange is None:
            return
        if if_unused and exchange.bindings:
            raise Refusal(406, f"PRECONDITION_FAILED - exchange '{name}' in vhost '/' in use")
        del self._exchanges[name]

    def bind(self, connection: object, queue_name: str, exchange_name: str, key: str) -> None:
        if not exchange_name:
            raise Refusal(403, "ACCESS_REFUSED - operation not permitted on the default exchange")
        queue = self._queue(queue_name, connection)
        exchange = self._exchange(exchange_name)
        if (queue, key) not in exchange.bindings:
            exchange.bindings.append((queue, key))

    def unbind(self, connection: object, queue_name: str, exchange_name: str, key: str) -> None:
        if not exchange_name:
            raise Refusal(403, "ACCESS_REFUSED - operation not permitted on the default exchange")
        queue = self._queue(queue_name, connection)
        exchange = self._exchange(exchange_name)
        if (queue, key) in exchange.bindings:
            exchange.bindings.remove((queue, key))
            self._maybe_auto_delete(exchange)

    def _maybe_auto_delete(self, exchange: Exchange) -> None:
        if exchange.auto_delete and not exchange.bindings:
            self._exchanges.pop(exchange.name, None)

    # -- routing ----------------------------------------------------------------------

    def route(self, exchange_name: str, routing_key: str) -> list[MemoryQueue]:
        """The queues a message goes to (404 if the exchange does not exist)."""
        if not exchange_name:
            if routing_key.startswith(REPLY_TO_PREFIX):
                reply = self._replies.get(routing_key)
                return [reply] if reply is not None else []
            queue = self._queues.get(routing_key)
            return [queue] if queue is not None else []
        return self._exchange(exchange_name).route(routing_key)

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        encoded: bytes,
        ttl: int | None,
    ) -> tuple[bool, bool]:
        """Route and enqueue; returns (routed to any queue, refused by any queue)."""
        targets = self.route(exchange, routing_key)
        refused = False
        for queue in targets:
            if not queue.enqueue(body, encoded, exchange, routing_key, ttl):
                refused = True
        self._changed()
        return bool(targets), refused

    def _dead_letter(self, message: StoredMessage, queue: MemoryQueue, reason: str) -> None:
        """Send a message that left ``queue`` for ``reason`` to its dead-letter exchange.

        Without ``x-dead-letter-exchange`` (or with one that does not exist) the
        message is dropped, as RabbitMQ drops it.
        """
        arguments = queue.arguments
        exchange = arguments.get("x-dead-letter-exchange")
        if not isinstance(exchange, str) or (exchange and exchange not in self._exchanges):
            return
        key = arguments.get("x-dead-letter-routing-key")
        routing_key = key if isinstance(key, str) else message.routing_key
        properties, deaths = dead_lettered_properties(message, queue.name, reason)
        encoded = properties.encode()
        for target in self.route(exchange, routing_key):
            if is_dead_letter_cycle(target.name, deaths, reason):
                continue
            target.enqueue(message.body, encoded, exchange, routing_key, None)

    # -- connections ------------------------------------------------------------------

    def _connection_gone(self, connection: MemoryConnection) -> None:
        """Exclusive queues go with the connection that declared them."""
        self._connections.discard(connection)
        for queue in list(self._queues.values()):
            if queue.exclusive and queue.owned_by(connection):
                self._delete_queue(queue)


def _topic_match(pattern: str, key: str) -> bool:
    """AMQP topic matching: ``*`` is one word, ``#`` zero or more."""

    def match(p: list[str], k: list[str]) -> bool:
        if not p:
            return not k
        if p[0] == "#":
            return any(match(p[1:], k[i:]) for i in range(len(k) + 1))
        if not k:
            return False
        return (p[0] == "*" or p[0] == k[0]) and match(p[1:], k[1:])

    return match(pattern.split("."), key.split("."))
