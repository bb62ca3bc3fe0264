"""Exchanges of the in-memory broker: declaring, binding, and routing as RabbitMQ routes.

Routing follows RabbitMQ's: starting at the exchange published to, each
exchange's matching bindings lead to queues and to further exchanges
(exchange-to-exchange bindings); an exchange none of whose bindings matched
passes the message to its ``alternate-exchange``, if that exists. Each exchange
is visited once per message and each queue gets one copy, however many paths
lead to it, so loops of bindings cannot route a message twice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ._errors import (
    Refusal,
    amqp_type,
    describe_arg,
    flag,
    inequivalent,
    no_exchange,
    reserved,
    type_class,
)

if TYPE_CHECKING:
    from ._queue import MemoryQueue

REPLY_TO = "amq.rabbitmq.reply-to"
REPLY_TO_PREFIX = REPLY_TO + "."

EXCHANGE_TYPES = ("direct", "fanout", "topic", "headers")
PREDECLARED = {
    "amq.direct": "direct",
    "amq.fanout": "fanout",
    "amq.topic": "topic",
    "amq.headers": "headers",
    "amq.match": "headers",
}
_X_MATCH = ("all", "any", "all-with-x", "any-with-x")


@dataclasses.dataclass(frozen=True, eq=True)
class Binding:
    """A binding from an exchange to a queue or another exchange.

    Its key and arguments are part of what it is: the same destination bound
    with other arguments is another binding, as on RabbitMQ.
    """

    destination: MemoryQueue | Exchange
    key: str
    arguments: Mapping[str, Any]


@dataclasses.dataclass(eq=False)
class Exchange:
    name: str
    type: str
    durable: bool = True
    auto_delete: bool = False
    internal: bool = False
    arguments: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    bindings: list[Binding] = dataclasses.field(default_factory=list)

    @property
    def alternate(self) -> str | None:
        """The name of its alternate exchange, if it has one."""
        alternate = self.arguments.get("alternate-exchange")
        return alternate if isinstance(alternate, str) else None

    def matches(self, routing_key: str, headers: Mapping[str, Any]) -> list[MemoryQueue | Exchange]:
        """The destinations of the bindings this message matches."""
        if self.type == "fanout":
            return [binding.destination for binding in self.bindings]
        if self.type == "topic":
            return [b.destination for b in self.bindings if topic_match(b.key, routing_key)]
        if self.type == "headers":
            return [b.destination for b in self.bindings if headers_match(b.arguments, headers)]
        return [b.destination for b in self.bindings if b.key == routing_key]


def route(
    start: Exchange,
    routing_keys: Iterable[str],
    headers: Mapping[str, Any],
    find: Callable[[str], Exchange | None],
) -> list[MemoryQueue]:
    """The queues a message published to ``start`` reaches (each once).

    ``find`` looks an alternate exchange up by name (a missing one routes nothing).
    """
    queues: dict[MemoryQueue, None] = {}
    for routing_key in routing_keys:
        work, seen = [start], {id(start)}
        while work:
            exchange = work.pop(0)
            destinations = exchange.matches(routing_key, headers)
            if not destinations and exchange.alternate is not None:
                alternate = find(exchange.alternate)
                destinations = [alternate] if alternate is not None else []
            for destination in destinations:
                if isinstance(destination, Exchange):
                    if id(destination) not in seen:
                        seen.add(id(destination))
                        work.append(destination)
                else:
                    queues[destination] = None
    return list(queues)


def topic_match(pattern: str, key: str) -> bool:
    """AMQP topic matching as RabbitMQ does it: ``*`` is exactly one word, ``#``
    zero or more; an empty key is no words at all (so only ``#`` matches it)."""

    def match(p: list[str], k: list[str]) -> bool:
        if not p:
            return not k
        if p[0] == "#":
            return any(match(p[1:], k[i:]) for i in range(len(k) + 1))
        if not k:
            return False
        return (p[0] == "*" or p[0] == k[0]) and match(p[1:], k[1:])

    return match(_words(pattern), _words(key))


def _words(key: str) -> list[str]:
    return key.split(".") if key else []


def headers_match(arguments: Mapping[str, Any], headers: Mapping[str, Any]) -> bool:
    """Whether a message's headers match a headers-exchange binding's arguments.

    ``x-match`` is ``all`` (the default) or ``any``; arguments starting with
    ``x-`` take part only with ``all-with-x`` / ``any-with-x``. A binding value
    of ``None`` (AMQP void) asks only that the header be there; other values must
    be equal as RabbitMQ compares them (numbers by value, text and bytes by their
    bytes, booleans only to booleans).
    """
    mode = arguments.get("x-match")
    mode = mode if mode in _X_MATCH else "all"
    with_x = mode.endswith("-with-x")
    wanted = {
        key: value
        for key, value in arguments.items()
        if key != "x-match" and (with_x or not key.startswith("x-"))
    }
    results = []
    for key, value in wanted.items():
        present = key in headers
        other = headers.get(key)
        equal = value is None or _same_value(value, other)
        results.append(present and equal)
    if mode.startswith("all"):
        return all(results)
    return any(results)


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, str | bytes) and isinstance(b, str | bytes):
        return _as_bytes(a) == _as_bytes(b)
    numbers = ("int", "double")
    if type_class(a) in numbers and type_class(b) in numbers:
        return bool(a == b)
    return type_class(a) == type_class(b) and bool(a == b)


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


