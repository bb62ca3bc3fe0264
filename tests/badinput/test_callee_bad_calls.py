"""Bad calls published straight to an RPC callee's queue, between good calls.

A bad call that says where to reply gets one clear error reply (``type="error"``,
the error's type and a message naming the problem) and never runs; one with
nowhere to reply is rejected with a log line. Good calls keep getting results.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pickle
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped,unused-ignore]
import pytest

from leveret.amqp import Channel, Connection, Delivery
from leveret.patterns import RPC
from tests.badinput.conftest import Ledger, MakesAFile, Queues, RawProperties, raw_entry, raw_table
from tests.badinput.test_worker_headers import FIELD_TYPES
from tests.support.waiting import wait_until

pytestmark = pytest.mark.badinput

JSON = "application/json"
PICKLE = "application/python-pickle"


@dataclasses.dataclass(frozen=True)
class Call:
    kind: str
    body: bytes
    error: str | None = None  # the error reply's type; None: a result is expected
    message: str = ""  # in the error reply's message
    content_type: str | None = JSON
    headers: dict[str, Any] | None = None
    raw_headers: bytes | None = None


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _calls(marker: Path) -> list[Call]:
    does_not_decode = "does not decode as application/json"
    return [
        Call("call body that is not valid JSON", b"{oops", "SerializationError", does_not_decode),
        Call("call body that is not UTF-8", b"\xff\xfe\xfa", "SerializationError", does_not_decode),
        Call("empty call body", b"", "SerializationError", does_not_decode),
        Call("call body that is a JSON array", b"[1, 2]", "TypeError", "payload is list"),
        Call("call body that is a JSON string", b'"x=1"', "TypeError", "payload is str"),
        Call(
            "call with content type text/plain",
            _json({"x": 1, "y": 2}),
            "SerializationError",
            "content type 'text/plain' is not accepted",
            content_type="text/plain",
        ),
        Call(
            "msgpack call aimed at a JSON callee",
            msgpack.packb({"x": 1, "y": 2}),
            "SerializationError",
            "content type 'application/msgpack' is not accepted",
            content_type="application/msgpack",
        ),
        Call(
            "pickle call labelled as pickle",
            pickle.dumps({"x": MakesAFile(marker), "y": 1}),
            "SerializationError",
            f"content type '{PICKLE}' is not accepted",
            content_type=PICKLE,
        ),
        Call(
            "pickle call labelled JSON",
            pickle.dumps({"x": MakesAFile(marker), "y": 1}),
            "SerializationError",
            does_not_decode,
        ),
        Call("call missing an argument", _json({"x": 1}), "TypeError", "missing argument y"),
        Call(
            "call with an unexpected argument",
            _json({"x": 1, "y": 2, "z": 3}),
            "TypeError",
            "unexpected argument z",
        ),
        Call(
            "call with twenty thousand unexpected arguments",
            _json({"x": 1, "y": 2, **{f"argument_{i}": i for i in range(20_000)}}),
            "TypeError",
            "unexpected arguments argument_0",
        ),
        Call(
            "20 MB call body",
            b"\x00leveret" * (20 * 2**20 // 8),
            "SerializationError",
            does_not_decode,
        ),
        # Garbage in headers is not a problem of the call: it runs and gets its result.
        Call("call deadline header as a string", b"", headers={"x-leveret-deadline": "soon"}),
        Call("call deadline header as a boolean", b"", headers={"x-leveret-deadline": True}),
        Call("call deadline header as a table", b"", headers={"x-leveret-deadline": {"at": 1}}),
        Call("call redelivery count as a string", b"", headers={"x-leveret-redeliveries": "many"}),
        Call("call delivery count as a string", b"", headers={"x-delivery-count": "three"}),
        Call(
            "call with headers of every AMQP field type",
            b"",
            raw_headers=b"".join(
                raw_entry(f"field-{n}".encode(), field.raw) for n, field in enumerate(FIELD_TYPES)
            ),
        ),
        Call(
            "call with a 255-byte header name that is not UTF-8",
            b"",
            raw_headers=raw_entry(b"\xff" * 255, b"t\x01"),
        ),
    ]


@dataclasses.dataclass(frozen=True)
class Nowhere:
    """A call whose reply cannot be sent anywhere."""

    kind: str
    reply_to: bytes | None
    correlation_id: bytes | None
    log: str


NOWHERE = [
    Nowhere("call without reply_to", None, b"c-1", "no reply_to, so no result can be sent"),
    Nowhere(
        "call without reply_to or correlation_id",
        None,
        None,
        "no reply_to, so no result can be sent",
    ),
    Nowhere(
        "call with a 255-byte reply_to that is not UTF-8",
        b"\xfe" * 255,
        b"c-2",
        "the reply cannot be sent",
    ),
    Nowhere(
        "call with a 255-byte correlation_id that is not UTF-8",
        b"REPLY",
        b"\xfe" * 255,
        "the reply cannot be sent",
    ),
]


async def test_bad_calls_get_one_clear_error_reply_and_never_run_while_good_calls_return(
    channel: Channel,
    worker_connection: Connection,
    unique: str,
    queues: Queues,
    ledger: Ledger,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    method = queues(unique)
    marker = tmp_path / "unpickled"
    runs: dict[int, int] = {}

    async def multiply(*, x: int, y: int) -> int:
        runs[x] = runs.get(x, 0) + 1
        return x * y

    callee = await RPC.create(await worker_connection.channel())
    await callee.register(method, multiply)
    caller = await RPC.create(await channel.connection.channel())
    reply_queue = (await channel.queue_declare("", exclusive=True)).queue
    replies: list[Delivery] = []
    await channel.consume(reply_queue, replies.append, no_ack=True)

    calls = _calls(marker)
    good = 0
    for n, call in enumerate(calls):
        ledger.tried(call.kind)
        body = call.body if call.error is not None else _json({"x": n, "y": 3})
        raw = None
        if call.raw_headers is not None:
            raw = raw_table(call.raw_headers)
        elif call.headers is not None:
            raw = RawProperties(headers=call.headers).encode()[2:]
        await channel.publish(
            body,
            routing_key=method,
            mandatory=True,
            properties=RawProperties(
                raw_headers=raw,
                content_type=call.content_type,
                correlation_id=f"bad-{n}",
                reply_to=reply_queue,
                type="call",
            ),
        )
        assert await caller.call(method, {"x": 1000 + n, "y": 2}, timeout=10) == 2 * (1000 + n)
        good += 1

    missing_correlation = "call without a correlation_id"
    ledger.tried(missing_correlation)
    await channel.publish(
        _json({"x": 500, "y": 1}),
        routing_key=method,
        mandatory=True,
        content_type=JSON,
        reply_to=reply_queue,
        type="call",
    )
    assert await caller.call(method, {"x": 3000, "y": 1}, timeout=10) == 3000
    good += 1
    for nowhere in NOWHERE:
        ledger.tried(nowhere.kind)
        strings = {}
        if nowhere.reply_to is not None:
            strings["reply_to"] = (
                reply_queue.encode() if nowhere.reply_to == b"REPLY" else nowhere.reply_to
            )
        if nowhere.correlation_id is not None:
            strings["correlation_id"] = nowhere.correlation_id
        await channel.publish(
            _json({"x": 600, "y": 1}),
            routing_key=method,
            mandatory=True,
            properties=RawProperties(raw_strings=strings, content_type=JSON, type="call"),
        )
        assert await caller.call(method, {"x": 2000, "y": 1}, timeout=10) == 2000
        good += 1

    await wait_until(lambda: len(replies) == len(calls) + 1, 10, "a reply to every bad call")
    by_id: dict[str | None, list[Delivery]] = {}
    for reply in replies:
        by_id.setdefault(reply.properties.correlation_id, []).append(reply)
    for n, call in enumerate(calls):
        (reply,) = by_id[f"bad-{n}"]  # exactly one reply
        payload = json.loads(reply.body)
        if call.error is None:
            assert reply.properties.type == "result", f"{call.kind}: {payload}"
            assert payload == 3 * n
            assert runs[n] == 1
            how = "ignored: the call ran once and got its result"
        else:
            assert reply.properties.type == "error", call.kind
            assert payload["error"]["type"] == call.error, f"{call.kind}: {payload['error']}"
            assert call.message in payload["error"]["message"], f"{call.kind}: {payload['error']}"
            assert n not in runs, f"{call.kind} ran"
            how = f"error reply: {call.error}: {payload['error']['str'][:100]}"
        ledger.handled(call.kind, how)

    (reply,) = by_id[None]
    error = json.loads(reply.body)["error"]
    assert reply.properties.type == "error"
    assert "correlation_id" in error["message"]
    assert 500 not in runs
    ledger.handled(missing_correlation, f"error reply: {error['type']}: {error['str'][:100]}")

    await callee.close()
    await caller.close()
    await worker_connection.close()
    assert (await channel.queue_declare(method, passive=True)).message_count == 0
    assert not marker.exists(), "a pickle was executed"
    assert {x: runs[x] for x in range(1000, 1000 + len(calls))} == {
        x: 1 for x in range(1000, 1000 + len(calls))
    }
    assert runs[2000] == len(NOWHERE) and runs[3000] == 1
    assert good == len(calls) + 1 + len(NOWHERE)
    # A call without reply_to never runs; one whose reply_to or correlation_id cannot
    # be sent back runs (that is only found out when replying) and is then rejected.
    assert runs.get(600, 0) == sum(nowhere.reply_to is not None for nowhere in NOWHERE)
    assert len(replies) == len(calls) + 1, "a call with nowhere to reply got a reply"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    for nowhere in NOWHERE:
        correlation = (
            "None"
            if nowhere.correlation_id is None
            else nowhere.correlation_id.decode("utf-8", "replace")
        )
        assert any(
            nowhere.log in line and f"(correlation {correlation}," in line for line in errors
        ), nowhere.kind
        ledger.handled(nowhere.kind, f"rejected with a log line: {nowhere.log}")
