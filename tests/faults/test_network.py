"""Network faults between clients and the broker, made with a TCP proxy of the test's own.

``stall()`` stops forwarding without closing anything (a silent network: the
clients notice through missed heartbeats); ``reset()`` aborts every connection.
Task streams and RPC callers sit behind the proxy; they must recover on their
own, lose nothing that was confirmed, and never hang.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from leveret.amqp import RobustConnection, connect
from leveret.exceptions import CallInterruptedError
from leveret.patterns import RPC, Master, dead_letter_queue
from tests.faults.hard_error_proxy import HardErrorProxy
from tests.faults.processes import Spawned
from tests.faults.support import (
    Ledger,
    declared,
    publish_until,
    read_log,
    recording_task,
    robust,
    settled_and_empty,
)
from tests.support.proxy import TCPProxy
from tests.support.waiting import wait_until

pytestmark = pytest.mark.faults

PREFETCH = 50
TASK_SECONDS = 0.005
#: Tasks confirmed before the fault, and again after it.
STREAM = 500
HEARTBEAT = 1


def _lost(*connections: RobustConnection) -> Callable[[], bool]:
    return lambda: not any(conn.is_open for conn in connections)


@pytest.mark.parametrize("fault", ["stall", "reset"])
async def test_task_streams_behind_a_stalled_or_reset_network_recover_and_lose_nothing(
    figures: dict[str, Any], proxy: TCPProxy, amqp_url: str, task_queue: str, fault: str
) -> None:
    loop = asyncio.get_running_loop()
    ledger = Ledger()
    stop = asyncio.Event()
    worker_conn = await robust(proxy.url, heartbeat=HEARTBEAT, name="fault-worker")
    publisher_conn = await robust(proxy.url, heartbeat=HEARTBEAT, name="fault-publisher")
    publishing: asyncio.Task[None] | None = None
    try:
        master = Master(await worker_conn.channel())
        await master.create_worker(
            task_queue, recording_task(ledger, TASK_SECONDS), prefetch_count=PREFETCH
        )
        publisher = Master(await publisher_conn.channel())
        publishing = asyncio.create_task(publish_until(publisher, task_queue, ledger, stop))
        await wait_until(
            lambda: len(ledger.confirmed) >= STREAM and ledger.runs, 30, "the streams under way"
        )

        started = loop.time()
        if fault == "stall":
            proxy.stall()
            # Both notice only through missed heartbeats; then their reconnect
            # attempts hang in the handshake until the network resumes.
            lost = _lost(worker_conn, publisher_conn)
            await wait_until(
                lambda: lost() and loop.time() - started > 2 * HEARTBEAT,
                10,
                "both to notice a stall longer than two heartbeats",
            )
            figures["stalled_seconds"] = round(loop.time() - started, 2)
            proxy.resume()
        else:
            proxy.reset()
        confirmed_before = len(ledger.confirmed)
        await wait_until(
            lambda: worker_conn.reconnects and publisher_conn.reconnects, 30, "both reconnects"
        )
        figures["outage_seconds"] = round(loop.time() - started, 2)
        await wait_until(
            lambda: len(ledger.confirmed) >= confirmed_before + STREAM,
            30,
            "tasks confirmed after the fault",
        )
        stop.set()
        await publishing

        await wait_until(ledger.all_confirmed_processed, 30, "every confirmed task")
        await wait_until(lambda: settled_and_empty(task_queue), 30, "an empty, settled queue")
        await master.close()
        figures.update(ledger.figures(), prefetch=PREFETCH)

        assert not ledger.lost
        assert set(ledger.publish_errors) <= {"PublishNotConfirmedError"}
        assert worker_conn.reconnects == 1 and publisher_conn.reconnects == 1
        # Only what the worker held unacked at the fault runs again (a task it
        # finished during a stall had its ack stuck in the dead connection): at most
        # its prefetch, each at most twice.
        assert ledger.duplicated <= ledger.redelivered
        assert ledger.duplicates <= PREFETCH and max(ledger.runs.values()) <= 2
        assert await declared(amqp_url, task_queue) == (0, 0)
        assert await declared(amqp_url, dead_letter_queue(task_queue)) == (0, 0)
    finally:
        stop.set()
        if publishing is not None:
            await asyncio.gather(publishing, return_exceptions=True)
        await publisher_conn.close()
        await worker_conn.close()


async def test_a_worker_keeps_consuming_when_the_broker_closes_the_connection_during_a_restore(
    figures: dict[str, Any], amqp_url: str, task_queue: str
) -> None:
    # A node shutting down (320) or crashing the channel (541) as a client fails
    # over to it closes the connection while the consumer is being restored. That
    # is a lost connection, to be restored again, not a queue refusing the consumer.
    parts = urlsplit(amqp_url)
    proxy = await HardErrorProxy(parts.hostname or "127.0.0.1", parts.port or 5672).start()
    ledger = Ledger()
    worker_conn = await robust(proxy.url, name="fault-worker")
    try:
        master = Master(await worker_conn.channel())
        await master.create_worker(task_queue, recording_task(ledger, 0), prefetch_count=PREFETCH)
        async with await connect(amqp_url, name="fault-publisher") as conn:
            publisher = Master(await conn.channel())
            await publish_until(publisher, task_queue, ledger, asyncio.Event(), limit=100)
            await wait_until(ledger.all_confirmed_processed, 10, "the tasks before the fault")

            proxy.armed = True
            proxy.reset()
            await wait_until(lambda: worker_conn.reconnects, 10, "the worker to reconnect")
            await publish_until(
                publisher, task_queue, ledger, asyncio.Event(), limit=100, first=100
            )
            await wait_until(ledger.all_confirmed_processed, 10, "the tasks after the fault")
        await wait_until(lambda: settled_and_empty(task_queue), 30, "an empty, settled queue")
        await master.close()
        figures.update(ledger.figures(), hard_errors=proxy.sabotaged)

        assert proxy.sabotaged == 1
        assert not ledger.lost and ledger.duplicates <= PREFETCH
        assert await declared(amqp_url, task_queue) == (0, 0)
    finally:
        await worker_conn.close()
        await proxy.close()


CALLS = 10


@pytest.mark.parametrize("fault", ["stall", "reset"])
async def test_rpc_caller_whose_connection_drops_gets_an_error_for_every_pending_call_at_once(
    figures: dict[str, Any], proxy: TCPProxy, amqp_url: str, task_queue: str, fault: str
) -> None:
    loop = asyncio.get_running_loop()
    method = task_queue
    running: list[int] = []
    release = asyncio.Event()

    async def slow(*, call_id: int) -> int:
        running.append(call_id)
        await release.wait()
        return call_id

    callee_conn = await connect(amqp_url, name="fault-callee")
    caller_conn = await robust(proxy.url, heartbeat=HEARTBEAT, name="fault-caller")
    calls: list[asyncio.Task[Any]] = []
    try:
        callee = await RPC.create(await callee_conn.channel())
        await callee.register(method, slow, prefetch_count=CALLS)
        caller = await RPC.create(await caller_conn.channel(), timeout=60)
        calls = [asyncio.create_task(caller.call(method, {"call_id": n})) for n in range(CALLS)]
        await wait_until(lambda: len(running) == CALLS, 10, "every call running in the callee")

        failed_at: list[float] = []
        for call in calls:
            call.add_done_callback(lambda _: failed_at.append(loop.time()))
        started = loop.time()
        if fault == "stall":
            proxy.stall()
        else:
            proxy.reset()
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10)
        figures.update(
            sent=CALLS,
            interrupted=sum(isinstance(result, CallInterruptedError) for result in results),
            seconds_to_fail=round(max(failed_at) - started, 2),
            spread_seconds=round(max(failed_at) - min(failed_at), 3),
        )

        assert all(isinstance(result, CallInterruptedError) for result in results), results
        assert "may or may not have run it" in str(results[0])
        # All at once, as soon as the connection is known to be gone: a reset at
        # once, a silent network after two missed heartbeats (not the 60 s deadline).
        assert max(failed_at) - min(failed_at) < 0.1
        assert max(failed_at) - started < (4 * HEARTBEAT if fault == "stall" else 1)

        # The caller recovers by itself and serves new calls.
        proxy.resume()
        release.set()
        await wait_until(lambda: caller_conn.reconnects, 10, "the caller to reconnect")
        assert await caller.call(method, {"call_id": 99}, timeout=10) == 99
    finally:
        release.set()
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        await caller_conn.close()
        await callee_conn.close()


async def test_rpc_calls_made_during_an_outage_wait_for_the_reconnect_until_their_deadline(
    figures: dict[str, Any], proxy: TCPProxy, amqp_url: str, task_queue: str
) -> None:
    loop = asyncio.get_running_loop()
    method = task_queue
    ran: list[int] = []

    async def echo(*, call_id: int) -> int:
        ran.append(call_id)
        return call_id

    callee_conn = await connect(amqp_url, name="fault-callee")
    caller_conn = await robust(proxy.url, name="fault-caller")
    patient: asyncio.Task[Any] | None = None
    try:
        callee = await RPC.create(await callee_conn.channel())
        await callee.register(method, echo)
        caller = await RPC.create(await caller_conn.channel())
        assert await caller.call(method, {"call_id": 0}, timeout=5) == 0

        # Cut the connection; reconnect attempts hang in the handshake until resume().
        proxy.stall()
        proxy.reset()
        await wait_until(lambda: proxy.connections >= 2, 5, "a reconnect attempt")
        patient = asyncio.create_task(caller.call(method, {"call_id": 2}, timeout=15))
        started = loop.time()
        with pytest.raises(TimeoutError, match="within 1 s"):
            await caller.call(method, {"call_id": 1}, timeout=1)
        impatient_seconds = loop.time() - started
        assert 0.9 < impatient_seconds < 3
        assert not patient.done()

        proxy.resume()
        assert await asyncio.wait_for(patient, 15) == 2
        figures.update(
            sent=3,
            timed_out=1,
            processed=2,
            impatient_seconds=round(impatient_seconds, 2),
            patient_seconds=round(loop.time() - started, 2),
        )
        # The call that timed out was never sent: nobody runs it after its caller gave up.
        assert ran == [0, 2]
    finally:
        proxy.resume()
        if patient is not None:
            patient.cancel()
            await asyncio.gather(patient, return_exceptions=True)
        await caller_conn.close()
        await callee_conn.close()


async def test_rpc_call_whose_callee_is_killed_mid_call_is_answered_once_by_another_callee(
    figures: dict[str, Any], amqp_url: str, task_queue: str, logs: Callable[[str], Path]
) -> None:
    method = task_queue
    calls_made = 3
    crashing = Spawned("callee", logs("callee"), "--url", amqp_url, "--queue", method)
    answered: Counter[int] = Counter()

    async def answer(*, call_id: int) -> str:
        answered[call_id] += 1
        return f"answered {call_id}"

    caller_conn = await connect(amqp_url, name="fault-caller")
    other_conn = await connect(amqp_url, name="fault-other-callee")
    calls: list[asyncio.Task[Any]] = []
    try:
        await wait_until(crashing.ready, 30, "the first callee serving")
        caller = await RPC.create(await caller_conn.channel(), timeout=30)
        calls = [
            asyncio.create_task(caller.call(method, {"call_id": n})) for n in range(calls_made)
        ]

        def started() -> list[int]:
            return [int(fields[1]) for fields in read_log(crashing.log) if fields[0] == "start"]

        await wait_until(lambda: len(started()) == calls_made, 10, "every call running")
        other = await RPC.create(await other_conn.channel())
        await other.register(method, answer)
        await asyncio.to_thread(crashing.kill)

        results = await asyncio.wait_for(asyncio.gather(*calls), 20)
        figures.update(
            sent=calls_made,
            started_by_killed_callee=len(started()),
            processed=len(answered),
            runs=sum(answered.values()),
            duplicates=sum(answered.values()) - len(answered),
            lost=calls_made - len(answered),
        )

        assert results == [f"answered {n}" for n in range(calls_made)]
        assert sorted(started()) == list(range(calls_made))
        # Each call ran to its end once, so exactly one reply went to the caller.
        assert answered == Counter(range(calls_made))
        assert await declared(amqp_url, method) == (0, 1)
    finally:
        crashing.kill()
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        await caller_conn.close()
        await other_conn.close()
