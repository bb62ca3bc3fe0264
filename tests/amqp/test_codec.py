"""Our codec against pamqp, an independent implementation of the same spec."""

import datetime
import decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pamqp import commands, frame

from leveret.amqp import Properties
from leveret.amqp._codec import decode_method, decode_table, encode_method_frame, encode_table
from leveret.amqp._frames import (
    decode_content_header,
    encode_properties,
    id_properties,
    message_frames,
)
from leveret.exceptions import ConfigurationError, ProtocolError


def test_method_frames_match_pamqp_byte_for_byte() -> None:
    ours = encode_method_frame(
        3,
        "queue.declare",
        queue="jobs",
        durable=True,
        auto_delete=True,
        arguments={"x-queue-type": "classic", "x-single-active-consumer": True},
    )
    theirs = frame.marshal(
        commands.Queue.Declare(
            queue="jobs",
            durable=True,
            auto_delete=True,
            arguments={"x-queue-type": "classic", "x-single-active-consumer": True},
        ),
        3,
    )
    assert ours == theirs


def test_pamqp_decodes_our_integers_to_the_same_values() -> None:
    # We always send 32- or 64-bit integers; pamqp picks the smallest type. Both are valid.
    ours = encode_method_frame(
        1, "queue.declare", queue="q", arguments={"x-max-priority": 10, "x-expires": 2**40}
    )
    _, _, decoded = frame.unmarshal(ours)
    assert isinstance(decoded, commands.Queue.Declare)
    assert decoded.arguments == {"x-max-priority": 10, "x-expires": 2**40}


def test_pamqp_frames_decode_to_the_same_arguments() -> None:
    data = frame.marshal(commands.Basic.Consume(queue="q", consumer_tag="t", no_ack=True), 1)
    method = decode_method(data, 7, len(data) - 1)
    assert method.name == "basic.consume"
    assert method.args["queue"] == "q"
    assert method.args["consumer_tag"] == "t"
    assert method.args["no_ack"] is True
    assert method.args["exclusive"] is False


every_type: dict[str, Any] = {
    "bool": True,
    "int": -5,
    "big": 2**40,
    "float": 1.5,
    "str": "héllo",
    "bytes": b"\x00\xff",
    "none": None,
    "list": [1, "two", [3.0, None], {"four": 4}],
    "table": {"nested": {"deeper": ["x"]}},
    "decimal": decimal.Decimal("3.14"),
    "timestamp": datetime.datetime(2026, 11, 27, 8, 0, tzinfo=datetime.UTC),
}


def test_field_tables_round_trip_every_type() -> None:
    encoded = encode_table(every_type)
    decoded, end = decode_table(encoded, 0)
    assert end == len(encoded)
    assert decoded == every_type


def test_short_integers_in_rabbitmq_style_tables_decode() -> None:
    # 's' is a signed 16-bit integer in RabbitMQ (not a short string as the spec says)
    raw = b"\x01a" + b"s\xff\xfe" + b"\x01b" + b"u\xff\xfe" + b"\x01c" + b"B\x07"
    table, _ = decode_table(len(raw).to_bytes(4, "big") + raw, 0)
    assert table == {"a": -2, "b": 65534, "c": 7}


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\x00\x00\x05\x01aZ\x00\x00",  # unknown type tag
        b"\x00\x00\x00\x09\x01aS\x00\x00\x00\xff",  # string longer than the table
        b"\x00\x00\x00\x20\x01a",  # table longer than the buffer
    ],
)
def test_malformed_tables_raise_protocol_error(garbage: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_table(garbage, 0)


def test_values_without_an_amqp_type_are_refused_with_their_key() -> None:
    with pytest.raises(ConfigurationError, match=r"'when'.*set"):
        encode_table({"when": {1, 2}})


def test_properties_round_trip_all_fields() -> None:
    props = Properties(
        content_type="application/json",
        content_encoding="gzip",
        headers=every_type,
        delivery_mode=2,
        priority=7,
        correlation_id="c-1",
        reply_to="amq.rabbitmq.reply-to",
        expiration=1500,
        message_id="m-1",
        timestamp=1_800_000_000,
        type="call",
        user_id="guest",
        app_id="leveret",
    )
    data = message_frames(b"", 1, props.encode(), b"body", 131072)
    assert isinstance(data, bytes)
    length = int.from_bytes(data[3:7], "big")
    size, decoded = decode_content_header(data[7 : 7 + length])
    assert size == 4
    assert decoded == props
    assert decoded.expiration == "1500"


def test_properties_match_pamqp_encoding() -> None:
    ours = encode_properties(
        content_type="text/plain",
        delivery_mode=2,
        correlation_id="x",
        headers={"a": "b", "c": [True]},
    )
    theirs = commands.Basic.Properties(
        content_type="text/plain",
        delivery_mode=2,
        correlation_id="x",
        headers={"a": "b", "c": [True]},
    ).marshal()
    assert ours == theirs


@given(
    content_type=st.sampled_from([None, "application/json", "text/plain"]),
    delivery_mode=st.sampled_from([None, 1, 2]),
    message_id=st.one_of(st.none(), st.text(max_size=20)),
    correlation_id=st.one_of(st.none(), st.text(max_size=20)),
    reply_to=st.sampled_from([None, "amq.rabbitmq.reply-to", "replies"]),
    type=st.sampled_from([None, "call", "result", "error"]),
)
def test_cached_id_properties_are_the_same_bytes_as_encoded_in_full(
    content_type: str | None,
    delivery_mode: int | None,
    message_id: str | None,
    correlation_id: str | None,
    reply_to: str | None,
    type: str | None,
) -> None:
    full = encode_properties(
        content_type,
        delivery_mode=delivery_mode,
        correlation_id=correlation_id,
        reply_to=reply_to,
        message_id=message_id,
        type=type,
    )
    for _ in range(2):  # the first builds the template, the second uses it
        assert (
            id_properties(content_type, delivery_mode, message_id, correlation_id, reply_to, type)
            == full
        )


def test_too_long_short_strings_name_the_property() -> None:
    with pytest.raises(ConfigurationError, match="correlation_id is 300 bytes"):
        encode_properties(correlation_id="x" * 300)


def test_bodies_are_split_to_fit_frame_max() -> None:
    body = bytes(range(256)) * 100
    frames = message_frames(b"", 1, b"\x00\x00", body, 4096)
    assert not isinstance(frames, bytes), "a body of several frames is made frame by frame"
    data = b"".join(frames)
    assert data.count(b"\xce") >= len(body) // 4088
    pieces = []
    pos = 0
    while pos < len(data):
        kind, _, size = data[pos], data[pos + 1 : pos + 3], int.from_bytes(data[pos + 3 : pos + 7])
        if kind == 3:
            assert size <= 4088
            pieces.append(data[pos + 7 : pos + 7 + size])
        pos += 8 + size
    assert b"".join(pieces) == body


json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)  # RabbitMQ refuses both
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@given(st.dictionaries(st.text(max_size=30), json_like, max_size=8))
def test_any_encodable_table_round_trips(table: dict[str, Any]) -> None:
    decoded, _ = decode_table(encode_table(table), 0)
    assert decoded == table
