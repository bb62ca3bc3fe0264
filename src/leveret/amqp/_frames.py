"""The per-message frames, packed and parsed by hand: publish, deliver, ack, nack,
reject, and basic content properties.

Everything else goes through the generic codec in :mod:`._codec`; this module
exists because these frames are built or read once per message, where a
generic codec's loops and dicts would cost more than the broker's own work.
"""

from __future__ import annotations

import datetime
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypedDict

from ..exceptions import ConfigurationError, ProtocolError
from ._codec import (
    FRAME_BODY,
    FRAME_END,
    FRAME_END_OCTET,
    FRAME_HEADER,
    FRAME_HEADER_STRUCT,
    FRAME_METHOD,
    FieldTable,
    decode_table,
    encode_shortstr,
    encode_table,
)

_u16 = struct.Struct(">H")
_u64 = struct.Struct(">Q")
_content_header = struct.Struct(">BHIHHQ")
_body_frame_header = FRAME_HEADER_STRUCT
_method_with_tag = struct.Struct(">BHIIQBB")
_tag_and_bits = struct.Struct(">QB")

# Method ids as one 32-bit number: class_id << 16 | method_id.
BASIC_DELIVER = (60 << 16) | 60
BASIC_ACK = (60 << 16) | 80
BASIC_NACK = (60 << 16) | 120
BASIC_REJECT = (60 << 16) | 90
_PUBLISH_PREFIX = b"\x00\x3c\x00\x28\x00\x00"  # basic.publish, reserved short

_CONTENT_TYPE = 0x8000
_CONTENT_ENCODING = 0x4000
_HEADERS = 0x2000
_DELIVERY_MODE = 0x1000
_PRIORITY = 0x0800
_CORRELATION_ID = 0x0400
_REPLY_TO = 0x0200
_EXPIRATION = 0x0100
_MESSAGE_ID = 0x0080
_TIMESTAMP = 0x0040
_TYPE = 0x0020
_USER_ID = 0x0010
_APP_ID = 0x0008
_CLUSTER_ID = 0x0004

_PROPERTY_NAMES = (
    "content_type",
    "content_encoding",
    "headers",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "timestamp",
    "type",
    "user_id",
    "app_id",
    "cluster_id",
)


class PropertyValues(TypedDict, total=False):
    """The content properties as keywords, as :meth:`Channel.publish` takes them."""

    content_type: str | None
    content_encoding: str | None
    headers: FieldTable | None
    delivery_mode: int | None
    priority: int | None
    correlation_id: str | None
    reply_to: str | None
    expiration: str | int | None
    message_id: str | None
    timestamp: int | float | None
    type: str | None
    user_id: str | None
    app_id: str | None


class Properties:
    """The basic-class content properties of a message.

    Every attribute is ``None`` when the message does not carry it.
    ``expiration`` is the per-message TTL in milliseconds, as AMQP carries it
    (a string; an ``int`` is accepted when publishing). ``timestamp`` is whole
    seconds since the epoch.
    """

    content_type: str | None = None
    content_encoding: str | None = None
    headers: dict[str, Any] | None = None
    delivery_mode: int | None = None
    priority: int | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    expiration: str | None = None
    message_id: str | None = None
    timestamp: int | None = None
    type: str | None = None
    user_id: str | None = None
    app_id: str | None = None
    cluster_id: str | None = None

    def __init__(
        self,
        *,
        content_type: str | None = None,
        content_encoding: str | None = None,
        headers: FieldTable | None = None,
        delivery_mode: int | None = None,
        priority: int | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        expiration: str | int | None = None,
        message_id: str | None = None,
        timestamp: int | float | datetime.datetime | None = None,
        type: str | None = None,
        user_id: str | None = None,
        app_id: str | None = None,
    ) -> None:
        values = locals()
        for name in _PROPERTY_NAMES[:-1]:
            value = values[name]
            if value is not None:
                setattr(self, name, value)
        if headers is not None:
            self.headers = dict(headers)
        if expiration is not None:
            self.expiration = str(expiration)
        if timestamp is not None:
            self.timestamp = _seconds(timestamp)

    def replace(self, **changes: Any) -> Properties:
        """A copy with some properties changed (``None`` removes one)."""
        copy = Properties.__new__(Properties)
        copy.__dict__.update(self.__dict__)
        for name, value in Properties(**changes).__dict__.items():
            setattr(copy, name, value)
        for name, value in changes.items():
            if value is None:
                copy.__dict__.pop(name, None)
        return copy

    @classmethod
    def decode(cls, data: bytes) -> Properties:
        """Properties from their encoding (what :meth:`encode` returns)."""
        return decode_properties(data, 0)

    def as_dict(self) -> dict[str, Any]:
        """The properties that are set, by name."""
        return {name: getattr(self, name) for name in _PROPERTY_NAMES if name in self.__dict__}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Properties) and self.as_dict() == other.as_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items())
        return f"Properties({fields})"

    def encode(self) -> bytes:
        """The property flags and list, as they follow the content header."""
        return encode_properties(
            self.content_type,
            self.content_encoding,
            self.headers,
            self.delivery_mode,
            self.priority,
            self.correlation_id,
            self.reply_to,
            self.expiration,
            self.message_id,
            self.timestamp,
            self.type,
            self.user_id,
            self.app_id,
            self.cluster_id,
        )