class Exchanges:
    """The exchanges of a broker: declare, delete, bind, unbind, route (a mixin of
    :class:`MemoryBroker`, which provides the queues)."""

    _exchanges: dict[str, Exchange]
    _queues: dict[str, MemoryQueue]
    _replies: dict[str, MemoryQueue]
    _queue: Callable[[str, object], MemoryQueue]

    def _init_exchanges(self) -> None:
        self._exchanges = {name: Exchange(name, kind) for name, kind in PREDECLARED.items()}

    def _exchange(self, name: str) -> Exchange:
        exchange = self._exchanges.get(name)
        if exchange is None:
            raise no_exchange(name)
        return exchange

    def declare_exchange(
        self,
        name: str,
        kind: str,
        *,
        passive: bool,
        durable: bool,
        auto_delete: bool,
        internal: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        """``exchange.declare``.

        Raises:
            Refusal: 404 (passive, missing), 406 (inequivalent, an invalid
                ``alternate-exchange``), 403 (the default exchange, ``amq.``
                prefix), 503 (unknown type: closes the connection).
        """
        if not name:
            raise _default_exchange()
        if passive:
            self._exchange(name)
            return
        if kind not in EXCHANGE_TYPES:
            raise Refusal(503, f"COMMAND_INVALID - unknown exchange type '{kind}'")
        arguments = dict(arguments or {})
        alternate = arguments.get("alternate-exchange")
        if alternate is not None and not isinstance(alternate, str):
            raise Refusal(
                406,
                f"PRECONDITION_FAILED - invalid type '{amqp_type(alternate)}' for arg "
                f"'alternate-exchange' in exchange '{name}' in vhost '/'",
            )
        if name.startswith("amq.") and name not in self._exchanges:
            raise reserved("exchange", name)
        exchange = self._exchanges.get(name)
        if exchange is None:
            self._exchanges[name] = Exchange(name, kind, durable, auto_delete, internal, arguments)
            return
        if kind != exchange.type:
            raise inequivalent("exchange", name, "type", f"'{kind}'", f"'{exchange.type}'")
        for arg, theirs, mine in (
            ("durable", durable, exchange.durable),
            ("auto_delete", auto_delete, exchange.auto_delete),
            ("internal", internal, exchange.internal),
        ):
            if theirs != mine:
                raise inequivalent("exchange", name, arg, flag(theirs), flag(mine))
        mine_alternate = exchange.arguments.get("alternate-exchange")
        if mine_alternate != alternate:
            both = mine_alternate is not None and alternate is not None
            raise inequivalent(
                "exchange",
                name,
                "alternate-exchange",
                describe_arg(alternate, both),
                describe_arg(mine_alternate, both),
            )

    def delete_exchange(self, name: str, *, if_unused: bool) -> None:
        """``exchange.delete``: its bindings go too, both ways (deleting a missing one is fine).

        Raises:
            Refusal: 403 (the default exchange, an ``amq.`` one), 406 (``if_unused``
                and it is the source of bindings).
        """
        if not name:
            raise _default_exchange()
        if name.startswith("amq."):
            raise Refusal(
                403,
                f"ACCESS_REFUSED - deletion of system exchange '{name}' in vhost '/' not allowed",
            )
        exchange = self._exchanges.get(name)
        if exchange is None:
            return
        if if_unused and exchange.bindings:
            raise Refusal(406, f"PRECONDITION_FAILED - exchange '{name}' in vhost '/' in use")
        del self._exchanges[name]
        self._drop_bindings_to(exchange)

    def _drop_bindings_to(self, destination: MemoryQueue | Exchange) -> None:
        """Remove every binding to a deleted queue or exchange (sources may auto-delete)."""
        for exchange in list(self._exchanges.values()):
            kept = [b for b in exchange.bindings if b.destination is not destination]
            if len(kept) != len(exchange.bindings):
                exchange.bindings = kept
                self._maybe_auto_delete(exchange)

    def _destination(self, connection: object, kind: str, name: str) -> MemoryQueue | Exchange:
        if not name:
            raise _default_exchange()
        return self._queue(name, connection) if kind == "queue" else self._exchange(name)

    def bind(
        self,
        connection: object,
        kind: str,
        destination_name: str,
        source_name: str,
        key: str,
        arguments: Mapping[str, Any] | None,
    ) -> None:
        """``queue.bind`` (``kind`` ``"queue"``) or ``exchange.bind`` (``"exchange"``).

        Raises:
            Refusal: 403 (the default exchange), 404 (a side missing), 405 (another
                connection's exclusive queue), 406 (an invalid ``x-match``).
        """
        if not source_name:
            raise _default_exchange()
        destination = self._destination(connection, kind, destination_name)
        source = self._exchange(source_name)
        arguments = dict(arguments or {})
        if source.type == "headers":
            _check_x_match(arguments)
        binding = Binding(destination, key, arguments)
        if binding not in source.bindings:
            source.bindings.append(binding)

    def unbind(
        self,
        connection: object,
        kind: str,
        destination_name: str,
        source_name: str,
        key: str,
        arguments: Mapping[str, Any] | None,
    ) -> None:
        """``queue.unbind`` or ``exchange.unbind``; a missing binding, queue or
        exchange is fine, as on RabbitMQ 3.10.

        Raises:
            Refusal: 403 (the default exchange), 405 (another connection's exclusive queue).
        """
        if not source_name or not destination_name:
            raise _default_exchange()
        source = self._exchanges.get(source_name)
        destination: MemoryQueue | Exchange | None
        if kind == "queue":
            destination = self._queues.get(destination_name)
            if destination is not None:
                destination = self._queue(destination_name, connection)
        else:
            destination = self._exchanges.get(destination_name)
        if source is None or destination is None:
            return
        binding = Binding(destination, key, dict(arguments or {}))
        if binding in source.bindings:
            source.bindings.remove(binding)
            self._maybe_auto_delete(source)

    def _maybe_auto_delete(self, exchange: Exchange) -> None:
        """An auto-delete exchange goes with the last binding it is the source of."""
        if (
            exchange.auto_delete
            and not exchange.bindings
            and self._exchanges.get(exchange.name) is exchange
        ):
            del self._exchanges[exchange.name]
            self._drop_bindings_to(exchange)

    def route(
        self, exchange_name: str, routing_keys: Iterable[str], headers: Mapping[str, Any]
    ) -> list[MemoryQueue]:
        """The queues a message goes to.

        Raises:
            Refusal: 404 (the exchange does not exist), 403 (it is internal).
        """
        if not exchange_name:
            queues: dict[MemoryQueue, None] = {}
            for key in routing_keys:
                if key.startswith(REPLY_TO_PREFIX):
                    queue = self._replies.get(key)
                else:
                    queue = self._queues.get(key)
                if queue is not None:
                    queues[queue] = None
            return list(queues)
        exchange = self._exchange(exchange_name)
        if exchange.internal:
            raise Refusal(
                403,
                f"ACCESS_REFUSED - cannot publish to internal exchange '{exchange_name}' "
                "in vhost '/'",
            )
        return route(exchange, routing_keys, headers, self._exchanges.get)


def _default_exchange() -> Refusal:
    return Refusal(403, "ACCESS_REFUSED - operation not permitted on the default exchange")


def _check_x_match(arguments: Mapping[str, Any]) -> None:
    mode = arguments.get("x-match")
    if mode is None or mode in _X_MATCH:
        return
    if isinstance(mode, str):
        raise Refusal(
            406,
            f'PRECONDITION_FAILED - Invalid x-match field value <<"{mode}">>; '
            "expected all, any, all-with-x, or any-with-x",
        )
    raise Refusal(
        406,
        f"PRECONDITION_FAILED - Invalid x-match field type {amqp_type(mode)} "
        f"(value {mode!r}); expected longstr",
    )
