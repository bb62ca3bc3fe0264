"""Random bodies, content types and header tables thrown at one worker (hypothesis).

One worker serves the whole run, on an event loop this test owns (hypothesis
drives the examples; each example runs to completion on that loop). After every
example a good task must still go through, and the random message must be in
the dead-letter queue; at the end every dead letter is checked against what was
sent: same body, a reason, and the same headers.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import json
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leveret.amqp import Channel, Connection, Delivery, Properties, connect
from leveret.patterns import Master, dead_letter_queue, delay_queues
from leveret.serializers import media_type
from tests.badinput.conftest import REASON, Ledger, drain, same_value, wait_for_count
from tests.support.waiting import wait_until

pytestmark = pytest.mark.badinput

JSON = "application/json"
KIND = "random bodies, content types and header tables (hypothesis)"
EXAMPLES = 300
BUDGET = 25.0  # seconds of examples at most, whatever the machine

# Headers a dead letter gets from the worker, whatever the task carried.
WRITTEN_BY_THE_WORKER = {
    "x-leveret-reason",
    "x-leveret-attempts",
    "x-leveret-original-exchange",
    "x-leveret-original-routing-key",
    "x-leveret-dead-lettered-at",
    "x-leveret-exception-type",
    "x-leveret-exception-message",
    "x-leveret-traceback",
    "x-leveret-dropped",
}

text = st.text(st.characters(codec="utf-8"), max_size=40)
keys = st.sampled_from(
    [
        "x-leveret-attempt",
        "x-leveret-redeliveries",
        "x-delivery-count",
        "x-leveret-reason",
        "x-death",
    ]
) | st.text(st.characters(codec="utf-8"), max_size=30)
amqp_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
    | st.binary(max_size=40)
    | st.builds(
        lambda unscaled, scale: decimal.Decimal(unscaled).scaleb(-scale),
        st.integers(-(2**31), 2**31 - 1),
        st.integers(0, 255),
    )
    | st.datetimes(
        min_value=datetime.datetime(1970, 1, 1),
        max_value=datetime.datetime(9999, 12, 31, 23, 59, 59),
        timezones=st.just(datetime.UTC),
    ).map(lambda moment: moment.replace(microsecond=0))
)
amqp_values = st.recursive(
    amqp_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=12,
)
header_tables = st.none() | st.dictionaries(keys, amqp_values, max_size=6)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=12,
)
bodies = st.binary(max_size=2048) | json_values.map(lambda value: json.dumps(value).encode())
content_types = (
    st.none()
    | st.sampled_from(
        [
            JSON,
            "application/python-pickle",
            "application/msgpack",
            "text/plain",
            "",
            "Application/JSON",
            "application/json; charset=utf-8",
        ]
    )
    | text
)


def _would_run(body: bytes, content_type: str | None) -> bool:
    """Whether the worker below should run this message as a task (the oracle)."""
    if content_type is not None and media_type(content_type) != JSON:
        return False
    try:
        payload = json.loads(body)
    except ValueError:
        return False
    return isinstance(payload, dict) and payload.keys() == {"good_id"}


class Harness:
    """One worker, the sender, and the account of what was sent."""

    def __init__(self, task: str, worker_conn: Connection, sender_conn: Connection) -> None:
        self.task = task
        self.worker_conn = worker_conn
        self.sender_conn = sender_conn
        self.sender: Channel
        self.worker_channel: Channel
        self.runs: dict[int, int] = {}
        self.random_runs: dict[str, int] = {}
        self.sent: dict[str, tuple[bytes, str | None, dict[str, Any] | None]] = {}
        self.expected_dead = 0
        self.examples = 0

    @classmethod
    async def start(cls, url: str, task: str) -> Harness:
        harness = cls(task, await connect(url), await connect(url))
        harness.sender = await harness.sender_conn.channel()
        harness.worker_channel = await harness.worker_conn.channel()
        await Master(harness.worker_channel).create_worker(task, harness.good_task)
        return harness

    async def good_task(self, *, good_id: Any) -> None:
        if isinstance(good_id, int) and not isinstance(good_id, bool) and good_id >= 0:
            self.runs[good_id] = self.runs.get(good_id, 0) + 1
        else:  # a random message the oracle took for a task
            key = repr(good_id)
            self.random_runs[key] = self.random_runs.get(key, 0) + 1

    async def throw(
        self, body: bytes, content_type: str | None, headers: dict[str, Any] | None
    ) -> None:
        n = self.examples
        self.examples += 1
        message_id = f"random-{n}"
        await self.sender.publish(
            body,
            routing_key=self.task,
            mandatory=True,
            properties=Properties(
                content_type=content_type, headers=headers, message_id=message_id
            ),
        )
        if _would_run(body, content_type):
            self.random_runs.setdefault(repr(json.loads(body)["good_id"]), 0)
        else:
            self.sent[message_id] = (body, content_type, headers)
            self.expected_dead += 1
        await Master(self.sender).create_task(self.task, kwargs={"good_id": n})
        await wait_until(lambda: n in self.runs, 5, f"good task {n} after a random message")
        assert not self.worker_conn.is_closed and self.worker_channel.is_open
        dead = await wait_for_count(
            self.sender, dead_letter_queue(self.task), self.expected_dead, 5
        )
        assert dead == self.expected_dead, f"{dead} dead letters, {self.expected_dead} expected"

    async def check_dead_letters(self) -> list[Delivery]:
        letters = {
            d.properties.message_id: d
            for d in await drain(self.sender, dead_letter_queue(self.task))
        }
        assert letters.keys() == self.sent.keys()
        for message_id, (body, content_type, headers) in self.sent.items():
            letter = letters[message_id]
            assert letter.body == body
            assert letter.properties.content_type == content_type
            seen = letter.headers
            assert isinstance(seen.get(REASON), str) and seen[REASON], message_id
            assert "x-leveret-dropped" not in seen, seen["x-leveret-dropped"]
            for key, value in (headers or {}).items():
                if key not in WRITTEN_BY_THE_WORKER:
                    assert same_value(seen[key], value), (message_id, key, seen[key], value)
        return list(letters.values())

    async def close(self) -> None:
        await self.worker_conn.close()
        try:
            for queue in (self.task, dead_letter_queue(self.task), *delay_queues(self.task)):
                await self.sender.queue_delete(queue)
        finally:
            await self.sender_conn.close()


async def _cancel_the_rest() -> None:
    """Whatever still runs on the test's loop (nothing should) is cancelled and awaited,
    so no task is destroyed pending when the loop closes."""
    rest = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in rest:
        task.cancel()
    await asyncio.gather(*rest, return_exceptions=True)


def test_random_bodies_content_types_and_headers_never_stop_a_worker(
    amqp_url: str, unique: str, ledger: Ledger
) -> None:
    loop = asyncio.new_event_loop()
    harness = loop.run_until_complete(Harness.start(amqp_url, unique))
    ledger.tried(KIND)
    started = time.monotonic()
    try:

        @settings(
            max_examples=EXAMPLES,
            deadline=datetime.timedelta(seconds=15),
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        )
        @given(body=bodies, content_type=content_types, headers=header_tables)
        def throw(body: bytes, content_type: str | None, headers: dict[str, Any] | None) -> None:
            if time.monotonic() - started < BUDGET:
                loop.run_until_complete(harness.throw(body, content_type, headers))

        throw()
        letters = loop.run_until_complete(harness.check_dead_letters())
        good = harness.examples
        loop.run_until_complete(harness.worker_conn.close())
        ok = loop.run_until_complete(harness.sender.queue_declare(unique, passive=True))
        assert ok.message_count == 0, "a task was left unacked or waiting"
        assert harness.runs == {n: 1 for n in range(good)}, "a good task ran twice or never"
        assert all(count == 1 for count in harness.random_runs.values())
    finally:
        loop.run_until_complete(harness.close())
        loop.run_until_complete(_cancel_the_rest())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    ledger.figures["property_examples"] = good
    ledger.figures["property_dead_lettered"] = len(letters)
    ledger.figures["property_seconds"] = round(time.monotonic() - started, 1)
    ledger.handled(
        KIND,
        f"{good} examples: {len(letters)} dead-lettered with their headers, "
        f"{len(harness.random_runs)} ran as tasks, every good task ran once",
    )