def _seconds(value: int | float | datetime.datetime) -> int:
    if isinstance(value, datetime.datetime):
        return int(value.timestamp())
    return int(value)


def encode_properties(
    content_type: str | None = None,
    content_encoding: str | None = None,
    headers: FieldTable | None = None,
    delivery_mode: int | None = None,
    priority: int | None = None,
    correlation_id: str | None = None,
    reply_to: str | None = None,
    expiration: str | int | None = None,
    message_id: str | None = None,
    timestamp: int | float | datetime.datetime | None = None,
    type: str | None = None,
    user_id: str | None = None,
    app_id: str | None = None,
    cluster_id: str | None = None,
) -> bytes:
    """Pack property flags and values.

    Raises:
        ConfigurationError: a string is longer than 255 bytes or a header
            value has no AMQP type (the message names the property).
    """
    flags = 0
    parts = [b""]
    if content_type is not None:
        flags |= _CONTENT_TYPE
        parts.append(encode_shortstr(content_type, "content_type"))
    if content_encoding is not None:
        flags |= _CONTENT_ENCODING
        parts.append(encode_shortstr(content_encoding, "content_encoding"))
    if headers is not None:
        flags |= _HEADERS
        parts.append(encode_table(headers))
    if delivery_mode is not None:
        flags |= _DELIVERY_MODE
        parts.append(bytes((delivery_mode,)))
    if priority is not None:
        flags |= _PRIORITY
        parts.append(bytes((priority,)))
    if correlation_id is not None:
        flags |= _CORRELATION_ID
        parts.append(encode_shortstr(correlation_id, "correlation_id"))
    if reply_to is not None:
        flags |= _REPLY_TO
        parts.append(encode_shortstr(reply_to, "reply_to"))
    if expiration is not None:
        flags |= _EXPIRATION
        parts.append(encode_shortstr(str(expiration), "expiration"))
    if message_id is not None:
        flags |= _MESSAGE_ID
        parts.append(encode_shortstr(message_id, "message_id"))
    if timestamp is not None:
        flags |= _TIMESTAMP
        parts.append(_u64.pack(_seconds(timestamp)))
    if type is not None:
        flags |= _TYPE
        parts.append(encode_shortstr(type, "type"))
    if user_id is not None:
        flags |= _USER_ID
        parts.append(encode_shortstr(user_id, "user_id"))
    if app_id is not None:
        flags |= _APP_ID
        parts.append(encode_shortstr(app_id, "app_id"))
    if cluster_id is not None:
        flags |= _CLUSTER_ID
        parts.append(encode_shortstr(cluster_id, "cluster_id"))
    parts[0] = _u16.pack(flags)
    return b"".join(parts)


def decode_properties(buf: bytes, offset: int) -> Properties:
    """Read property flags and values starting at ``offset``.

    Raises:
        ProtocolError: the header table is malformed.
        IndexError, struct.error: the frame is truncated (the caller maps these).
    """
    props = Properties.__new__(Properties)
    (flags,) = _u16.unpack_from(buf, offset)
    offset += 2
    if flags & _CONTENT_TYPE:
        end = offset + 1 + buf[offset]
        props.content_type = buf[offset + 1 : end].decode("utf-8", "replace")
        offset = end
    if flags & _CONTENT_ENCODING:
        end = offset + 1 + buf[offset]
        props.content_encoding = buf[offset + 1 : end].decode("utf-8", "replace")
        offset = end
    if flags & _HEADERS:
        props.headers, offset = decode_table(buf, offset)
    if flags & _DELIVERY_MODE:
        props.delivery_mode = buf[offset]
        offset += 1
    if flags & _PRIORITY:
        props.priority = buf[offset]
        offset += 1
    if flags & _CORRELATION_ID:
        end = offset + 1 + buf[offset]
        props.correlation_id = buf[offset + 1 : end].decode("utf-8", "replace")
        offset = end
    if flags & _REPLY_TO:
        end = offset + 1 + buf[offset]
        props.reply_to = buf[offset + 1 : end].decode("utf-8", "replace")
        offset = end
    if flags & _EXPIRATION:
        end = offset + 1 + buf[offset]
        props.expiration = buf[offset + 1 : end].decode("utf-8", "replace")
        offset = end
    if flags & _MESSAGE_ID:
        end = offset + 1 + buf[offset]
        props.message_id = buf[offset + 1 : end].decode("utf-8", "replace")
        offset = end
    if flags & _TIMESTAMP:
        (props.timestamp,) = _u64.unpack_from(buf, offset)
        offset += 8
    if flags & _TYPE:  # every RPC call and reply has one
        end = offset + 1 + buf[offset]
        props.type = buf[offset + 1 : end].decode("utf-8", "replace")
        offset = end
    if flags & 0x001C:
        _decode_rare_properties(props, flags, buf, offset)
    return props


