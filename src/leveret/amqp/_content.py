"""The frames of one channel incarnation: methods dispatched, content assembled.

:class:`ChannelFrames` is what the protocol calls for each frame of a channel.
The per-message methods are recognised by their id without the generic
decoder: ``basic.deliver`` starts a delivery, ``basic.ack``/``basic.nack`` go to
the confirm window. A content header and its body frames complete a delivery
(handed straight to its consumer), a returned message or a ``basic.get``
result. Every other method goes to the channel.
"""

from __future__ import annotations

import logging
import struct
from typing import TYPE_CHECKING, Any, Final

from ..exceptions import ProtocolError
from ._codec import decode_method
from ._frames import (
    BASIC_ACK,
    BASIC_DELIVER,
    BASIC_NACK,
    Properties,
    decode_content_header,
    decode_deliver,
    decode_tag_and_bits,
)
from ._message import Delivery, ReturnedMessage

if TYPE_CHECKING:
    from ._acks import AckWindow
    from ._channel import Channel
    from ._confirms import ConfirmWindow
    from ._consumer import Consumer
    from ._tasks import TaskOwner

log = logging.getLogger("leveret.amqp")

_NONE: Final = 0
_DELIVER: Final = 1
_RETURN: Final = 2
_GET: Final = 3

_method_id = struct.Struct(">I").unpack_from
#: basic.ack and basic.nack: method id, delivery tag, one octet of bits.
_CONFIRM_SIZE: Final = 13


class ChannelFrames:
    """The protocol's handler for one channel incarnation (see the module docstring)."""

    __slots__ = (
        "_acks",
        "_channel",
        "_chunks",
        "_confirms",
        "_consumers",
        "_kind",
        "_meta",
        "_number",
        "_props",
        "_received",
        "_size",
        "_tasks",
    )

    def __init__(
        self,
        channel: Channel,
        consumers: dict[str, Consumer],
        acks: AckWindow,
        confirms: ConfirmWindow,
        tasks: TaskOwner,
    ) -> None:
        self._channel = channel
        self._number = channel.number
        self._consumers = consumers
        self._acks = acks
        self._confirms = confirms
        self._tasks = tasks
        self._kind = _NONE
        self._meta: Any = None
        self._props: Properties | None = None
        self._size = 0
        self._chunks: list[bytes] = []
        self._received = 0

    def on_method(self, buf: bytes, start: int, end: int) -> None:
        if end - start < 4:
            raise ProtocolError(
                f"method frame of {end - start} bytes on channel {self._number} (4 at least)"
            )
        (method_id,) = _method_id(buf, start)
        if method_id == BASIC_DELIVER:
            self._kind = _DELIVER
            try:
                self._meta = decode_deliver(buf, start + 4, end)
            except (IndexError, ValueError, struct.error) as exc:
                raise ProtocolError(
                    f"malformed basic.deliver on channel {self._number}: {exc}"
                ) from None
        elif method_id in (BASIC_ACK, BASIC_NACK):
            if end - start != _CONFIRM_SIZE:
                raise ProtocolError(f"confirm of {end - start} bytes on channel {self._number}")
            tag, bits = decode_tag_and_bits(buf, start + 4)
            self._confirms.confirmed(tag, bool(bits & 1), method_id == BASIC_ACK)
        else:
            method = decode_method(buf, start, end)
            if method.name == "basic.return":  # the returned message follows
                self._kind = _RETURN
                self._meta = method.args
                return
            if method.name == "basic.get-ok":  # the fetched message follows
                self._kind = _GET
                self._meta = method.args
            self._channel._on_method(method)

    def on_header(self, buf: bytes, start: int, end: int) -> None:
        if self._kind == _NONE:
            raise ProtocolError(f"content header on channel {self._number} without a method")
        # A slice: a truncated property list then fails to decode instead of reading on
        # into the next frame (the data_received caller maps the error).
        try:
            size, props = decode_content_header(buf[start:end])
        except (IndexError, ValueError, struct.error) as exc:
            raise ProtocolError(
                f"malformed content header on channel {self._number}: {exc}"
            ) from None
        if size == 0:
            self._complete(props, b"")
        else:
            self._props = props
            self._size = size
            self._received = 0
            self._chunks = []

    def on_body(self, body: bytes) -> None:
        props = self._props
        if props is None:
            raise ProtocolError(f"content body on channel {self._number} without a header")
        received = self._received + len(body)
        if received < self._size:
            self._chunks.append(body)
            self._received = received
            return
        if received > self._size:
            raise ProtocolError(
                f"content body on channel {self._number} is {received} bytes, its header "
                f"announced {self._size}"
            )
        if self._chunks:
            self._chunks.append(body)
            body = b"".join(self._chunks)
            self._chunks = []
        self._props = None
        if self._kind == _DELIVER:  # the hot path, one call shorter
            self._kind = _NONE
            self._deliver(props, body)
        else:
            self._complete(props, body)

    def _complete(self, props: Properties, body: bytes) -> None:
        kind = self._kind
        self._kind = _NONE
        if kind == _DELIVER:
            self._deliver(props, body)
        elif kind == _RETURN:
            args = self._meta  # of the basic.return
            returned = ReturnedMessage(
                args["reply_code"],
                args["reply_text"],
                args["exchange"],
                args["routing_key"],
                body,
                props,
            )
            self._channel._on_return(returned)
        else:
            self._channel._on_get(self._meta, props, body)

    def _deliver(self, props: Properties, body: bytes) -> None:
        consumer_tag, tag, redelivered, exchange, routing_key = self._meta
        consumer = self._consumers.get(consumer_tag)
        if consumer is None:
            log.error(
                "delivery %d for unknown consumer %r on channel %d",
                tag,
                consumer_tag,
                self._number,
            )
            return
        no_ack = consumer.no_ack
        if consumer.cancelled:
            if not no_ack:
                self._acks.requeue(tag)
            return
        if not no_ack:
            self._acks.unsettled.append(tag)
        # Positional: this line runs once per message (keywords cost twice as much).
        delivery = Delivery(
            self._acks,
            body,
            props,
            tag,
            exchange,
            routing_key,
            redelivered,
            consumer_tag,
            no_ack,
        )
        self._tasks.call(consumer.callback, delivery)
