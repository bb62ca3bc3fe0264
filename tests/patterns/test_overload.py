"""Long tasks and overload: time limits count from the start of the function, plain
functions are stopped when they overrun, and callees under load waste no work and
answer promptly. Run on RabbitMQ and in memory."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from leveret.amqp import Channel, Connection
from leveret.patterns import DEFAULT_THREADS, RPC, Master, RetryPolicy
from tests.patterns.conftest import Cleanup, dead_letters
from tests.support.waiting import wait_until

REASON = "x-leveret-reason"


async def test_a_time_limit_counts_from_when_a_plain_function_starts(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    # Ten rounds of work for the threads there are: the last tasks start long after
    # they arrived, and none of them is near its limit.
    done: list[int] = []

    def work(*, n: int) -> None:
        time.sleep(0.1)
        done.append(n)

    master = Master(channel)
    worker = await master.create_worker(cleanup.queue(unique), work, time_limit=0.5)
    tasks = DEFAULT_THREADS * 10
    for n in range(tasks):
        await master.create_task(unique, kwargs={"n": n})
    await wait_until(lambda: len(done) == tasks and worker.in_flight == 0, 30, "every task")
    assert sorted(done) == list(range(tasks))
    assert await dead_letters(channel, unique, 0) == []


async def test_a_plain_worker_takes_no_more_tasks_than_it_has_threads(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    release = threading.Event()
    running = 0
    peak = 0
    lock = threading.Lock()

    def hold() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        release.wait(10)
        with lock:
            running -= 1

    master = Master(channel)
    worker = await master.create_worker(cleanup.queue(unique), hold)
    for _ in range(DEFAULT_THREADS * 3):
        await master.create_task(unique)
    await wait_until(lambda: running == DEFAULT_THREADS, 10, "every thread busy")
    assert worker.in_flight == DEFAULT_THREADS  # the rest wait in the broker, not here
    release.set()
    await wait_until(lambda: worker.in_flight == 0, 20, "every task")
    assert peak == DEFAULT_THREADS


async def test_a_plain_function_past_its_time_limit_is_stopped_then_dead_lettered(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    steps = 0
    stopped = threading.Event()

    def spin() -> None:
        nonlocal steps
        try:
            for _ in range(1000):
                steps += 1
                time.sleep(0.01)
        finally:
            stopped.set()

    master = Master(channel)
    await master.create_worker(cleanup.queue(unique), spin, time_limit=0.3)
    await master.create_task(unique)
    (letter,) = await dead_letters(channel, unique, 1)
    assert letter.headers[REASON] == "failed after 1 attempt"
    assert "ran longer than its 0.3 s limit" in letter.headers["x-leveret-exception-message"]
    assert stopped.is_set()  # dead-lettered only once its thread let go of it
    taken = steps
    await asyncio.sleep(0.2)  # proving a negative: it runs no more
    assert steps == taken < 100


async def test_a_plain_function_blocked_in_c_is_retried_only_after_it_returned(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    runs: list[tuple[float, float]] = []

    def block() -> None:
        started = time.monotonic()
        try:
            time.sleep(1.0)  # the interruption lands when this returns
        finally:
            runs.append((started, time.monotonic()))

    master = Master(channel)
    retries = RetryPolicy(max_attempts=2, backoff=0.01, jitter=0)
    await master.create_worker(cleanup.queue(unique), block, time_limit=0.2, retries=retries)
    await master.create_task(unique)
    (letter,) = await dead_letters(channel, unique, 1)
    assert letter.headers[REASON] == "failed after 2 attempts"
    assert len(runs) == 2
    (_, first_ended), (second_started, _) = runs
    assert second_started >= first_ended  # never two runs of one task at once


async def test_a_plain_function_that_finishes_after_its_limit_keeps_its_result(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    done: list[str] = []

    def late() -> None:
        time.sleep(0.5)  # blocked in C past the limit, then it returns at once
        done.append("done")

    master = Master(channel)
    worker = await master.create_worker(cleanup.queue(unique), late, time_limit=0.2)
    await master.create_task(unique)
    await wait_until(lambda: worker.in_flight == 0, 10, "the task to settle")
    # Interrupted as sleep() returned: it never got to append, so it timed out.
    assert done == []
    (letter,) = await dead_letters(channel, unique, 1)
    assert "ran longer than its 0.2 s limit" in letter.headers["x-leveret-exception-message"]


async def test_closing_a_worker_interrupts_a_plain_function_and_requeues_its_task_once(
    connection: Connection, unique: str, cleanup: Cleanup
) -> None:
    runs = 0
    started = threading.Event()

    def spin() -> None:
        nonlocal runs
        runs += 1
        started.set()
        for _ in range(1000):
            time.sleep(0.01)

    channel = await connection.channel()
    master = Master(channel)
    worker = await master.create_worker(cleanup.queue(unique), spin)
    await master.create_task(unique)
    await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
    began = time.monotonic()
    await worker.close(timeout=0.2)
    assert time.monotonic() - began < 3
    assert runs == 1
    ready = 0

    async def count_ready() -> None:
        nonlocal ready
        ready = (await channel.queue_declare(unique, passive=True)).message_count

    # Back in its queue (the broker requeues it a moment after the nack)...
    for _ in range(100):
        await count_ready()
        if ready:
            break
        await asyncio.sleep(0.02)
    assert ready == 1
    assert runs == 1  # ... and nothing runs it here any more


async def test_a_plain_callee_under_load_runs_no_call_whose_caller_gave_up(
    connection: Connection, unique: str, cleanup: Cleanup
) -> None:
    started: list[float] = []

    def slow(*, n: int) -> int:
        started.append(time.time())
        time.sleep(0.05)
        return n

    callee = await RPC.create(await connection.channel())
    await callee.register(cleanup.queue(unique), slow)
    caller = await RPC.create(await connection.channel())
    sent = time.time()
    timeout = 1.0
    results = await asyncio.gather(
        *(caller.call(unique, {"n": n}, timeout=timeout) for n in range(400)),
        return_exceptions=True,
    )
    answered = [r for r in results if isinstance(r, int)]
    assert answered, "no call was answered in time"
    await asyncio.sleep(0.5)  # proving a negative: late calls are skipped, not run
    stale = [at for at in started if at > sent + timeout + 0.1]
    assert stale == []
    await callee.close()
    await caller.close()


async def test_an_async_callee_busy_with_cpu_work_replies_as_each_call_finishes(
    connection: Connection, unique: str, cleanup: Cleanup
) -> None:
    def burn(seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    async def crunch(*, n: int) -> int:
        burn(0.005)  # CPU work that never yields to the event loop
        return n

    callee = await RPC.create(await connection.channel())
    await callee.register(cleanup.queue(unique), crunch)
    caller = await RPC.create(await connection.channel())
    calls = 400  # two seconds of work: the first replies are due long before that
    results: list[Any] = await asyncio.gather(
        *(caller.call(unique, {"n": n}, timeout=1.5) for n in range(calls)),
        return_exceptions=True,
    )
    answered = sum(isinstance(result, int) for result in results)
    assert answered >= calls // 4, f"{answered} of {calls} calls answered in time"
    await callee.close()
    await caller.close()