def _decode_rare_properties(props: Properties, flags: int, buf: bytes, offset: int) -> None:
    for flag, name in (
        (_USER_ID, "user_id"),
        (_APP_ID, "app_id"),
        (_CLUSTER_ID, "cluster_id"),
    ):
        if flags & flag:
            end = offset + 1 + buf[offset]
            setattr(props, name, buf[offset + 1 : end].decode("utf-8", "replace"))
            offset = end


#: The parts of :func:`id_properties`' blocks around their ids: (prefix with the flags,
#: between the correlation id and the message id, after the message id), by the
#: properties that stay the same and which ids there are.
_ID_TEMPLATES: dict[tuple[Any, ...], tuple[bytes, bytes, bytes]] = {}


def id_properties(
    content_type: str | None,
    delivery_mode: int | None,
    message_id: str | None,
    correlation_id: str | None = None,
    reply_to: str | None = None,
    type: str | None = None,
) -> bytes:
    """``encode_properties`` of these (what a task, a call and a reply carry), with
    everything but the two ids encoded once per combination: a block costs the
    copies of its ids.

    Raises:
        ConfigurationError: as :func:`encode_properties`.
    """
    key = (content_type, delivery_mode, reply_to, type, correlation_id is None, message_id is None)
    template = _ID_TEMPLATES.get(key)
    if template is None:
        template = _id_template(content_type, delivery_mode, reply_to, type, key)
    prefix, middle, suffix = template
    if correlation_id is not None:
        prefix += encode_shortstr(correlation_id, "correlation_id")
    if message_id is not None:
        return prefix + middle + encode_shortstr(message_id, "message_id") + suffix
    return prefix + middle + suffix


def _id_template(
    content_type: str | None,
    delivery_mode: int | None,
    reply_to: str | None,
    type: str | None,
    key: tuple[Any, ...],
) -> tuple[bytes, bytes, bytes]:
    head = encode_properties(content_type, delivery_mode=delivery_mode)
    middle = encode_properties(reply_to=reply_to)
    tail = encode_properties(type=type)
    (flags,) = _u16.unpack_from(head)
    flags |= _u16.unpack_from(middle)[0] | _u16.unpack_from(tail)[0]
    if not key[4]:
        flags |= _CORRELATION_ID
    if not key[5]:
        flags |= _MESSAGE_ID
    template = (_u16.pack(flags) + head[2:], middle[2:], tail[2:])
    if len(_ID_TEMPLATES) >= 256:  # content types and reply queues are few: stay bounded
        _ID_TEMPLATES.clear()
    _ID_TEMPLATES[key] = template
    return template


#: The properties encoded before the message id (the rest come after it).
_BEFORE_MESSAGE_ID = frozenset(_PROPERTY_NAMES[: _PROPERTY_NAMES.index("message_id")])


def property_blocks(
    count: int,
    constant: dict[str, Any],
    message_ids: Sequence[str] | None = None,
    headers: Sequence[FieldTable | None] | None = None,
) -> list[bytes]:
    """``count`` encoded property blocks, each with the properties of ``constant``
    (:func:`encode_properties`' keywords) and, when given, the ``i``-th of
    ``message_ids`` and ``headers``. What every block shares is encoded once: a block
    costs the copy of its message id.

    Raises:
        ConfigurationError: as :func:`encode_properties`, for any of them.
    """
    if headers is not None:  # each its own table: encoded in full
        ids: Sequence[str | None] = [None] * count if message_ids is None else message_ids
        return [
            encode_properties(**{**constant, "headers": table, "message_id": message_id})
            for table, message_id in zip(headers, ids, strict=True)
        ]
    if message_ids is None:
        return [encode_properties(**constant)] * count
    before = {k: v for k, v in constant.items() if k in _BEFORE_MESSAGE_ID}
    after = {k: v for k, v in constant.items() if k not in _BEFORE_MESSAGE_ID}
    head, tail = encode_properties(**before), encode_properties(**after)
    flags = _u16.unpack_from(head)[0] | _u16.unpack_from(tail)[0] | _MESSAGE_ID
    prefix, suffix = _u16.pack(flags) + head[2:], tail[2:]
    return [
        prefix + encode_shortstr(message_id, "message_id") + suffix for message_id in message_ids
    ]


