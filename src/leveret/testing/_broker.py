"""The in-memory broker: exchanges, queues, routing and dead-lettering.

One :class:`MemoryBroker` is one RabbitMQ vhost. Channels of its connections
ask it to declare, route and settle; it refuses as RabbitMQ does (see
:mod:`._errors`). It lives on one event loop at a time: it binds to the loop of
its first connection, and moves to another loop only once every connection of
the old one is closed (a broker shared by tests that each run their own loop).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ..amqp import QueueDeclareOk
from ..exceptions import ConfigurationError
from ._clock import Clock
from ._errors import (
    Refusal,
    describe_arg,
    flag,
    inequivalent,
    locked,
    no_queue,
    not_implemented,
    reserved,
    type_class,
)
from ._exchanges import REPLY_TO, REPLY_TO_PREFIX, Exchanges, route
from ._message import StoredMessage, dead_lettered_properties, is_dead_letter_cycle
from ._queue import MemoryQueue
from ._validation import CAPABILITIES, check_classic_settings, check_queue_arguments

if TYPE_CHECKING:
    from ._connection import MemoryConnection

log = logging.getLogger("leveret.testing")

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
    "x-queue-master-locator",
    "x-queue-mode",
    "x-queue-type",
    "x-queue-version",
    "x-single-active-consumer",
)


class MemoryBroker(Exchanges):
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
        self._init_exchanges()
        #: Broker time: every expiry reads it (see :meth:`advance`).
        self.clock = Clock()
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
        self.clock.bind(loop)
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
            queue.used()
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
            existing.used()
            return QueueDeclareOk(name, existing.ready_count(), existing.consumer_count)
        queue_type = arguments.get("x-queue-type", "classic")
        if queue_type in CAPABILITIES:
            check_queue_arguments(name, queue_type, arguments)
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
        check_classic_settings(name, arguments)
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
        self._drop_bindings_to(queue)
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

    def publish(
        self,
        exchange: str,
        routing_keys: list[str],
        headers: Mapping[str, Any],
        body: bytes,
        encoded: bytes,
        ttl: int | None,
        priority: int | None,
    ) -> tuple[list[MemoryQueue], Callable[[], bool]]:
        """Route a message now; returns the queues it goes to, and the function that
        puts it there (which returns whether any queue refused it). A transaction
        calls that at commit; a plain publish at once.

        Raises:
            Refusal: 404 (no such exchange), 403 (an internal exchange).
        """
        targets = self.route(exchange, routing_keys, headers)
        routing_key = routing_keys[0]

        def enqueue() -> bool:
            refused = False
            for queue in targets:
                if not queue.enqueue(body, encoded, exchange, routing_key, ttl, priority):
                    refused = True
            self._changed()
            return refused

        return targets, enqueue

    def _dead_letter(self, message: StoredMessage, queue: MemoryQueue, reason: str) -> None:
        """Send a message that left ``queue`` for ``reason`` to its dead-letter exchange.

        Without ``x-dead-letter-exchange`` (or with one that does not exist, or
        routing nowhere) the message is dropped, as RabbitMQ drops it, except
        under at-least-once dead-lettering, where RabbitMQ keeps it and retries
        (minutes later): the in-memory broker drops it too and logs a warning.
        """
        arguments = queue.arguments
        exchange_name = arguments.get("x-dead-letter-exchange")
        if not isinstance(exchange_name, str):
            return
        key = arguments.get("x-dead-letter-routing-key")
        routing_key = key if isinstance(key, str) else message.routing_key
        properties, deaths = dead_lettered_properties(
            message, queue.name, reason, self.clock.wall()
        )
        exchange = self._exchanges.get(exchange_name) if exchange_name else None
        if exchange is not None:
            # Not self.route: the broker itself may dead-letter to an internal exchange.
            targets = route(exchange, [routing_key], properties.headers or {}, self._exchanges.get)
        else:
            targets = self.route("", [routing_key], {}) if not exchange_name else []
        if not targets and queue.at_least_once_dead_lettering:
            log.warning(
                "a dead letter of queue %r found no queue; RabbitMQ would keep it "
                "(at-least-once) and retry, the in-memory broker drops it",
                queue.name,
            )
        encoded = properties.encode()
        for target in targets:
            if is_dead_letter_cycle(target.name, deaths, reason):
                continue
            target.enqueue(
                message.body, encoded, exchange_name, routing_key, None, properties.priority
            )

    # -- time -------------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Move the broker's clock ``seconds`` forward, and do at once all it would do
        meanwhile: expire messages (queue and per-message TTLs), dead-letter them,
        delete queues past their ``x-expires``, in the order they fall due.

        So a test of a one-hour delay runs in milliseconds::

            await channel.publish(b"later", routing_key="wait", expiration=3_600_000)
            broker.advance(3600)   # the message has expired (and was dead-lettered)

        Each expiry happens at its own time: a message dead-lettered into a queue
        with a TTL of its own expires from there later within the same advance if
        that time has come. Consumers with room get each message as it arrives
        (their callbacks are called from within ``advance``; ``async def`` ones
        run as tasks afterwards), so it cannot expire in a consumed queue meanwhile.
        The loop's real clock still runs too (short TTLs expire without ``advance``).

        Raises:
            ConfigurationError: ``seconds`` is negative (time does not go back).
        """
        if seconds < 0:
            raise ConfigurationError(f"advance({seconds}) would move time back")
        clock = self.clock
        target = clock.now() + seconds
        try:
            while True:
                due = [(queue.next_due(), queue) for queue in list(self._queues.values())]
                pending = [(when, queue) for when, queue in due if when is not None]
                if not pending:
                    break
                when, queue = min(pending, key=lambda item: item[0])
                if when > target:
                    break
                clock.hold(when)
                queue.run_due()
                self._dispatch_pending()
            clock.hold(target)
            for queue in list(self._queues.values()):
                queue.run_due()
            self._dispatch_pending()
        finally:
            clock.release()
        for queue in list(self._queues.values()):
            queue.rearm()  # the loop time of what is due next has moved
        self._changed()

    def _dispatch_pending(self) -> None:
        """Hand out now what waits for a dispatch (within :meth:`advance`, whose time
        moves on before the loop would have run them)."""
        for queue in list(self._queues.values()):
            if queue.dispatch_pending:
                queue.run_due()

    # -- connections ------------------------------------------------------------------

    def _connection_gone(self, connection: MemoryConnection) -> None:
        """Exclusive queues go with the connection that declared them."""
        self._connections.discard(connection)
        for queue in list(self._queues.values()):
            if queue.exclusive and queue.owned_by(connection):
                self._delete_queue(queue)
