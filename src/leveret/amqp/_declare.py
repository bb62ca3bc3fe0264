"""The declaring methods of a channel: exchanges, queues, bindings, purge, delete.

Written once for both brokers' channels: each method builds the AMQP method's
arguments (under the keyword names of these methods, so that a recorded
declaration can be replayed through them) and hands them to the channel's
``_declare``, which carries it out and returns the broker's reply arguments. A
robust channel's ``_declare`` also records what it declared, to replay after a
reconnect; the in-memory channel's asks its broker.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ._message import QueueDeclareOk

#: Carry out a declaring method (``"queue.declare"`` ...) with these arguments
#: once the channel is open; returns the arguments of the broker's reply.
Declare = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


class Declarations:
    """The declaring methods, over the ``_declare`` of the channel they are mixed into."""

    _declare: Declare

    async def exchange_declare(
        self,
        exchange: str,
        type: str = "direct",
        *,
        passive: bool = False,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        """Declare an exchange (``passive`` only checks that it exists).

        Raises:
            NotFoundError: passive, and the exchange does not exist.
            PreconditionFailedError: it exists with other settings.
        """
        args = dict(
            exchange=exchange,
            type=type,
            passive=passive,
            durable=durable,
            auto_delete=auto_delete,
            internal=internal,
            arguments=arguments,
        )
        await self._declare("exchange.declare", args)

    async def exchange_delete(self, exchange: str, *, if_unused: bool = False) -> None:
        await self._declare("exchange.delete", dict(exchange=exchange, if_unused=if_unused))

    async def exchange_bind(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        *,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        args = dict(
            destination=destination, source=source, routing_key=routing_key, arguments=arguments
        )
        await self._declare("exchange.bind", args)

    async def exchange_unbind(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        *,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        args = dict(
            destination=destination, source=source, routing_key=routing_key, arguments=arguments
        )
        await self._declare("exchange.unbind", args)

    async def queue_declare(
        self,
        queue: str = "",
        *,
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> QueueDeclareOk:
        """Declare a queue; ``""`` lets the broker choose the name (see the result).

        Raises:
            NotFoundError: passive, and the queue does not exist.
            PreconditionFailedError: it exists with other settings.
            ResourceLockedError: it is exclusive to another connection.
            AccessRefusedError: the name starts with ``amq.`` (reserved).
        """
        args = dict(
            queue=queue,
            passive=passive,
            durable=durable,
            exclusive=exclusive,
            auto_delete=auto_delete,
            arguments=arguments,
        )
        return QueueDeclareOk(**await self._declare("queue.declare", args))

    async def queue_bind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        *,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        args = dict(queue=queue, exchange=exchange, routing_key=routing_key, arguments=arguments)
        await self._declare("queue.bind", args)

    async def queue_unbind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        *,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        args = dict(queue=queue, exchange=exchange, routing_key=routing_key, arguments=arguments)
        await self._declare("queue.unbind", args)

    async def queue_purge(self, queue: str) -> int:
        """Drop the queue's ready messages; returns how many."""
        count: int = (await self._declare("queue.purge", dict(queue=queue)))["message_count"]
        return count

    async def queue_delete(
        self, queue: str, *, if_unused: bool = False, if_empty: bool = False
    ) -> int:
        """Delete a queue; returns how many messages it held."""
        args = dict(queue=queue, if_unused=if_unused, if_empty=if_empty)
        count: int = (await self._declare("queue.delete", args))["message_count"]
        return count