def publish_method_frame(channel: int, exchange: str, routing_key: str, mandatory: bool) -> bytes:
    """The ``basic.publish`` method frame (cacheable per destination)."""
    payload = (
        _PUBLISH_PREFIX
        + encode_shortstr(exchange, "exchange name")
        + encode_shortstr(routing_key, "routing key")
        + (b"\x01" if mandatory else b"\x00")
    )
    return _body_frame_header.pack(FRAME_METHOD, channel, len(payload)) + payload + FRAME_END


def message_frames(
    method: bytes, channel: int, properties: bytes, body: bytes, frame_max: int
) -> bytes | Iterator[bytes]:
    """The publish method frame, content header and body frames (split to fit
    ``frame_max``): joined for one write, or, for a body of more than one frame,
    made one frame at a time from views of the body as the socket takes them
    (the body is never copied whole).

    Raises:
        ConfigurationError: the properties do not fit in one frame (the content
            header cannot be split, and the broker would close the connection).
    """
    chunk = frame_max - 8
    if 12 + len(properties) > chunk:
        raise ConfigurationError(
            f"the message's properties are {len(properties)} bytes (mostly headers?) and do "
            f"not fit in one frame of {frame_max} bytes"
        )
    header = _content_header.pack(FRAME_HEADER, channel, 12 + len(properties), 60, 0, len(body))
    if len(body) <= chunk:
        if not body:
            return b"".join((method, header, properties, FRAME_END))
        return b"".join(
            (
                method,
                header,
                properties,
                FRAME_END,
                _body_frame_header.pack(FRAME_BODY, channel, len(body)),
                body,
                FRAME_END,
            )
        )
    return _frames_of(b"".join((method, header, properties, FRAME_END)), channel, body, chunk)


def _frames_of(first: bytes, channel: int, body: bytes, chunk: int) -> Iterator[bytes]:
    yield first
    view = memoryview(body)
    for start in range(0, len(body), chunk):
        piece = view[start : start + chunk]
        yield b"".join((_body_frame_header.pack(FRAME_BODY, channel, len(piece)), piece, FRAME_END))


def ack_frame(channel: int, delivery_tag: int, multiple: bool) -> bytes:
    return _method_with_tag.pack(
        FRAME_METHOD, channel, 13, BASIC_ACK, delivery_tag, multiple, FRAME_END_OCTET
    )


def nack_frame(channel: int, delivery_tag: int, multiple: bool, requeue: bool) -> bytes:
    bits = (1 if multiple else 0) | (2 if requeue else 0)
    return _method_with_tag.pack(
        FRAME_METHOD, channel, 13, BASIC_NACK, delivery_tag, bits, FRAME_END_OCTET
    )


def reject_frame(channel: int, delivery_tag: int, requeue: bool) -> bytes:
    return _method_with_tag.pack(
        FRAME_METHOD, channel, 13, BASIC_REJECT, delivery_tag, requeue, FRAME_END_OCTET
    )


#: ``(delivery_tag, bits)`` of basic.ack/nack, from the offset after the method id
#: (the struct's own method: no Python frame per confirm).
decode_tag_and_bits: Callable[[bytes, int], tuple[Any, ...]] = _tag_and_bits.unpack_from


def decode_deliver(buf: bytes, offset: int, end: int) -> tuple[str, int, bool, str, str]:
    """consumer tag, delivery tag, redelivered, exchange, routing key of basic.deliver
    (its arguments from ``offset`` up to ``end``).

    Raises:
        ProtocolError: the arguments run past ``end``.
        IndexError, struct.error, UnicodeDecodeError: the frame is truncated or
            garbled (the caller maps these).
    """
    stop = offset + 1 + buf[offset]
    consumer_tag = buf[offset + 1 : stop].decode()
    delivery_tag, redelivered = _tag_and_bits.unpack_from(buf, stop)
    offset = stop + 9
    stop = offset + 1 + buf[offset]
    exchange = buf[offset + 1 : stop].decode()
    offset = stop + 1 + buf[stop]
    if offset > end:
        raise ProtocolError("basic.deliver arguments run past the end of the frame")
    routing_key = buf[stop + 1 : offset].decode("utf-8", "replace")
    return consumer_tag, delivery_tag, bool(redelivered), exchange, routing_key


def decode_content_header(payload: bytes) -> tuple[int, Properties]:
    """Body size and properties from a content header payload (the frame's alone).

    Raises:
        ProtocolError: the payload is too short or its header table is malformed.
        IndexError, struct.error: the property list is truncated (the caller maps these).
    """
    if len(payload) < 14:
        raise ProtocolError(f"content header of {len(payload)} bytes (14 at least)")
    (body_size,) = _u64.unpack_from(payload, 4)
    return body_size, decode_properties(payload, 12)
