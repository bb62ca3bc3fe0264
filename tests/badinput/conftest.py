"""The bad-input suite: messages published straight to worker and callee queues.

Every kind of bad input a test throws is entered in the session's :class:`Ledger`
when it is tried and marked handled once the test has seen it end where it
should (the dead-letter queue, an error reply, a rejection with a log line, an
error at the sender). At the end of the session the figure (kinds tried, kinds
handled) is appended as one JSON line to ``LEVERET_FAULT_REPORT`` (default
``/tmp/leveret-fault-report.jsonl``) and printed in pytest's terminal summary.
"""

from __future__ import annotations

import datetime
import json
import os
import struct
from collections.abc import AsyncIterator, Collection, Iterator
from pathlib import Path
from typing import Any

import pytest

from leveret.amqp import Channel, Connection, Delivery, Properties, connect
from leveret.amqp._codec import encode_shortstr
from leveret.patterns import dead_letter_queue, delay_queues
from tests.conftest import AMQP_URL
from tests.support.waiting import wait_until

REPORT = os.environ.get("LEVERET_FAULT_REPORT", "/tmp/leveret-fault-report.jsonl")
REASON = "x-leveret-reason"

_SUMMARY = pytest.StashKey[str]()


class Ledger:
    """Kinds of bad input tried in this session, and how each one ended."""

    def __init__(self) -> None:
        self.outcomes: dict[str, str | None] = {}
        #: Other figures for the report (the property test's counts).
        self.figures: dict[str, Any] = {}

    def tried(self, kind: str) -> None:
        if kind in self.outcomes:
            raise AssertionError(f"kind of bad input {kind!r} is counted twice")
        self.outcomes[kind] = None

    def handled(self, kind: str, how: str) -> None:
        assert kind in self.outcomes, f"{kind!r} was handled but never tried"
        self.outcomes[kind] = how

    @property
    def handled_count(self) -> int:
        return sum(how is not None for how in self.outcomes.values())


@pytest.fixture(scope="session")
def ledger(request: pytest.FixtureRequest) -> Iterator[Ledger]:
    """The session's ledger; appends the figure to the JSON-lines report at the end."""
    ledger = Ledger()
    yield ledger
    line = {
        "suite": "badinput",
        "at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "kinds_tried": len(ledger.outcomes),
        "kinds_handled": ledger.handled_count,
        "all_handled": ledger.handled_count == len(ledger.outcomes),
        "seconds": round(_seconds[0], 1),
        **ledger.figures,
        "kinds": ledger.outcomes,
    }
    with open(REPORT, "a", encoding="utf-8") as report:  # append: other suites write here too
        report.write(json.dumps(line, ensure_ascii=False) + "\n")
    summary = (
        f"bad input: {line['kinds_tried']} kinds tried, {line['kinds_handled']} handled "
        f"(all handled: {line['all_handled']}) in {line['seconds']} s; appended to {REPORT}"
    )
    request.config.stash[_SUMMARY] = summary


_seconds = [0.0]  # spent in this suite's tests (setup, call, teardown), whatever else runs


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.nodeid.startswith("tests/badinput/"):
        _seconds[0] += report.duration


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    summary = config.stash.get(_SUMMARY, None)
    if summary is not None:
        terminalreporter.write_line(summary)


class Queues:
    """Task and method queues a test creates; deleted at the end with every
    dead-letter and retry queue a worker may have made for them."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def __call__(self, name: str) -> str:
        self.names.append(name)
        return name


@pytest.fixture
async def queues(amqp_url: str) -> AsyncIterator[Queues]:
    tracker = Queues()
    yield tracker
    async with await connect(AMQP_URL) as conn:
        channel = await conn.channel()
        for name in tracker.names:
            for queue in (name, dead_letter_queue(name), *delay_queues(name)):
                await channel.queue_delete(queue)


@pytest.fixture
async def worker_connection(amqp_url: str) -> AsyncIterator[Connection]:
    """The worker's own connection; a test closes it to see what comes back unacked."""
    conn = await connect(amqp_url, name="leveret-badinput-worker")
    try:
        yield conn
    finally:
        await conn.close()


class Tally:
    """A task function that counts its runs by task id.

    It checks what a task function would check: ``n`` is an int (a task with
    another type fails, and goes to the dead-letter queue with its exception).
    """

    def __init__(self) -> None:
        self.runs: dict[int, int] = {}

    async def task(self, *, n: int, label: str = "") -> None:
        if not isinstance(n, int) or isinstance(n, bool):
            raise TypeError(f"n must be an int, not {type(n).__name__}")
        self.runs[n] = self.runs.get(n, 0) + 1


async def nothing_comes_back(connection: Connection, channel: Channel, queue: str) -> None:
    """Close the worker's connection and check its queue is empty: no task was left
    unacked (the broker would requeue it) and none is waiting."""
    await connection.close()
    assert (await channel.queue_declare(queue, passive=True)).message_count == 0


