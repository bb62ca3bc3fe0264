"""Cancelling tasks: queued ones never start, running ones stop; all end as cancelled."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

from leveret.fleet import Agent, cancel
from leveret.patterns import (
    CANCELLED_REASON,
    REVOKED_MAX_LENGTH,
    Master,
    RetryPolicy,
    Revocations,
    list_dead_letters,
    revocations,
)
from tests.fleet.conftest import Cleanup
from tests.support.waiting import wait_until


def _name() -> str:
    return f"cancel-{uuid.uuid4().hex[:10]}"


async def _cancelled(channel: Any, task: str) -> list[str | None]:
    letters = await list_dead_letters(channel, task)
    return [letter.message_id for letter in letters if letter.reason == CANCELLED_REASON]


async def test_a_cancelled_queued_task_never_starts_even_on_a_worker_started_later(
    connection: Any, cleanup: Cleanup, revoked: list[str]
) -> None:
    task = cleanup.queue(_name())
    revoked.append(task)
    channel = await connection.channel()
    await channel.queue_declare(task, durable=True)
    master = Master(channel)
    await master.create_task(task, {"n": 1}, message_id="doomed")
    await master.create_task(task, {"n": 2}, message_id="spared")
    assert await master.cancel(task, "doomed") is False  # nothing runs it yet
    revocations.of(task).clear()  # as in a process started after the cancel
    ran: list[int] = []

    async def work(n: int) -> None:
        ran.append(n)

    async with Agent(connection, "cancel-tests", interval=60) as agent:
        await agent.start(tasks=[task])  # reads the revocations before consuming
        await master.create_worker(task, work)
        reader = await connection.channel()
        await wait_until(lambda: _cancelled(reader, task), 10, "the cancelled task dead-lettered")
        await wait_until(lambda: ran, 10, "the other task run")
        await master.close()
    assert ran == [2]
    assert await _cancelled(reader, task) == ["doomed"]


async def test_a_cancelled_task_waiting_for_a_retry_does_not_run_again(
    connection: Any, cleanup: Cleanup, revoked: list[str]
) -> None:
    task = cleanup.queue(_name())
    revoked.append(task)
    master = Master(await connection.channel())
    runs: list[float] = []

    async def flaky(n: int) -> None:
        runs.append(time.monotonic())
        raise RuntimeError("try again later")

    policy = RetryPolicy(max_attempts=3, backoff=0.5, jitter=0)
    await master.create_worker(task, flaky, retries=policy)
    await master.create_task(task, {"n": 1}, message_id="later")
    await wait_until(lambda: runs, 10, "the first attempt")
    await master.cancel(task, "later")
    reader = await connection.channel()
    await wait_until(lambda: _cancelled(reader, task), 10, "the retry dead-lettered as cancelled")
    assert len(runs) == 1
    await master.close()


async def test_a_running_async_task_gets_cancelled_error_and_is_dead_lettered_never_retried(
    connect_broker: Any, cleanup: Cleanup, revoked: list[str]
) -> None:
    task = cleanup.queue(_name())
    revoked.append(task)
    serving, elsewhere = await connect_broker(), await connect_broker()
    master = Master(await serving.channel())
    started: list[int] = []
    seen: list[BaseException] = []

    async def long(n: int) -> None:
        started.append(n)
        try:
            await asyncio.sleep(60)
        except BaseException as exc:
            seen.append(exc)
            raise

    async with Agent(serving, "cancel-tests", interval=60) as agent:
        agent.attach(master)
        await agent.start()
        await master.create_worker(task, long, retries=RetryPolicy(max_attempts=5))
        await master.create_task(task, {"n": 1}, message_id="long-one")
        await wait_until(lambda: started, 10, "the task running")
        # From another process's connection: the worker learns it from the broadcast.
        await cancel(await elsewhere.channel(), task, "long-one")
        reader = await elsewhere.channel()
        await wait_until(lambda: _cancelled(reader, task), 10, "the running task dead-lettered")
        assert [type(exc) for exc in seen] == [asyncio.CancelledError]
        await wait_until(lambda: agent.counts()["dead_lettered"], 10, "counted as dead-lettered")
        assert agent.counts()["retried"] == 0
        # The worker goes on with other tasks.
        await master.create_task(task, {"n": 2}, message_id="next")
        await wait_until(lambda: started == [1, 2], 10, "the next task started")
        await master.close(timeout=0.1)


async def test_a_running_plain_function_is_interrupted_in_its_thread(
    connection: Any, cleanup: Cleanup, revoked: list[str]
) -> None:
    task = cleanup.queue(_name())
    revoked.append(task)
    master = Master(await connection.channel())
    started = threading.Event()
    stopped = threading.Event()

    def spin(n: int) -> None:
        started.set()
        try:
            while True:
                time.sleep(0.005)
        finally:
            stopped.set()

    await master.create_worker(task, spin)
    await master.create_task(task, {"n": 1}, message_id="spinning")
    await wait_until(started.is_set, 10, "the function running")
    assert await master.cancel(task, "spinning") is True
    reader = await connection.channel()
    await wait_until(lambda: _cancelled(reader, task), 10, "the interrupted task dead-lettered")
    assert stopped.is_set()
    await master.close()


def test_revocations_are_bounded_in_number_and_age() -> None:
    kept = Revocations()
    for n in range(REVOKED_MAX_LENGTH + 5):
        kept.add("t", str(n))
    assert not kept.revoked("t", "0") and kept.revoked("t", str(REVOKED_MAX_LENGTH + 4))
    kept.add("t", "old", at=time.time() - 25 * 3600)
    assert not kept.revoked("t", "old")
    assert not kept.revoked("other", "1") and not kept.revoked("t", None)
