"""The ack window of one channel incarnation: settling deliveries, coalescing acks.

Acks are not written one by one: :meth:`AckWindow.settle` queues them, and just
before the protocol's next flush :meth:`AckWindow.flush` writes one ``multiple``
ack for the longest prefix of deliveries that are all settled (a ``multiple``
ack over a delivery nobody settled would acknowledge it behind its owner's back),
then single acks for the rest. Nacks and rejects go out at once, after the acks
pending before them; the channel flushes pending acks before it writes any other
frame too (a publish, a declare, a cancel, a close): frames of a channel leave in
the order their causes happened, so an ack is never overtaken by a frame the broker
closes the channel over (which would lose the ack and redeliver the message).

A window lives as long as one broker-side life of its channel: when the channel
closes or reopens, deliveries of the old life find their window closed (the
broker has requeued them) and refuse to be settled.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Final

from ._frames import ack_frame, nack_frame, reject_frame
from ._message import SettleKind

if TYPE_CHECKING:
    from ._consumer import ConsumingChannel
    from ._protocol import FrameProtocol

_ACK_PENDING: Final = "ack-pending"  # acked by the user, frame not written yet
_SETTLED: Final = "settled"  # frame written


class AckWindow:
    """Unsettled deliveries of one channel incarnation (the :class:`Settler` of the
    AMQP channel), written through the protocol of that incarnation."""

    __slots__ = (
        "_flush_scheduled",
        "_number",
        "_protocol",
        "_settled",
        "channel",
        "open",
        "pending",
        "unsettled",
    )

    def __init__(self, channel: ConsumingChannel, protocol: FrameProtocol) -> None:
        self.channel = channel
        self._number = channel.number
        self._protocol = protocol
        #: True while the channel is open on this incarnation (see ``Settler.open``).
        self.open = False
        #: Delivery tags in arrival order that the broker still holds for us.
        self.unsettled: deque[int] = deque()
        self._settled: dict[int, str] = {}
        #: Delivery tags acked by their owner whose ack is not written yet.
        self.pending: list[int] = []
        self._flush_scheduled = False

    def settle(self, delivery_tag: int, kind: SettleKind, requeue: bool) -> None:
        if kind == "ack":
            self._settled[delivery_tag] = _ACK_PENDING
            self.pending.append(delivery_tag)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self._protocol.before_flush(self.flush)
            return
        if self.pending:
            self.flush()
        self._settled[delivery_tag] = _SETTLED
        if kind == "nack":
            self._protocol.write(nack_frame(self._number, delivery_tag, False, requeue))
        else:
            self._protocol.write(reject_frame(self._number, delivery_tag, requeue))

    def requeue(self, delivery_tag: int) -> None:
        """Give a delivery back at once (it arrived for a consumer its owner cancelled)."""
        if self.pending:
            self.flush()
        self.unsettled.append(delivery_tag)
        self._settled[delivery_tag] = _SETTLED
        self._protocol.write(nack_frame(self._number, delivery_tag, False, True))

    def flush(self) -> None:
        """Write pending acks: one ``multiple`` ack covers the fully settled prefix.

        Once the window is closed, pending acks are dropped: the broker has
        requeued those deliveries already.
        """
        self._flush_scheduled = False
        pending = self.pending
        if not pending:
            return
        if not self.open:
            pending.clear()
            return
        unsettled = self.unsettled
        settled = self._settled
        prefix_ack = 0
        while unsettled:
            kind = settled.get(unsettled[0])
            if kind is None:
                break
            tag = unsettled.popleft()
            del settled[tag]
            if kind is _ACK_PENDING:
                prefix_ack = tag
        write = self._protocol.write
        if prefix_ack:
            write(ack_frame(self._number, prefix_ack, True))
        for tag in pending:
            if tag > prefix_ack:
                write(ack_frame(self._number, tag, False))
                settled[tag] = _SETTLED
        pending.clear()


if TYPE_CHECKING:
    from ._message import Settler

    _settler: type[Settler] = AckWindow  # the seam Delivery settles through