async def wait_for_count(channel: Channel, queue: str, expected: int, timeout: float) -> int:
    """``queue``'s ready-message count, once it has reached ``expected``.

    Raises:
        AssertionError: it stays below ``expected`` for ``timeout`` s.
    """
    count = 0

    async def reached() -> bool:
        nonlocal count
        count = (await channel.queue_declare(queue, passive=True)).message_count
        return count >= expected

    await wait_until(reached, timeout, f"{expected} message(s) in {queue!r}")
    return count


async def drain(channel: Channel, queue: str) -> list[Delivery]:
    """Every message now ready in ``queue``, taken off it (in queue order)."""
    taken: list[Delivery] = []
    while (delivery := await channel.get(queue, no_ack=True)) is not None:
        taken.append(delivery)
    return taken


async def dead_letters_by_id(
    channel: Channel, task: str, expected: Collection[str], timeout: float = 10
) -> dict[str, Delivery]:
    """The dead letters of ``task``, by message id, once all ``expected`` ids are there."""
    await wait_for_count(channel, dead_letter_queue(task), len(expected), timeout)
    letters = {
        d.properties.message_id or "": d for d in await drain(channel, dead_letter_queue(task))
    }
    missing = set(expected) - letters.keys()
    assert not missing, f"never dead-lettered: {sorted(missing)}"
    assert letters.keys() == set(expected), (
        f"unexpected dead letters: {letters.keys() - set(expected)}"
    )
    return letters


class MakesAFile:
    """Unpickling this creates a file: the proof that a pickle was executed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


def same_value(seen: Any, sent: Any) -> bool:
    """Equal, and of the same type all the way down (``True`` is not ``1``)."""
    if isinstance(sent, dict):
        return (
            isinstance(seen, dict)
            and seen.keys() == sent.keys()
            and all(same_value(seen[key], value) for key, value in sent.items())
        )
    if isinstance(sent, list):
        return (
            isinstance(seen, list)
            and len(seen) == len(sent)
            and all(same_value(a, b) for a, b in zip(seen, sent, strict=True))
        )
    return type(seen) is type(sent) and bool(seen == sent)


# -- field tables the encoder would never write ------------------------------------------


def raw_entry(key: bytes, value: bytes) -> bytes:
    """One field-table entry from raw bytes: the key as a short string, then a typed value."""
    return bytes([len(key)]) + key + value


def raw_array(*values: bytes) -> bytes:
    """A field array (type tag included) of raw typed values."""
    body = b"".join(values)
    return b"A" + struct.pack(">I", len(body)) + body


def raw_table(*entries: bytes) -> bytes:
    body = b"".join(entries)
    return struct.pack(">I", len(body)) + body


class RawProperties(Properties):
    """Properties whose header table is given as raw bytes (any field type, any key
    bytes), and whose short strings may be any bytes, not only UTF-8.

    ``Channel.publish`` sends whatever :meth:`encode` returns.
    """

    def __init__(
        self,
        *,
        raw_headers: bytes | None = None,
        raw_strings: dict[str, bytes] | None = None,
        **known: Any,
    ) -> None:
        super().__init__(**known)
        self.__dict__["_raw_headers"] = raw_headers
        self.__dict__["_raw_strings"] = raw_strings or {}

    def encode(self) -> bytes:
        raw_headers: bytes | None = self.__dict__["_raw_headers"]
        raw_strings: dict[str, bytes] = self.__dict__["_raw_strings"]
        flags = 0
        parts: list[bytes] = []
        for bit, name in _PROPERTY_LAYOUT:
            if name == "headers" and raw_headers is not None:
                flags |= bit
                parts.append(raw_headers)
                continue
            if name in raw_strings:
                flags |= bit
                parts.append(bytes([len(raw_strings[name])]) + raw_strings[name])
                continue
            value = getattr(self, name)
            if value is None:
                continue
            flags |= bit
            parts.append(_encode_known(name, value))
        return struct.pack(">H", flags) + b"".join(parts)


_PROPERTY_LAYOUT = (
    (0x8000, "content_type"),
    (0x4000, "content_encoding"),
    (0x2000, "headers"),
    (0x1000, "delivery_mode"),
    (0x0800, "priority"),
    (0x0400, "correlation_id"),
    (0x0200, "reply_to"),
    (0x0100, "expiration"),
    (0x0080, "message_id"),
    (0x0040, "timestamp"),
    (0x0020, "type"),
    (0x0010, "user_id"),
    (0x0008, "app_id"),
)


def _encode_known(name: str, value: Any) -> bytes:
    if name == "headers":
        # The real encoder, minus its two-octet flags.
        return Properties(headers=value).encode()[2:]
    if name in ("delivery_mode", "priority"):
        return bytes([value])
    if name == "timestamp":
        return struct.pack(">Q", value)
    return encode_shortstr(str(value), name)
