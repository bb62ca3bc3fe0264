"""A broker that sends what it must not: bad confirms, a frame that never completes,
malformed frames (injected toward the client by a TCP proxy of the test's own).

Each case runs the same way: a worker on its own connection to the shared broker,
a sender on a robust connection through the proxy creating tasks 8 at a time; the
proxy injects the bad bytes between two of the broker's frames while tasks are in
flight. The sender must fail its connection once, with one error log line that
names the problem, reconnect, and go on: every confirmed task runs, none twice,
and no exception escapes the protocol (asyncio's "data_received() call failed").
The last case puts the worker behind the proxy instead: every task runs, and only a
redelivery runs one again.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from typing import Any

import pytest

from leveret.amqp import RobustConnection
from leveret.exceptions import AMQPError
from leveret.patterns import Master
from tests.faults.support import Ledger, publish_until, recording_task, robust
from tests.support.proxy import TCPProxy
from tests.support.waiting import wait_until

pytestmark = pytest.mark.faults

#: The sender's channel: the first one its connection opens.
CHANNEL = 1
PROBE = 1_000_000  # task ids from here on: create_tasks that show the sender is back


def frame(kind: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + b"\xce"


def shortstr(text: bytes) -> bytes:
    return bytes([len(text)]) + text


def confirm(tag: int, *, multiple: bool) -> bytes:
    return frame(1, CHANNEL, struct.pack(">HHQB", 60, 80, tag, multiple))


def deliver(channel: int = CHANNEL) -> bytes:
    args = shortstr(b"ctag") + struct.pack(">QB", 1, 0) + shortstr(b"") + shortstr(b"task")
    return frame(1, channel, struct.pack(">HH", 60, 60) + args)


def content_header(body_size: int, flags: int = 0) -> bytes:
    return frame(2, CHANNEL, struct.pack(">HHQH", 60, 0, body_size, flags))


#: What the broker "sends", and words the client's error log line must contain.
BAD_CONFIRMS = {
    "ack-far-beyond-last-publish": (confirm(2**40, multiple=True), "the last publish on it"),
    "single-ack-confirmed-already": (confirm(1, multiple=False), "confirmed already"),
}
MALFORMED = {
    "method-frame-of-2-bytes": (frame(1, CHANNEL, b"\x00\x3c"), "method frame of 2 bytes"),
    # Flags announce a content type that is not there.
    "truncated-content-header": (
        deliver() + content_header(5, 0x8000),
        "malformed content header on channel 1",
    ),
    "content-header-of-6-bytes": (deliver() + frame(2, CHANNEL, b"\x00" * 6), "6 bytes"),
    "body-longer-than-announced": (
        deliver() + content_header(3) + frame(3, CHANNEL, b"0123456789"),
        "header announced 3",
    ),
    "deliver-arguments-past-the-frame": (
        frame(1, CHANNEL, struct.pack(">HH", 60, 60) + b"\x04ctag" + b"\x00" * 9 + b"\x30"),
        "basic.deliver",
    ),
    "heartbeat-on-channel-1": (frame(8, CHANNEL, b""), "heartbeat frame on channel 1"),
    "deliver-on-a-channel-never-opened": (deliver(77), "channel 77, which is not open"),
}


async def run_injected(
    *,
    amqp_url: str,
    proxy: TCPProxy,
    queue: str,
    bad: bytes,
    caplog: pytest.LogCaptureFixture,
    figures: dict[str, Any],
    heartbeat: int = 60,
    before: int = 200,
    at_worker: bool = False,
) -> list[str]:
    """Send ``before`` tasks, then a stream; inject ``bad`` toward the sender (or,
    ``at_worker``, toward the worker) while it flows; wait for it to be back (a task
    sent after the injection confirmed, or run) and every confirmed task to run.
    Fills ``figures``; returns the leveret error log lines."""
    caplog.set_level(logging.INFO)
    ledger = Ledger()
    hostile = f"{proxy.url}?heartbeat={heartbeat}"
    worker_conn: RobustConnection = await robust(hostile if at_worker else amqp_url)
    sender: RobustConnection = await robust(amqp_url if at_worker else hostile)
    try:
        worker = Master(await worker_conn.channel())
        await worker.create_worker(queue, recording_task(ledger, 0))
        master = Master(await sender.channel())
        await publish_until(master, queue, ledger, asyncio.Event(), limit=before)
        assert not ledger.unconfirmed, ledger.publish_errors

        stop = asyncio.Event()
        stream = asyncio.create_task(publish_until(master, queue, ledger, stop, first=before))
        await wait_until(lambda: len(ledger.confirmed) > before + 20, 30, "the stream flows")
        assert proxy.inject(bad) == 1
        injected = time.monotonic()
        probe = PROBE
        async with asyncio.timeout(60):  # a sender that never comes back fails the test
            while True:  # until the broker confirms a task again (each try a task of its own)
                try:
                    await master.create_task(queue, {"task_id": probe})
                    break
                except AMQPError as exc:
                    ledger.unconfirmed.add(probe)
                    ledger.publish_errors[type(exc).__name__] += 1
                    probe += 1
        ledger.confirmed.add(probe)
        await wait_until(lambda: probe in ledger.runs, 60, "a task sent after the injection ran")
        recovered = time.monotonic() - injected
        stop.set()
        await stream
        await wait_until(ledger.all_confirmed_processed, 60, "every confirmed task ran")
        # Closing the worker gives back whatever it holds unacked: a run whose ack was
        # lost would show as a message left in the queue.
        await worker_conn.close()
        left = (await (await sender.channel()).queue_declare(queue, passive=True)).message_count
    finally:
        await sender.close()
        await worker_conn.close()
    figures.update(ledger.figures())
    figures["recover_seconds"] = round(recovered, 2)
    figures["connections"] = proxy.connections
    figures["left_in_queue"] = left
    assert proxy.connections == 2, "the connection through the proxy did not reconnect once"
    assert not ledger.lost, sorted(ledger.lost)[:20]
    assert left == 0, f"{left} tasks came back unacked"
    if at_worker:  # tasks that finished after the connection failed cannot be acked: they run again
        assert ledger.duplicated <= ledger.redelivered, "a task ran twice without a redelivery"
    else:
        assert ledger.duplicates == 0, sorted(ledger.duplicated)[:20]
    assert set(ledger.publish_errors) <= {"PublishNotConfirmedError"}, ledger.publish_errors
    escaped = [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]
    assert not escaped, escaped[0].getMessage()
    errors = [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("leveret") and r.levelno >= logging.ERROR
    ]
    figures["error"] = errors[0] if errors else None
    return errors


@pytest.mark.parametrize("case", sorted(BAD_CONFIRMS))
async def test_a_confirm_for_a_publish_never_sent_or_confirmed_already_reconnects_and_loses_none(
    amqp_url: str,
    proxy: TCPProxy,
    task_queue: str,
    caplog: pytest.LogCaptureFixture,
    figures: dict[str, Any],
    case: str,
) -> None:
    bad, words = BAD_CONFIRMS[case]
    errors = await run_injected(
        amqp_url=amqp_url,
        proxy=proxy,
        queue=task_queue,
        bad=bad,
        caplog=caplog,
        figures=figures,
    )
    assert len(errors) == 1, errors
    assert "protocol error" in errors[0] and words in errors[0], errors[0]
    # A loop over the broker's range would have frozen the loop for hours.
    assert figures["recover_seconds"] < 30


async def test_a_frame_that_never_completes_fails_the_connection_within_two_heartbeats(
    amqp_url: str,
    proxy: TCPProxy,
    task_queue: str,
    caplog: pytest.LogCaptureFixture,
    figures: dict[str, Any],
) -> None:
    heartbeat = 2
    # A body frame announced as 100,000 bytes (under frame_max) with 10 of them sent:
    # every byte the broker sends after it (its heartbeats too) is taken for the rest.
    bad = struct.pack(">BHI", 3, CHANNEL, 100_000) + b"x" * 10
    errors = await run_injected(
        amqp_url=amqp_url,
        proxy=proxy,
        queue=task_queue,
        bad=bad,
        caplog=caplog,
        figures=figures,
        heartbeat=heartbeat,
    )
    assert len(errors) == 1, errors
    assert "no complete frame" in errors[0] and "bytes of a frame" in errors[0], errors[0]
    # Two intervals of silence, noticed on a tick half an interval apart, then a reconnect:
    # generous, for a loaded machine; without the check it never recovers.
    assert figures["recover_seconds"] < 2 * heartbeat + 20


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_a_malformed_frame_takes_the_one_protocol_error_path_and_work_goes_on(
    amqp_url: str,
    proxy: TCPProxy,
    task_queue: str,
    caplog: pytest.LogCaptureFixture,
    figures: dict[str, Any],
    case: str,
) -> None:
    bad, words = MALFORMED[case]
    errors = await run_injected(
        amqp_url=amqp_url,
        proxy=proxy,
        queue=task_queue,
        bad=bad,
        caplog=caplog,
        figures=figures,
        before=50,
    )
    assert len(errors) == 1, errors
    assert "protocol error" in errors[0] and words in errors[0], errors[0]


async def test_a_malformed_frame_at_a_worker_fails_its_connection_and_every_task_still_runs(
    amqp_url: str,
    proxy: TCPProxy,
    task_queue: str,
    caplog: pytest.LogCaptureFixture,
    figures: dict[str, Any],
) -> None:
    bad, words = MALFORMED["body-longer-than-announced"]
    errors = await run_injected(
        amqp_url=amqp_url,
        proxy=proxy,
        queue=task_queue,
        bad=bad,
        caplog=caplog,
        figures=figures,
        at_worker=True,
    )
    assert len(errors) == 1, errors
    assert "protocol error" in errors[0] and words in errors[0], errors[0]
