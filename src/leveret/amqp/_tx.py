"""Transactions on a channel (``tx.select``/``commit``/``rollback``), and the client's
refusals of them, which the in-memory channel shares.

RabbitMQ closes a channel (406) that mixes confirm and transaction mode or ends a
transaction it never began; leveret refuses both before sending, and says how.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ..exceptions import AMQPError, BrokerError, ChannelClosedError, ConfigurationError
from ._states import ChannelState

if TYPE_CHECKING:
    from ._acks import AckWindow
    from ._codec import Method


def transactions_refused(channel: int) -> ConfigurationError:
    """The error of ``tx_select`` on a channel in confirm mode."""
    return ConfigurationError(
        f"channel {channel} confirms publishes, so it cannot be transactional: "
        "open the channel with publisher_confirms=False to use tx_select()"
    )


def not_transactional(channel: int, method: str) -> ConfigurationError:
    """The error of ``tx.commit``/``tx.rollback`` (``method``) before ``tx_select``."""
    return ConfigurationError(
        f"channel {channel} is not transactional: call tx_select() before {method}"
    )


class Transactions:
    """The transaction methods of :class:`~leveret.amqp.Channel` (mixed into it)."""

    number: int
    publisher_confirms: bool
    _state: ChannelState
    _close_reason: BaseException | None
    _acks: AckWindow
    _transactional: bool  # tx_select was called (a robust channel reopens in tx mode)
    _tx_window: AckWindow | None  # the incarnation the transaction began in

    # The channel's own (see Channel): send a method and wait for its reply, once
    # open or as is; wait until open.
    _ready_call: Callable[[str, tuple[str, ...]], Awaitable[Method]]
    _call: Callable[[str, tuple[str, ...]], Awaitable[Method]]
    _ensure_open: Callable[[], Awaitable[None]]

    async def tx_select(self) -> None:
        """Make the channel transactional: from now on its publishes and acks take
        effect only at :meth:`tx_commit`, all together (or none at
        :meth:`tx_rollback`). Idempotent. A robust channel stays transactional
        across reopens.

        RabbitMQ makes a transaction atomic for the queues of one node; it is not
        a distributed transaction, and a commit is slow (the broker syncs it).

        Raises:
            ConfigurationError: the channel confirms publishes (a channel is in
                confirm mode or in transaction mode, never both: RabbitMQ closes it
                with 406); open it with ``publisher_confirms=False``.
            ChannelClosedError: the channel is closed.
        """
        if self.publisher_confirms:
            raise transactions_refused(self.number)
        await self._ready_call("tx.select", ("tx.select-ok",))
        self._transactional = True
        self._tx_window = self._acks

    async def tx_commit(self) -> None:
        """Commit what was published and acked on the channel since the last commit
        or rollback; a new transaction begins at once.

        Acks are flushed first, so every ack made before this call is part of the
        transaction. A transaction lives no longer than the channel it began on:
        if the channel closed meanwhile (a robust channel reopens, still
        transactional), its work is lost and this raises; whatever was done since
        the reopen is rolled back too, so that redoing the whole transaction starts
        clean.

        Raises:
            ConfigurationError: :meth:`tx_select` was never called.
            ChannelClosedError: the channel closed since the transaction began
                (nothing of it was committed), or closed during the commit (the
                broker may or may not have committed: the cause is chained).
            BrokerError: the broker refused the commit (the channel is closed).
        """
        await self._end_transaction("tx.commit")

    async def tx_rollback(self) -> None:
        """Discard what was published and acked since the last commit or rollback.

        Deliveries whose acks are rolled back stay unacked (and cannot be acked
        again: they count as settled here) until the channel closes, when the
        broker requeues them.

        Raises:
            ConfigurationError: :meth:`tx_select` was never called.
            ChannelClosedError: the channel closed since the transaction began.
        """
        await self._end_transaction("tx.rollback")

    async def _end_transaction(self, method: str) -> None:
        if not self._transactional:
            raise not_transactional(self.number, method)
        if self._state is not ChannelState.OPEN:
            await self._ensure_open()
        if self._tx_window is not self._acks:
            # Reopened since the transaction began: the broker dropped the old life's
            # work; what the new life did is no part of a whole, so drop it too.
            self._tx_window = self._acks
            await self._call("tx.rollback", ("tx.rollback-ok",))
            raise ChannelClosedError(
                f"channel {self.number} closed during the transaction, which is lost: "
                f"nothing of it was committed ({self._close_reason or 'reopened since'})"
            ) from self._close_reason
        self._acks.flush()  # coalesced acks would otherwise follow the commit
        try:
            await self._call(method, (f"{method}-ok",))
        except BrokerError:
            raise
        except AMQPError as exc:
            raise ChannelClosedError(
                f"channel {self.number} closed during {method}: whether the broker "
                f"completed it is unknown ({exc})"
            ) from exc
