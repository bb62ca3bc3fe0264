"""AMQP 0-9-1 value codecs: field tables, and every method from one spec table.

Field tables follow RabbitMQ's reading of the spec (its errata): ``s`` is a
signed 16-bit integer, ``x`` a byte array, ``u``/``i`` the unsigned 16/32-bit
integers. Python values map as: ``bool`` -> ``t``, ``int`` -> ``I`` or ``l``
(``L`` from 2**63 up), ``float`` -> ``d``, ``str`` -> ``S``, ``bytes`` -> ``x``,
``Decimal`` -> ``D``, ``datetime`` -> ``T``, mappings -> ``F``, lists and tuples ->
``A``, ``None`` -> ``V``.

Decoding never fails on a value RabbitMQ let through, because a message that
cannot be decoded would take down the connection of every consumer it reaches: a
timestamp past what ``datetime`` holds decodes as its number of seconds, and
tables and arrays nested deeper than :data:`MAX_DEPTH` as their encoded bytes.

Methods off the hot path (handshake, declares, qos, close ...) are encoded and
decoded generically from :data:`METHODS`; the per-message ones (publish,
deliver, ack, nack) are also packed by hand in :mod:`._frames`.
"""

from __future__ import annotations

import datetime
import decimal
import math
import struct
from collections.abc import Mapping
from typing import Any, NamedTuple

from ..exceptions import ConfigurationError, ProtocolError

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END_OCTET = 0xCE
FRAME_END = bytes((FRAME_END_OCTET,))
FRAME_HEADER_STRUCT = struct.Struct(">BHI")

_u8 = struct.Struct(">B")
_i8 = struct.Struct(">b")
_u16 = struct.Struct(">H")
_i16 = struct.Struct(">h")
_u32 = struct.Struct(">I")
_i32 = struct.Struct(">i")
_u64 = struct.Struct(">Q")
_i64 = struct.Struct(">q")
_f32 = struct.Struct(">f")
_f64 = struct.Struct(">d")

FieldTable = Mapping[str, Any]

#: Tables and arrays nested deeper than this decode as their encoded bytes
#: (length prefix included): decoding recurses, and Python's stack is finite.
MAX_DEPTH = 100


def encode_shortstr(value: str, what: str = "short string") -> bytes:
    """Length-prefixed (one octet) UTF-8 string; longer than 255 bytes is an error."""
    raw = value.encode()
    if len(raw) > 255:
        raise ConfigurationError(f"{what} is {len(raw)} bytes long; AMQP allows at most 255")
    return _u8.pack(len(raw)) + raw


