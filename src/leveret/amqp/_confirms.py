"""Publisher confirms and returned messages: what a publish learns from the broker.

:class:`ConfirmWindow` tracks the publishes of one channel incarnation by
sequence number (one dict, one future each, no task). The functions below are
the rules both brokers' channels apply: how a confirm resolves a publish, what a
publish that never got its confirm raises, and where a returned message goes.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final

from ..exceptions import (
    MessageReturnedError,
    MessageTooLargeError,
    PreconditionFailedError,
    PublishNackedError,
    PublishNotConfirmedError,
    UnexpectedConfirmError,
)
from ._message import ReturnedMessage
from ._tasks import TaskOwner

log = logging.getLogger("leveret.amqp")

ReturnCallback = Callable[[ReturnedMessage], Any]
#: (exchange, routing key, mandatory): where a publish went, as the channel caches its frame.
Destination = tuple[str, str, bool]

#: Destinations remembered for returns before the idle ones are dropped.
_DESTINATIONS_KEPT: Final = 1024


def resolve_confirm(
    future: asyncio.Future[None], channel: int, *, ack: bool, returned: ReturnedMessage | None
) -> None:
    """Settle a confirming publish's future as the broker decided (unless the
    publisher gave up waiting already)."""
    if future.done():
        return
    if not ack:
        future.set_exception(
            PublishNackedError(f"broker refused the message (basic.nack) on channel {channel}")
        )
    elif returned is not None:
        future.set_exception(MessageReturnedError(returned))
    else:
        future.set_result(None)


def publish_not_confirmed(channel: int, reason: BaseException) -> PublishNotConfirmedError:
    """The error of a publish whose channel closed before its confirm came."""
    error = PublishNotConfirmedError(
        f"channel {channel} closed before the broker confirmed the publish "
        f"({reason}); it may or may not have been routed"
    )
    error.__cause__ = reason
    return error


#: RabbitMQ's words when it closes a channel over a body past max_message_size.
_TOO_LARGE = re.compile(r"message size (\d+) is larger than (?:configured )?max size (\d+)")


def refused_as_too_large(error: PublishNotConfirmedError, size: int) -> MessageTooLargeError | None:
    """The final refusal a publish of ``size`` bytes met, if its channel was closed
    because a body (this one, or another as large) was over the broker's limit."""
    reason = error.__cause__
    if isinstance(reason, PreconditionFailedError):
        found = _TOO_LARGE.search(reason.reply_text)
        if found is not None and size > int(found.group(2)):
            return MessageTooLargeError(size, int(found.group(2)), by_broker=reason.reply_text)
    return None


def dispatch_return(
    tasks: TaskOwner,
    callbacks: Iterable[ReturnCallback],
    message: ReturnedMessage,
    logger: logging.Logger = log,
) -> None:
    """Hand a returned message no publish claimed to each return callback; with
    none, log a warning (a message that silently vanished would be worse)."""
    callbacks = list(callbacks)
    if not callbacks:
        logger.warning(
            "message returned by the broker and nobody listens for it: %s %s "
            "(exchange %r, routing key %r)",
            message.reply_code,
            message.reply_text,
            message.exchange,
            message.routing_key,
        )
    for callback in callbacks:
        tasks.call(callback, message)


