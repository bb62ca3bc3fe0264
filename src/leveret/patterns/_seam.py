"""The seam: what the patterns need of a channel, and the kinds of queue they declare.

:class:`leveret.amqp.Channel` implements :class:`PatternChannel`; so does the
in-memory channel of :mod:`leveret.testing`. Nothing in the patterns reaches a
channel any other way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal, Protocol

from ..amqp import Delivery, Properties, QueueDeclareOk, ReturnedMessage
from ..exceptions import ConfigurationError, PublishError

#: The queue types a worker or callee declares (of :data:`leveret.amqp.QueueType`,
#: those a task or call queue can be: a stream cannot be consumed as a work queue).
QueueType = Literal["classic", "quorum"]


class PatternConnection(Protocol):
    """What the patterns use of a channel's connection: another channel, for work
    that must not risk the first (a passive declare that may 404)."""

    async def channel(self, *, publisher_confirms: bool = True) -> PatternChannel: ...


class PatternChannel(Protocol):
    """The seam: the only channel methods the patterns use.

    :class:`leveret.amqp.Channel` implements it; so does the in-memory channel
    of :mod:`leveret.testing`.
    """

    close_callbacks: list[Callable[[Any, BaseException | None], Any]]
    return_callbacks: list[Callable[[ReturnedMessage], Any]]

    @property
    def is_closed(self) -> bool:
        """Closed for good (a robust channel waiting to reopen is not)."""

    @property
    def connection(self) -> PatternConnection:
        """The connection the channel belongs to."""

    async def close(self) -> None: ...

    async def queue_declare(
        self,
        queue: str = "",
        *,
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> QueueDeclareOk: ...

    async def publish(
        self,
        body: bytes,
        *,
        routing_key: str,
        exchange: str = "",
        mandatory: bool = False,
        properties: Properties | None = None,
        content_type: str | None = None,
        content_encoding: str | None = None,
        headers: Mapping[str, Any] | None = None,
        delivery_mode: int | None = None,
        priority: int | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        expiration: str | int | None = None,
        message_id: str | None = None,
        timestamp: int | float | None = None,
        type: str | None = None,
        user_id: str | None = None,
        app_id: str | None = None,
        confirm: bool = True,
    ) -> None: ...

    def flush(self) -> None:
        """Send what was written so far now, not at the end of the loop turn."""

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
    ) -> list[PublishError | None]: ...

    async def queue_delete(
        self, queue: str, *, if_unused: bool = False, if_empty: bool = False
    ) -> int: ...

    async def queue_bind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        *,
        arguments: Mapping[str, Any] | None = None,
    ) -> None: ...

    async def exchange_bind(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        *,
        arguments: Mapping[str, Any] | None = None,
    ) -> None: ...

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
    ) -> None: ...

    async def consume(
        self,
        queue: str,
        callback: Callable[[Delivery], Awaitable[Any] | None],
        *,
        no_ack: bool = False,
        exclusive: bool = False,
        prefetch_count: int | None = None,
    ) -> str: ...

    async def cancel(self, consumer_tag: str) -> None: ...


class GetChannel(PatternChannel, Protocol):
    """The seam plus ``basic.get``, for the dead-letter tools."""

    async def get(self, queue: str, *, no_ack: bool = False) -> Delivery | None: ...


class TxChannel(PatternChannel, Protocol):
    """The seam plus transactions and closing, for the scheduler (a channel opened
    with ``publisher_confirms=False``)."""

    async def tx_select(self) -> None: ...

    async def tx_commit(self) -> None: ...

    async def tx_rollback(self) -> None: ...

    async def close(self) -> None: ...


def is_quorum(
    queue: str, queue_type: QueueType, *, durable: bool, exclusive: bool, auto_delete: bool
) -> bool:
    """Whether ``queue_type`` asks for a quorum queue (``"quorum"``) or not (``"classic"``).

    Raises:
        ConfigurationError: another type, or a quorum queue asked to be
            non-durable, exclusive or auto-delete.
    """
    if queue_type == "quorum":
        if exclusive or auto_delete or not durable:
            raise ConfigurationError(
                f"queue {queue!r}: a quorum queue is durable, never exclusive or auto-delete"
            )
        return True
    if queue_type != "classic":
        raise ConfigurationError(f"queue_type={queue_type!r} is not 'classic' or 'quorum'")
    return False
