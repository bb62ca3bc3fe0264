"""Bad tasks published straight to a worker's queue, between good ones.

Each bad task must end in ``<task>.dlq`` with an ``x-leveret-reason`` header (and
a log line) that names its problem; every good task in between must run exactly
once; nothing may be left unacked.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import pickle
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped,unused-ignore]
import pytest

from leveret.amqp import Channel, Connection
from leveret.patterns import Master
from tests.badinput.conftest import (
    REASON,
    Ledger,
    MakesAFile,
    Queues,
    Tally,
    dead_letters_by_id,
    nothing_comes_back,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.badinput

JSON = "application/json"


@dataclasses.dataclass(frozen=True)
class Bad:
    kind: str
    body: bytes
    reason: str
    content_type: str | None = JSON
    content_encoding: str | None = None


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


BAD_TASKS = [
    Bad("body that is not valid JSON", b"{not json", "does not decode as application/json"),
    Bad("body that is not UTF-8", b"\xff\xfe\xfa", "does not decode as application/json"),
    Bad("empty body", b"", "does not decode as application/json"),
    Bad(
        "non-JSON body without a content type",
        b"\x00\x01garbage",
        "does not decode as application/json",
        content_type=None,
    ),
    Bad(
        "gzip-compressed body labelled JSON",
        gzip.compress(b'{"n": 1}'),
        "does not decode as application/json",
        content_encoding="gzip",
    ),
    Bad(
        "JSON nested 100000 levels deep",
        b"[" * 100_000 + b"]" * 100_000,
        "does not decode as application/json: maximum recursion depth",
    ),
    Bad(
        "JSON integer of 5000 digits",
        b'{"n": ' + b"9" * 5000 + b"}",
        "does not decode as application/json",
    ),
    Bad("JSON array instead of an object", b"[1, 2]", "payload is list, not an object"),
    Bad("JSON string instead of an object", b'"n=1"', "payload is str, not an object"),
    Bad("JSON number instead of an object", b"42", "payload is int, not an object"),
    Bad("JSON null instead of an object", b"null", "payload is NoneType, not an object"),
    Bad(
        "content type text/plain",
        b'{"n": 1}',
        "content type 'text/plain' is not accepted (accepts application/json)",
        content_type="text/plain",
    ),
    Bad(
        "content type with a parameter that changes the encoding",
        b'{"n": 1}',
        "content type 'application/json;compression=gzip' is not accepted",
        content_type="application/json;compression=gzip",
    ),
    Bad("empty content type", b'{"n": 1}', "content type '' is not accepted", content_type=""),
    Bad(
        "msgpack body aimed at a JSON worker",
        msgpack.packb({"n": 1}),
        "content type 'application/msgpack' is not accepted",
        content_type="application/msgpack",
    ),
    Bad("missing argument", _json({"label": "x"}), "missing argument n"),
    Bad("unexpected argument", _json({"n": 1, "extra": 2}), "unexpected argument extra"),
    Bad(
        "argument names with odd characters",
        _json({"n": 1, "": 0, "a b\u0000\n": 1, "🐇": 2, "__class__": 3}),
        "unexpected arguments",
    ),
    Bad(
        "twenty thousand unexpected arguments",
        _json({"n": 1, **{f"argument_{i}": i for i in range(20_000)}}),
        "unexpected arguments argument_0",
    ),
    Bad("argument of the wrong type", _json({"n": "seven"}), "failed after 1 attempt"),
]


async def test_bad_tasks_are_dead_lettered_with_a_reason_while_good_ones_run_exactly_once(
    channel: Channel,
    worker_connection: Connection,
    unique: str,
    queues: Queues,
    ledger: Ledger,
    caplog: pytest.LogCaptureFixture,
) -> None:
    task = queues(unique)
    tally = Tally()
    await Master(await worker_connection.channel()).create_worker(task, tally.task)
    sender = Master(channel)
    for n, bad in enumerate(BAD_TASKS):
        ledger.tried(bad.kind)
        await channel.publish(
            bad.body,
            routing_key=task,
            mandatory=True,
            content_type=bad.content_type,
            content_encoding=bad.content_encoding,
            message_id=f"bad-{n}",
        )
        await sender.create_task(task, kwargs={"n": n})

    await wait_until(lambda: len(tally.runs) == len(BAD_TASKS), 10, "the good tasks")
    letters = await dead_letters_by_id(channel, task, [f"bad-{n}" for n in range(len(BAD_TASKS))])
    for n, bad in enumerate(BAD_TASKS):
        letter = letters[f"bad-{n}"]
        reason = letter.headers[REASON]
        assert bad.reason in reason, f"{bad.kind}: {reason[:300]!r}"
        assert letter.body == bad.body, bad.kind
        assert letter.headers["x-leveret-original-routing-key"] == task
        assert bad.reason in caplog.text, f"{bad.kind}: no log line names the problem"
        ledger.handled(bad.kind, f"dead-lettered: {reason[:120]}")
    wrong_type = next(
        n for n, bad in enumerate(BAD_TASKS) if bad.kind == "argument of the wrong type"
    )
    assert letters[f"bad-{wrong_type}"].headers["x-leveret-exception-type"] == "TypeError"
    await nothing_comes_back(worker_connection, channel, task)
    assert tally.runs == {n: 1 for n in range(len(BAD_TASKS))}


@pytest.mark.parametrize(
    "content_type", ["application/python-pickle", JSON, None, "application/octet-stream"]
)
async def test_a_pickle_aimed_at_a_json_worker_is_dead_lettered_and_never_unpickled(
    channel: Channel,
    worker_connection: Connection,
    unique: str,
    queues: Queues,
    ledger: Ledger,
    tmp_path: Path,
    content_type: str | None,
) -> None:
    kind = f"pickle body labelled {content_type or 'with no content type'}"
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(MakesAFile(control)))  # the proof works when unpickled
    assert control.exists(), "unpickling a MakesAFile must create its file"
    marker = tmp_path / "unpickled"
    task = queues(unique)
    tally = Tally()
    await Master(await worker_connection.channel()).create_worker(task, tally.task)
    ledger.tried(kind)
    body = pickle.dumps({"n": MakesAFile(marker)})
    await channel.publish(
        body, routing_key=task, mandatory=True, content_type=content_type, message_id="pickle"
    )
    await Master(channel).create_task(task, kwargs={"n": 1})
    await wait_until(lambda: tally.runs == {1: 1}, 5, "the good task after the pickle")
    letters = await dead_letters_by_id(channel, task, ["pickle"])
    reason = letters["pickle"].headers[REASON]
    if content_type in (JSON, None):
        assert "does not decode as application/json" in reason
    else:
        assert f"content type {content_type!r} is not accepted" in reason
    assert letters["pickle"].body == body
    assert not marker.exists(), "the pickle was executed"
    await nothing_comes_back(worker_connection, channel, task)
    ledger.handled(kind, f"dead-lettered, never unpickled: {reason}")


async def test_a_20_mb_body_is_dead_lettered_whole_and_the_worker_keeps_going(
    channel: Channel,
    worker_connection: Connection,
    unique: str,
    queues: Queues,
    ledger: Ledger,
) -> None:
    kind = "20 MB body that is not JSON"
    task = queues(unique)
    tally = Tally()
    await Master(await worker_connection.channel()).create_worker(task, tally.task)
    sender = Master(channel)
    ledger.tried(kind)
    await sender.create_task(task, kwargs={"n": 1})
    body = b"\x00leveret" * (20 * 2**20 // 8)
    await channel.publish(
        body, routing_key=task, mandatory=True, content_type=JSON, message_id="big"
    )
    await sender.create_task(task, kwargs={"n": 2})
    await wait_until(lambda: len(tally.runs) == 2, 10, "the good tasks around the big one")
    letters = await dead_letters_by_id(channel, task, ["big"])
    assert letters["big"].body == body
    assert "does not decode as application/json" in letters["big"].headers[REASON]
    await nothing_comes_back(worker_connection, channel, task)
    assert tally.runs == {1: 1, 2: 1}
    ledger.handled(kind, "dead-lettered whole (20 MiB)")