class ConfirmWindow:
    """The unconfirmed publishes of one channel incarnation, by sequence number.

    A mandatory publish is also filed under its destination, so that a
    ``basic.return`` (which names the exchange and routing key, not the
    sequence number) finds it by lookup: the broker sends a return before the
    confirm of the same publish, and returns in publish order, so the oldest
    unreturned publish of that destination and body is the one returned
    (byte-identical messages are interchangeable).
    """

    __slots__ = (
        "_mandatory",
        "_number",
        "_order",
        "_returnable",
        "_returned",
        "_unconfirmed",
        "next_seq",
    )

    def __init__(self, number: int) -> None:
        self._number = number
        #: The next publish's sequence number (the broker counts every publish).
        self.next_seq = 1
        #: Unconfirmed publishes: their future, or None for one nobody waits for.
        self._unconfirmed: dict[int, asyncio.Future[None] | None] = {}
        #: Their sequence numbers in order, from the oldest unconfirmed (a multiple
        #: confirm walks these, never a range the broker chose).
        self._order: deque[int] = deque()
        self._mandatory: dict[int, Destination] = {}
        self._returnable: dict[Destination, dict[int, bytes]] = {}
        self._returned: dict[int, ReturnedMessage] = {}

    def expect(
        self, future: asyncio.Future[None] | None, mandatory: Destination | None, body: bytes
    ) -> None:
        """Register the publish about to be written; ``future`` resolves with its
        confirm (``None``: nobody waits for it, its confirm is only checked)."""
        seq = self.next_seq
        self.next_seq = seq + 1
        self._unconfirmed[seq] = future
        self._order.append(seq)
        if mandatory is not None:
            self._mandatory[seq] = mandatory
            try:
                pending = self._returnable[mandatory]
            except KeyError:  # a new destination (a lookup is the hot path: no .get call)
                if len(self._returnable) >= _DESTINATIONS_KEPT:
                    self._drop_idle_destinations()
                pending = self._returnable[mandatory] = {}
            pending[seq] = body

    def confirmed(self, tag: int, multiple: bool, ack: bool) -> None:
        """A ``basic.ack`` or ``basic.nack`` of the broker.

        Raises:
            UnexpectedConfirmError: ``tag`` is beyond the last publish, or (not
                ``multiple``) that publish was confirmed already.
        """
        unconfirmed = self._unconfirmed
        order = self._order
        if multiple:
            if not 0 < tag < self.next_seq:
                raise self._unexpected(tag, multiple, ack)
            while order and order[0] <= tag:
                seq = order.popleft()
                future = unconfirmed.pop(seq, None)
                if future is not None:
                    self._resolve(seq, future, ack)
            return
        if tag not in unconfirmed:
            raise self._unexpected(tag, multiple, ack)
        future = unconfirmed.pop(tag)
        if future is not None:
            self._resolve(tag, future, ack)
        while order and order[0] not in unconfirmed:  # confirmed out of order before
            order.popleft()

    def _unexpected(self, tag: int, multiple: bool, ack: bool) -> UnexpectedConfirmError:
        what = f"basic.{'ack' if ack else 'nack'} of delivery tag {tag}"
        if multiple:
            what += " (multiple)"
        last = self.next_seq - 1
        if 0 < tag <= last:
            why = "that publish was confirmed already"
        else:
            why = f"the last publish on it was number {last}"
        return UnexpectedConfirmError(
            f"the broker sent {what} on channel {self._number}, but {why}: the connection "
            "is closed over it (a robust one reconnects; publishes in flight fail with "
            "PublishNotConfirmedError)"
        )

    def _resolve(self, seq: int, future: asyncio.Future[None], ack: bool) -> None:
        returned = None
        destination = self._mandatory.pop(seq, None) if self._mandatory else None
        if destination is not None:
            returned = self._returned.pop(seq, None) if self._returned else None
            if returned is None:
                del self._returnable[destination][seq]
        if ack and returned is None:
            if not future.done():  # else the publisher gave up (timeout or cancel)
                future.set_result(None)
        else:
            resolve_confirm(future, self._number, ack=ack, returned=returned)

    def claim_return(self, message: ReturnedMessage) -> bool:
        """Attach a ``basic.return`` to its pending publish; False if none is waiting
        for it (it was published without a confirm, or not as mandatory)."""
        pending = self._returnable.get((message.exchange, message.routing_key, True))
        if pending:
            for seq, body in pending.items():
                if body == message.body:
                    del pending[seq]
                    self._returned[seq] = message
                    return True
        return False

    def fail_all(self, reason: BaseException) -> None:
        """The channel closed: every unconfirmed publish fails (it may or may not
        have been routed)."""
        unconfirmed, self._unconfirmed = self._unconfirmed, {}
        self._order.clear()
        if unconfirmed:
            error = publish_not_confirmed(self._number, reason)
            for future in unconfirmed.values():
                if future is not None and not future.done():
                    future.set_exception(error)

    def _drop_idle_destinations(self) -> None:
        for destination in [d for d, pending in self._returnable.items() if not pending]:
            del self._returnable[destination]
