"""``basic.get``: one message fetched on demand (:meth:`Channel.get`), mixed into the
channel. The broker answers with ``basic.get-ok`` and the message's content, or with
``basic.get-empty``; the content arrives through the channel's frames (``_on_get``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from ..exceptions import ConfigurationError
from ._message import Delivery
from ._states import ChannelState

if TYPE_CHECKING:
    from ._acks import AckWindow
    from ._codec import Method
    from ._frames import Properties

_OPEN: Final = ChannelState.OPEN


class Getting:
    """The ``basic.get`` of :class:`~leveret.amqp.Channel` (mixed into it)."""

    number: int
    _state: ChannelState
    _loop: asyncio.AbstractEventLoop
    _acks: AckWindow
    #: The pending get's message, and whether it was asked for with ``no_ack``.
    _get_waiter: asyncio.Future[Delivery | None] | None
    _get_no_ack: bool

    # The channel's own (see Channel): wait until open; send a method, await its reply.
    _ensure_open: Callable[[], Awaitable[None]]
    _call: Callable[..., Awaitable[Method]]

    async def get(self, queue: str, *, no_ack: bool = False) -> Delivery | None:
        """Fetch one message with ``basic.get``; ``None`` if the queue is empty."""
        if self._state is not _OPEN:
            await self._ensure_open()
        if self._get_waiter is not None:
            raise ConfigurationError(f"channel {self.number} already has a basic.get in flight")
        waiter: asyncio.Future[Delivery | None] = self._loop.create_future()
        self._get_waiter = waiter
        self._get_no_ack = no_ack
        try:
            reply = await self._call(
                "basic.get", ("basic.get-ok", "basic.get-empty"), queue=queue, no_ack=no_ack
            )
            if reply.name == "basic.get-empty":
                return None
            return await waiter
        finally:
            self._get_waiter = None
            if not waiter.done():
                waiter.cancel()
            elif not waiter.cancelled():
                waiter.exception()  # failed with the channel; the caller got that error

    def _on_get(self, ok: dict[str, Any], props: Properties, body: bytes) -> None:
        """The message of a ``basic.get-ok`` (``ok`` holds its arguments)."""
        no_ack = self._get_no_ack
        tag = ok["delivery_tag"]
        if not no_ack:
            self._acks.unsettled.append(tag)
        delivery = Delivery(
            self._acks,
            body,
            props,
            tag,
            ok["exchange"],
            ok["routing_key"],
            ok["redelivered"],
            None,
            no_ack,
            ok["message_count"],
        )
        if self._get_waiter is not None and not self._get_waiter.done():
            self._get_waiter.set_result(delivery)