def encode_longstr(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else bytes(value)
    return _u32.pack(len(raw)) + raw


def encode_table(table: FieldTable | None) -> bytes:
    """Encode a mapping as an AMQP field table (with its length prefix).

    Raises:
        ConfigurationError: a key is too long or a value has no AMQP type;
            the message names the key.
    """
    if not table:
        return b"\x00\x00\x00\x00"
    parts = []
    for key, value in table.items():
        if not isinstance(key, str):
            raise ConfigurationError(f"field table key {key!r} is not a string")
        parts.append(encode_shortstr(key, f"field table key {key[:40]!r}"))
        try:
            parts.append(encode_field_value(value))
        except ConfigurationError as exc:
            raise ConfigurationError(f"field table key {key!r}: {exc}") from None
    body = b"".join(parts)
    return _u32.pack(len(body)) + body


def encode_field_value(value: Any) -> bytes:
    """Encode one value with its type tag (see the module docstring for the mapping)."""
    if isinstance(value, bool):
        return b"t\x01" if value else b"t\x00"
    if isinstance(value, int):
        if -(2**31) <= value < 2**31:
            return b"I" + _i32.pack(value)
        if -(2**63) <= value < 2**63:
            return b"l" + _i64.pack(value)
        if 0 <= value < 2**64:  # what an ``L`` decodes to must encode again
            return b"L" + _u64.pack(value)
        raise ConfigurationError(f"integer {value} does not fit in 64 bits")
    if isinstance(value, str):
        return b"S" + encode_longstr(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            # RabbitMQ cannot hold them and closes the whole connection (541).
            raise ConfigurationError(f"{value} cannot be sent: RabbitMQ refuses NaN or infinity")
        return b"d" + _f64.pack(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return b"x" + encode_longstr(bytes(value))
    if value is None:
        return b"V"
    if isinstance(value, Mapping):
        return b"F" + encode_table(value)
    if isinstance(value, list | tuple):
        items = b"".join(encode_field_value(item) for item in value)
        return b"A" + _u32.pack(len(items)) + items
    if isinstance(value, decimal.Decimal):
        sign, digits, exponent = value.as_tuple()
        if not isinstance(exponent, int) or not -255 <= exponent <= 0:
            raise ConfigurationError(f"decimal {value} cannot be encoded (scale 0..255 only)")
        unscaled = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
        if not -(2**31) <= unscaled < 2**31:
            raise ConfigurationError(f"decimal {value} has more digits than 32 bits hold")
        return b"D" + _u8.pack(-exponent) + _i32.pack(unscaled)
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.UTC)
        seconds = int(value.timestamp())
        if seconds < 0:
            raise ConfigurationError(f"timestamp {value} is before 1970 (AMQP's are unsigned)")
        return b"T" + _u64.pack(seconds)
    raise ConfigurationError(f"{type(value).__name__} values cannot go in an AMQP field table")


def decode_table(buf: bytes, offset: int, depth: int = 0) -> tuple[dict[str, Any], int]:
    """Decode a field table at ``offset``; returns it and the offset after it.

    ``depth`` is how deep this table is nested in another (see :data:`MAX_DEPTH`).

    Raises:
        ProtocolError: the bytes are not a well-formed field table.
    """
    try:
        (length,) = _u32.unpack_from(buf, offset)
        offset += 4
        end = offset + length
        if end > len(buf):
            raise ProtocolError("field table runs past the end of its frame")
        table: dict[str, Any] = {}
        while offset < end:
            size = buf[offset]
            key = buf[offset + 1 : offset + 1 + size].decode("utf-8", "replace")
            table[key], offset = _decode_value(buf, offset + 1 + size, depth)
    except (struct.error, IndexError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"malformed field table: {exc}") from None
    if offset != end:
        raise ProtocolError("field table length does not match its contents")
    return table, end


def _decode_value(buf: bytes, offset: int, depth: int) -> tuple[Any, int]:
    kind = buf[offset]
    offset += 1
    if kind == 0x53:  # S
        (size,) = _u32.unpack_from(buf, offset)
        raw = buf[offset + 4 : offset + 4 + size]
        if len(raw) != size:
            raise ProtocolError("long string runs past the end of its table")
        try:
            return raw.decode(), offset + 4 + size
        except UnicodeDecodeError:
            return bytes(raw), offset + 4 + size
    if kind == 0x49:  # I
        return _i32.unpack_from(buf, offset)[0], offset + 4
    if kind == 0x74:  # t
        return buf[offset] != 0, offset + 1
    if kind in (0x46, 0x41) and depth >= MAX_DEPTH:  # F or A, too deep to recurse into
        (size,) = _u32.unpack_from(buf, offset)
        raw = bytes(buf[offset : offset + 4 + size])
        if len(raw) != 4 + size:
            raise ProtocolError("nested value runs past the end of its table")
        return raw, offset + 4 + size
    if kind == 0x46:  # F
        return decode_table(buf, offset, depth + 1)
    if kind == 0x41:  # A
        (size,) = _u32.unpack_from(buf, offset)
        offset += 4
        end = offset + size
        items = []
        while offset < end:
            item, offset = _decode_value(buf, offset, depth + 1)
            items.append(item)
        if offset != end:
            raise ProtocolError("field array length does not match its contents")
        return items, end
    if kind == 0x6C:  # l
        return _i64.unpack_from(buf, offset)[0], offset + 8
    if kind == 0x78:  # x
        (size,) = _u32.unpack_from(buf, offset)
        raw = bytes(buf[offset + 4 : offset + 4 + size])
        if len(raw) != size:
            raise ProtocolError("byte array runs past the end of its table")
        return raw, offset + 4 + size
    if kind == 0x64:  # d
        return _f64.unpack_from(buf, offset)[0], offset + 8
    if kind == 0x56:  # V
        return None, offset
    if kind == 0x54:  # T
        seconds = _u64.unpack_from(buf, offset)[0]
        try:
            return datetime.datetime.fromtimestamp(seconds, datetime.UTC), offset + 8
        except (ValueError, OverflowError, OSError):  # past the year 9999 or time_t
            return seconds, offset + 8
    if kind == 0x44:  # D
        scale = buf[offset]
        unscaled = _i32.unpack_from(buf, offset + 1)[0]
        return decimal.Decimal(unscaled).scaleb(-scale), offset + 5
    fixed = _FIXED_TYPES.get(kind)
    if fixed is None:
        raise ProtocolError(f"unknown field type {chr(kind)!r} in a field table")
    return fixed.unpack_from(buf, offset)[0], offset + fixed.size


_FIXED_TYPES = {
    ord("b"): _i8,
    ord("B"): _u8,
    ord("s"): _i16,
    ord("u"): _u16,
    ord("i"): _u32,
    ord("L"): _u64,
    ord("f"): _f32,
}


class Method(NamedTuple):
    """A decoded AMQP method: its dotted name and its arguments."""

    name: str
    args: dict[str, Any]


class MethodSpec(NamedTuple):
    name: str
    class_id: int
    method_id: int
    fields: tuple[tuple[str, str], ...]


def _spec(class_name: str, class_id: int, methods: str) -> list[MethodSpec]:
    """Build specs from ``"id name field:type field:type; ..."`` lines."""
    specs = []
    for line in methods.strip().split(";"):
        words = line.split()
        fields = tuple(tuple(word.split(":")) for word in words[2:])
        specs.append(MethodSpec(f"{class_name}.{words[1]}", class_id, int(words[0]), fields))  # type: ignore[arg-type]
    return specs


# Field types: octet short long longlong shortstr longstr bit table timestamp.
_CLOSE = "reply_code:short reply_text:shortstr class_id:short method_id:short"
_XBIND = "reserved_1:short destination:shortstr source:shortstr routing_key:shortstr"
_QBIND = "reserved_1:short queue:shortstr exchange:shortstr routing_key:shortstr"
METHODS: tuple[MethodSpec, ...] = tuple(
    _spec(
        "connection",
        10,
        "10 start version_major:octet version_minor:octet server_properties:table"
        " mechanisms:longstr locales:longstr;"
        "11 start-ok client_properties:table mechanism:shortstr response:longstr"
        " locale:shortstr;"
        "20 secure challenge:longstr; 21 secure-ok response:longstr;"
        "30 tune channel_max:short frame_max:long heartbeat:short;"
        "31 tune-ok channel_max:short frame_max:long heartbeat:short;"
        "40 open virtual_host:shortstr reserved_1:shortstr reserved_2:bit;"
        "41 open-ok reserved_1:shortstr;"
        f"50 close {_CLOSE}; 51 close-ok;"
        "60 blocked reason:shortstr; 61 unblocked;"
        "70 update-secret new_secret:longstr reason:shortstr; 71 update-secret-ok",
    )
    + _spec(
        "channel",
        20,
        "10 open reserved_1:shortstr; 11 open-ok reserved_1:longstr;"
        "20 flow active:bit; 21 flow-ok active:bit;"
        f"40 close {_CLOSE}; 41 close-ok",
    )
    + _spec(
        "exchange",
        40,
        "10 declare reserved_1:short exchange:shortstr type:shortstr passive:bit durable:bit"
        " auto_delete:bit internal:bit no_wait:bit arguments:table; 11 declare-ok;"
        "20 delete reserved_1:short exchange:shortstr if_unused:bit no_wait:bit; 21 delete-ok;"
        f"30 bind {_XBIND} no_wait:bit arguments:table; 31 bind-ok;"
        f"40 unbind {_XBIND} no_wait:bit arguments:table; 51 unbind-ok",
    )
    + _spec(
        "queue",
        50,
        "10 declare reserved_1:short queue:shortstr passive:bit durable:bit exclusive:bit"
        " auto_delete:bit no_wait:bit arguments:table;"
        "11 declare-ok queue:shortstr message_count:long consumer_count:long;"
        f"20 bind {_QBIND} no_wait:bit arguments:table; 21 bind-ok;"
        "30 purge reserved_1:short queue:shortstr no_wait:bit; 31 purge-ok message_count:long;"
        "40 delete reserved_1:short queue:shortstr if_unused:bit if_empty:bit no_wait:bit;"
        "41 delete-ok message_count:long;"
        f"50 unbind {_QBIND} arguments:table; 51 unbind-ok",
    )
    + _spec(
        "basic",
        60,
        "10 qos prefetch_size:long prefetch_count:short global_:bit; 11 qos-ok;"
        "20 consume reserved_1:short queue:shortstr consumer_tag:shortstr no_local:bit"
        " no_ack:bit exclusive:bit no_wait:bit arguments:table;"
        "21 consume-ok consumer_tag:shortstr;"
        "30 cancel consumer_tag:shortstr no_wait:bit; 31 cancel-ok consumer_tag:shortstr;"
        "40 publish reserved_1:short exchange:shortstr routing_key:shortstr mandatory:bit"
        " immediate:bit;"
        "50 return reply_code:short reply_text:shortstr exchange:shortstr routing_key:shortstr;"
        "60 deliver consumer_tag:shortstr delivery_tag:longlong redelivered:bit"
        " exchange:shortstr routing_key:shortstr;"
        "70 get reserved_1:short queue:shortstr no_ack:bit;"
        "71 get-ok delivery_tag:longlong redelivered:bit exchange:shortstr routing_key:shortstr"
        " message_count:long;"
        "72 get-empty reserved_1:shortstr;"
        "80 ack delivery_tag:longlong multiple:bit;"
        "90 reject delivery_tag:longlong requeue:bit;"
        "100 recover-async requeue:bit; 110 recover requeue:bit; 111 recover-ok;"
        "120 nack delivery_tag:longlong multiple:bit requeue:bit",
    )
    + _spec("confirm", 85, "10 select no_wait:bit; 11 select-ok")
    + _spec(
        "tx", 90, "10 select; 11 select-ok; 20 commit; 21 commit-ok; 30 rollback; 31 rollback-ok"
    )
)

METHODS_BY_NAME = {spec.name: spec for spec in METHODS}
METHODS_BY_ID = {(spec.class_id << 16) | spec.method_id: spec for spec in METHODS}
METHOD_NAMES_BY_ID = {key: spec.name for key, spec in METHODS_BY_ID.items()}

_DEFAULTS: dict[str, Any] = {
    "octet": 0,
    "short": 0,
    "long": 0,
    "longlong": 0,
    "timestamp": 0,
    "shortstr": "",
    "longstr": b"",
    "table": None,
}


def encode_method_frame(channel: int, name: str, **args: Any) -> bytes:
    """Encode the method ``name`` (e.g. ``"queue.declare"``) as a whole frame.

    Arguments not given take the spec's zero value (0, "", False, {}).
    """
    spec = METHODS_BY_NAME[name]
    parts = [_u16.pack(spec.class_id), _u16.pack(spec.method_id)]
    bits = 0
    nbits = 0
    for field, kind in spec.fields:
        if kind == "bit":
            if args.get(field):
                bits |= 1 << nbits
            nbits += 1
            continue
        if nbits:
            parts.append(_u8.pack(bits))
            bits = nbits = 0
        value = args.get(field, _DEFAULTS[kind])
        if kind == "shortstr":
            parts.append(encode_shortstr(value, field.replace("_", " ")))
        elif kind == "longstr":
            parts.append(encode_longstr(value))
        elif kind == "table":
            parts.append(encode_table(value))
        elif kind == "octet":
            parts.append(_u8.pack(value))
        elif kind == "short":
            parts.append(_u16.pack(value))
        elif kind == "long":
            parts.append(_u32.pack(value))
        else:
            parts.append(_u64.pack(value))
    if nbits:
        parts.append(_u8.pack(bits))
    payload = b"".join(parts)
    return FRAME_HEADER_STRUCT.pack(FRAME_METHOD, channel, len(payload)) + payload + FRAME_END


def decode_method(buf: bytes, start: int, end: int) -> Method:
    """Decode the method frame payload ``buf[start:end]``.

    Raises:
        ProtocolError: unknown method id or malformed arguments.
    """
    (method_id,) = _u32.unpack_from(buf, start)
    spec = METHODS_BY_ID.get(method_id)
    if spec is None:
        raise ProtocolError(f"unknown AMQP method {method_id >> 16}.{method_id & 0xFFFF}")
    args: dict[str, Any] = {}
    offset = start + 4
    bit = 8
    octet = 0
    try:
        for field, kind in spec.fields:
            if kind == "bit":
                if bit == 8:
                    octet = buf[offset]
                    offset += 1
                    bit = 0
                args[field] = bool(octet & (1 << bit))
                bit += 1
                continue
            bit = 8
            if kind == "shortstr":
                size = buf[offset]
                args[field] = buf[offset + 1 : offset + 1 + size].decode("utf-8", "replace")
                offset += 1 + size
            elif kind == "longstr":
                (size,) = _u32.unpack_from(buf, offset)
                args[field] = bytes(buf[offset + 4 : offset + 4 + size])
                offset += 4 + size
            elif kind == "table":
                args[field], offset = decode_table(buf, offset)
            elif kind == "octet":
                args[field] = buf[offset]
                offset += 1
            elif kind == "short":
                args[field] = _u16.unpack_from(buf, offset)[0]
                offset += 2
            elif kind == "long":
                args[field] = _u32.unpack_from(buf, offset)[0]
                offset += 4
            else:
                args[field] = _u64.unpack_from(buf, offset)[0]
                offset += 8
    except (struct.error, IndexError) as exc:
        raise ProtocolError(f"malformed {spec.name} frame: {exc}") from None
    if offset > end:
        raise ProtocolError(f"{spec.name} arguments run past the end of the frame")
    return Method(spec.name, args)


def method_name(class_id: int, method_id: int) -> str | None:
    """The dotted name of a method id (for error messages), or ``None``."""
    return METHOD_NAMES_BY_ID.get((class_id << 16) | method_id)
