"""Tasks whose headers hold every AMQP field type, garbage, or leveret's own
headers set to the wrong type, published straight to a worker's queue.

A header is not a problem in itself: a good task carrying it runs exactly once
and sees it; a bad task carrying it still ends in the dead-letter queue, which
keeps the header (or, when it cannot be sent again, says that it dropped it).
Leveret's own headers of the wrong type are ignored, so the retry policy holds.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import struct
from typing import Any

import pytest

from leveret.amqp import Channel, Connection, Properties, connect
from leveret.patterns import Master, RetryPolicy, current_task, delay_queues
from tests.badinput.conftest import (
    REASON,
    Ledger,
    Queues,
    RawProperties,
    dead_letters_by_id,
    nothing_comes_back,
    raw_array,
    raw_entry,
    raw_table,
    same_value,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.badinput

JSON = "application/json"
CASE = "x-test-case"
DROPPED = "x-leveret-dropped"


class HeaderTally:
    """Runs of each task id, and the headers each run saw."""

    def __init__(self) -> None:
        self.runs: dict[int, int] = {}
        self.headers: dict[int, dict[str, Any]] = {}

    async def task(self, *, n: int, fail: bool = False) -> None:
        self.runs[n] = self.runs.get(n, 0) + 1
        self.headers[n] = dict(current_task().headers)
        if fail:
            raise RuntimeError(f"task {n} was asked to fail")


def _case_entry(case: str) -> bytes:
    raw = case.encode()
    return raw_entry(CASE.encode(), b"S" + struct.pack(">I", len(raw)) + raw)


@dataclasses.dataclass(frozen=True)
class FieldType:
    kind: str
    raw: bytes  # the typed value as it goes on the wire
    value: Any  # what a task function sees


_pack = struct.pack
FIELD_TYPES = [
    FieldType("boolean (t)", b"t\x01", True),
    FieldType("signed 8-bit integer (b)", b"b" + _pack(">b", -5), -5),
    FieldType("unsigned 8-bit integer (B)", b"B" + _pack(">B", 250), 250),
    FieldType("signed 16-bit integer (s)", b"s" + _pack(">h", -300), -300),
    FieldType("unsigned 16-bit integer (u)", b"u" + _pack(">H", 65000), 65000),
    FieldType("signed 32-bit integer (I)", b"I" + _pack(">i", -7), -7),
    FieldType("unsigned 32-bit integer (i)", b"i" + _pack(">I", 4_000_000_000), 4_000_000_000),
    FieldType("signed 64-bit integer (l)", b"l" + _pack(">q", -(2**62)), -(2**62)),
    FieldType("unsigned 64-bit integer (L)", b"L" + _pack(">Q", 2**64 - 1), 2**64 - 1),
    FieldType("32-bit float (f)", b"f" + _pack(">f", 1.5), 1.5),
    FieldType("64-bit float (d)", b"d" + _pack(">d", -2.25), -2.25),
    FieldType("decimal (D)", b"D\x02" + _pack(">i", 12345), decimal.Decimal("123.45")),
    FieldType("long string (S)", b"S" + _pack(">I", 6) + "héllo".encode(), "héllo"),
    FieldType(
        "long string that is not UTF-8 (S)", b"S" + _pack(">I", 2) + b"\xff\xfe", b"\xff\xfe"
    ),
    FieldType("byte array (x)", b"x" + _pack(">I", 3) + b"\x00\x01\x02", b"\x00\x01\x02"),
    FieldType(
        "timestamp (T)",
        b"T" + _pack(">Q", 1_700_000_000),
        datetime.datetime(2023, 11, 14, 22, 13, 20, tzinfo=datetime.UTC),
    ),
    # Legal on the wire, past what a datetime holds: the number of seconds.
    FieldType("timestamp past the year 9999 (T)", b"T" + _pack(">Q", 2**40), 2**40),
    FieldType("timestamp past the platform's time_t (T)", b"T" + _pack(">Q", 2**62), 2**62),
    FieldType("void (V)", b"V", None),
    FieldType(
        "array of mixed types (A)",
        raw_array(b"I" + _pack(">i", 1), b"t\x00", b"V", b"S" + _pack(">I", 1) + b"a"),
        [1, False, None, "a"],
    ),
    FieldType(
        "nested table holding an array of tables (F)",
        b"F"
        + raw_table(
            raw_entry(b"inner", b"F" + raw_table(raw_entry(b"x", b"I" + _pack(">i", 2)))),
            raw_entry(b"list", raw_array(b"F" + raw_table(raw_entry(b"y", b"t\x01")))),
        ),
        {"inner": {"x": 2}, "list": [{"y": True}]},
    ),
]


async def _start_worker(
    connection: Connection, task: str, tally: HeaderTally, **options: Any
) -> None:
    await Master(await connection.channel()).create_worker(task, tally.task, **options)


async def test_tasks_with_a_header_of_every_amqp_field_type_run_once_and_keep_it_when_dead_lettered(
    channel: Channel,
    worker_connection: Connection,
    unique: str,
    queues: Queues,
    ledger: Ledger,
) -> None:
    task = queues(unique)
    tally = HeaderTally()
    await _start_worker(worker_connection, task, tally)
    for n, field in enumerate(FIELD_TYPES):
        kind = f"header of AMQP field type {field.kind}"
        ledger.tried(kind)
        for body, case in ((f'{{"n": {n}}}'.encode(), f"good-{n}"), (b"{oops", f"bad-{n}")):
            raw = raw_table(_case_entry(case), raw_entry(b"field", field.raw))
            await channel.publish(
                body,
                routing_key=task,
                mandatory=True,
                properties=RawProperties(raw_headers=raw, content_type=JSON, message_id=case),
            )
    await wait_until(lambda: len(tally.runs) == len(FIELD_TYPES), 10, "the good tasks")
    letters = await dead_letters_by_id(channel, task, [f"bad-{n}" for n in range(len(FIELD_TYPES))])
    await nothing_comes_back(worker_connection, channel, task)
    assert tally.runs == {n: 1 for n in range(len(FIELD_TYPES))}
    for n, field in enumerate(FIELD_TYPES):
        assert same_value(tally.headers[n]["field"], field.value), field.kind
        headers = letters[f"bad-{n}"].headers
        assert same_value(headers["field"], field.value), field.kind
        assert "does not decode as application/json" in headers[REASON]
        ledger.handled(
            f"header of AMQP field type {field.kind}",
            "the good task ran once and saw it; the bad one was dead-lettered with it",
        )


def _deep_table(depth: int) -> bytes:
    value = b"V"
    for _ in range(depth):
        value = b"F" + raw_table(raw_entry(b"k", value))
    return value


def _deep_array(depth: int) -> bytes:
    value = b"V"
    for _ in range(depth):
        value = raw_array(value)
    return value


def _filling(size: int) -> dict[str, Any]:
    """Headers that make the properties of a task exactly ``size`` bytes long."""
    base = len(Properties(content_type=JSON, message_id="x" * 20, headers={"fill": ""}).encode())
    return {"fill": "x" * (size - base)}


@dataclasses.dataclass(frozen=True)
class Garbage:
    kind: str
    headers: dict[str, Any] | None = None  # through the real encoder
    raw: bytes | None = None  # raw field-table entries
    strings: dict[str, bytes] | None = None  # raw short-string properties
    others: dict[str, Any] | None = None  # other properties
    dropped: str | None = None  # what the dead letter says it left out


_FRAME = 131072
GARBAGE = [
    Garbage(
        "header names with odd characters",
        headers={"": 1, " ": 2, "ключ": 3, "🐇": 4, "\x00nul": 5, "a.b/c:d*#{}": 6, "k" * 255: 7},
    ),
    Garbage("header name that is not UTF-8", raw=raw_entry(b"\xff\xfe", b"I" + _pack(">i", 1))),
    Garbage(
        "255-byte header name that is not UTF-8",
        raw=raw_entry(b"\xff" * 255, b"I" + _pack(">i", 1)),
        dropped="header",
    ),
    Garbage("header holding a 100 KB string", headers={"long": "é" * 50_000}),
    Garbage(
        "headers that leave no room in the frame for a dead letter's reason",
        headers=_filling(_FRAME - 8 - 12 - 100),
        dropped="original headers",
    ),
    Garbage("five thousand headers", headers={f"h{i}": i for i in range(5000)}),
    Garbage("table nested 50 deep", raw=raw_entry(b"deep", _deep_table(50))),
    Garbage("array nested 50 deep", raw=raw_entry(b"deep", _deep_array(50))),
    Garbage("table nested 2000 deep", raw=raw_entry(b"deep", _deep_table(2000))),
    Garbage("array nested 2000 deep", raw=raw_entry(b"deep", _deep_array(2000))),
    Garbage(
        "header values a JSON worker would not expect",
        headers={
            "bytes": b"\x00\xff",
            "decimal": decimal.Decimal("-0.001"),
            "when": datetime.datetime(1999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC),
            "none": None,
            "largest": 2**63 - 1,
            "smallest": -(2**63),
            "empty": {},
            "nothing": [],
        },
    ),
    Garbage(
        "255-byte short-string properties that are not UTF-8",
        strings={
            name: b"\xfe" * 255 for name in ("correlation_id", "app_id", "type", "content_encoding")
        },
        dropped="correlation_id",
    ),
    Garbage(
        "highest priority and timestamp",
        others={"priority": 255, "timestamp": 2**64 - 1},
    ),
]


async def test_garbage_headers_and_properties_never_stop_the_worker_or_its_dead_letters(
    channel: Channel,
    worker_connection: Connection,
    unique: str,
    queues: Queues,
    ledger: Ledger,
) -> None:
    task = queues(unique)
    tally = HeaderTally()
    await _start_worker(worker_connection, task, tally)
    for n, garbage in enumerate(GARBAGE):
        ledger.tried(garbage.kind)
        for body, case in ((f'{{"n": {n}}}'.encode(), f"good-{n}"), (b"[]", f"bad-{n}")):
            entries = [_case_entry(case)]
            if garbage.headers is not None:
                entries.append(Properties(headers=garbage.headers).encode()[6:])
            if garbage.raw is not None:
                entries.append(garbage.raw)
            await channel.publish(
                body,
                routing_key=task,
                mandatory=True,
                properties=RawProperties(
                    raw_headers=raw_table(*entries),
                    raw_strings=garbage.strings,
                    content_type=JSON,
                    message_id=case.ljust(20),
                    **(garbage.others or {}),
                ),
            )
    await wait_until(lambda: len(tally.runs) == len(GARBAGE), 10, "the good tasks")
    letters = await dead_letters_by_id(
        channel, task, [f"bad-{n}".ljust(20) for n in range(len(GARBAGE))]
    )
    await nothing_comes_back(worker_connection, channel, task)
    assert tally.runs == {n: 1 for n in range(len(GARBAGE))}
    for n, garbage in enumerate(GARBAGE):
        assert tally.headers[n][CASE] == f"good-{n}", garbage.kind
        headers = letters[f"bad-{n}".ljust(20)].headers
        assert "payload is list, not an object" in headers[REASON], garbage.kind
        if garbage.dropped is not None:
            assert garbage.dropped in headers[DROPPED], f"{garbage.kind}: {headers.get(DROPPED)!r}"
            how = f"dead-lettered, naming what it could not carry: {headers[DROPPED][:80]}"
        else:
            assert DROPPED not in headers, f"{garbage.kind}: {headers[DROPPED]!r}"
            for key, value in (garbage.headers or {}).items():
                assert same_value(tally.headers[n][key], value), f"{garbage.kind}: {key!r}"
                assert same_value(headers[key], value), f"{garbage.kind}: {key!r}"
            how = "the good task ran once; the bad one was dead-lettered with its headers"
        ledger.handled(garbage.kind, how)


@dataclasses.dataclass(frozen=True)
class Forged:
    kind: str
    headers: dict[str, Any]
    runs: int = 2  # max_attempts of the worker below: the header changed nothing


FORGED = [
    Forged("attempt count as a string", {"x-leveret-attempt": "3"}),
    Forged("attempt count as a float", {"x-leveret-attempt": 2.0}),
    Forged("attempt count as a boolean", {"x-leveret-attempt": True}),
    Forged("attempt count of zero", {"x-leveret-attempt": 0}),
    Forged("negative attempt count", {"x-leveret-attempt": -5}),
    Forged("attempt count as an array", {"x-leveret-attempt": [1, 2]}),
    Forged("attempt count as a table", {"x-leveret-attempt": {"n": 1}}),
    Forged("attempt count as void", {"x-leveret-attempt": None}),
    Forged("attempt count far past the limit", {"x-leveret-attempt": 2**62}, runs=1),
    Forged("redelivery count as a string", {"x-leveret-redeliveries": "many"}),
    Forged("negative redelivery count", {"x-leveret-redeliveries": -1000}),
    Forged("delivery count as a string", {"x-delivery-count": "three"}),
    Forged(
        "dead-letter headers forged with wrong types",
        {
            "x-leveret-reason": 42,
            "x-leveret-attempts": "lots",
            "x-leveret-traceback": {"not": "text"},
            "x-leveret-dead-lettered-at": "yesterday",
            "x-leveret-original-routing-key": [1],
        },
    ),
    Forged("x-death forged as a string", {"x-death": "yesterday"}),
]


async def test_leveret_headers_of_the_wrong_type_are_ignored_and_the_retry_policy_holds(
    channel: Channel,
    worker_connection: Connection,
    amqp_url: str,
    unique: str,
    queues: Queues,
    ledger: Ledger,
) -> None:
    task = queues(unique)
    tally = HeaderTally()
    policy = RetryPolicy(max_attempts=2, backoff=0.01, jitter=0)
    await _start_worker(worker_connection, task, tally, retries=policy)
    sender = Master(channel)
    failing = len(FORGED)
    for n, forged in enumerate(FORGED):
        ledger.tried(f"{forged.kind} (x-leveret headers of the wrong type)")
        await sender.create_task(
            task,
            kwargs={"n": failing + n, "fail": True},
            headers=forged.headers,
            message_id=f"bad-{n}",
        )
        await sender.create_task(task, kwargs={"n": n})
    letters = await dead_letters_by_id(channel, task, [f"bad-{n}" for n in range(len(FORGED))])
    await wait_until(lambda: len(tally.runs) == 2 * len(FORGED), 10, "the good tasks")
    await nothing_comes_back(worker_connection, channel, task)
    assert {n: tally.runs[n] for n in range(len(FORGED))} == {n: 1 for n in range(len(FORGED))}
    for n, forged in enumerate(FORGED):
        headers = letters[f"bad-{n}"].headers
        assert tally.runs[failing + n] == forged.runs, forged.kind
        attempts = 2**62 if forged.runs == 1 else 2
        assert headers["x-leveret-attempts"] == attempts, forged.kind
        assert headers[REASON].startswith(f"failed after {attempts} attempt"), forged.kind
        assert headers["x-leveret-exception-type"] == "RuntimeError"
        assert headers["x-leveret-original-routing-key"] == task
        ledger.handled(
            f"{forged.kind} (x-leveret headers of the wrong type)",
            f"ignored: ran {forged.runs}x as the retry policy says, then dead-lettered",
        )
    # No garbage count left a copy waiting in the task's delay queues.
    async with await connect(amqp_url) as probe:
        for queue in delay_queues(task):
            ok = await (await probe.channel()).queue_declare(queue, passive=True)
            assert ok.message_count == 0, queue
