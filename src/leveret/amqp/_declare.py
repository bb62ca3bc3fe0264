"""The declaring methods of a channel: exchanges, queues, bindings, purge, qos.

Each builds the method's arguments and sends it through the channel's
``_topology_method`` (which a robust channel extends to record what it declared,
to replay after a reconnect) or ``_ready_call`` (waits for a reopening channel).
The argument dicts use the keyword names of these methods, so a recorded
declaration can be replayed through them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ..exceptions import ConfigurationError
from ._codec import Method
from ._message import QueueDeclareOk


class Declarations:
    """Mixed into :class:`~leveret.amqp.Channel`, which provides the two senders."""

    #: Send a method that changes the broker's topology; returns the reply.
    _topology_method: Callable[[str, dict[str, Any]], Awaitable[Method]]
    #: Send any method once the channel is open; returns the reply.
    _ready_call: Callable[..., Awaitable[Method]]
    #: The qos last set per consumer and for the channel as a whole: (count, size).
    _prefetch: tuple[int, int] | None
    _global_prefetch: tuple[int, int] | None

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
        await self._topology_method("exchange.declare", args)

    async def exchange_delete(self, exchange: str, *, if_unused: bool = False) -> None:
        await self._topology_method("exchange.delete", dict(exchange=exchange, if_unused=if_unused))

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
        await self._topology_method("exchange.bind", args)

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
        await self._topology_method("exchange.unbind", args)

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
        """
        args = dict(
            queue=queue,
            passive=passive,
            durable=durable,
            exclusive=exclusive,
            auto_delete=auto_delete,
            arguments=arguments,
        )
        reply = await self._topology_method("queue.declare", args)
        return QueueDeclareOk(**reply.args)

    async def queue_bind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        *,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        args = dict(queue=queue, exchange=exchange, routing_key=routing_key, arguments=arguments)
        await self._topology_method("queue.bind", args)

    async def queue_unbind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        *,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        args = dict(queue=queue, exchange=exchange, routing_key=routing_key, arguments=arguments)
        await self._topology_method("queue.unbind", args)

    async def queue_purge(self, queue: str) -> int:
        """Drop the queue's ready messages; returns how many."""
        reply = await self._ready_call("queue.purge", ("queue.purge-ok",), queue=queue)
        count: int = reply.args["message_count"]
        return count

    async def queue_delete(
        self, queue: str, *, if_unused: bool = False, if_empty: bool = False
    ) -> int:
        """Delete a queue; returns how many messages it held."""
        args = dict(queue=queue, if_unused=if_unused, if_empty=if_empty)
        reply = await self._topology_method("queue.delete", args)
        count: int = reply.args["message_count"]
        return count

    async def qos(
        self, prefetch_count: int, *, prefetch_size: int = 0, global_: bool = False
    ) -> None:
        """Limit unacked deliveries: per consumer started afterwards, or (``global_``)
        shared by the whole channel. A robust channel restores it after reconnecting.
        """
        if not 0 <= prefetch_count <= 65535:
            raise ConfigurationError(f"prefetch_count={prefetch_count} is outside 0..65535")
        await self._ready_call(
            "basic.qos",
            ("basic.qos-ok",),
            prefetch_count=prefetch_count,
            prefetch_size=prefetch_size,
            global_=global_,
        )
        if global_:
            self._global_prefetch = (prefetch_count, prefetch_size)
        else:
            self._prefetch = (prefetch_count, prefetch_size)
