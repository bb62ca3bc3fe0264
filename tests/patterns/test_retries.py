"""Retries with backoff, redelivery limits, time limits and quorum queues."""

import asyncio
import itertools
import json
import threading
import time
from typing import Any

import pytest

from leveret.amqp import Channel
from leveret.exceptions import ConfigurationError, NoCurrentTaskError
from leveret.patterns import Master, NackMessage, RetryPolicy, current_task, delay_queues
from tests.patterns.conftest import Cleanup, dead_letters
from tests.support.waiting import wait_until

REASON = "x-leveret-reason"


async def test_failing_task_is_retried_with_backoff_then_dead_lettered(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    runs: list[tuple[int, float]] = []

    async def flaky(*, n: int) -> None:
        runs.append((current_task().attempt, time.monotonic()))
        raise ConnectionError("upstream is down")

    policy = RetryPolicy(max_attempts=3, backoff=0.2, factor=2, jitter=0)
    master = Master(channel)
    await master.create_worker(cleanup.queue(unique), flaky, retries=policy)
    await master.create_task(unique, kwargs={"n": 1})
    (dead,) = await dead_letters(channel, unique, 1)
    assert [attempt for attempt, _ in runs] == [1, 2, 3]
    gaps = [later - earlier for (_, earlier), (_, later) in itertools.pairwise(runs)]
    assert 0.2 <= gaps[0] < 1.0 and 0.4 <= gaps[1] < 1.5
    assert dead.headers[REASON] == "failed after 3 attempts"
    assert dead.headers["x-leveret-attempts"] == 3
    assert dead.headers["x-leveret-exception-type"] == "ConnectionError"


async def test_a_task_that_recovers_on_retry_is_acked_and_not_dead_lettered(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    done: list[int] = []

    async def second_time_lucky(*, n: int) -> None:
        if current_task().attempt == 1:
            raise ValueError("not yet")
        done.append(n)

    master = Master(channel)
    await master.create_worker(
        cleanup.queue(unique), second_time_lucky, retries=RetryPolicy(max_attempts=2, backoff=0.05)
    )
    await master.create_task(unique, kwargs={"n": 5})
    await wait_until(lambda: done == [5], 5, "the retried task to succeed")
    assert await dead_letters(channel, unique, 0) == []


async def test_a_waiting_retry_holds_no_worker_slot_and_blocks_no_other_task(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    order: list[str] = []

    async def task(*, name: str) -> None:
        order.append(f"{name}#{current_task().attempt}")
        if name == "slow" and current_task().attempt == 1:
            raise TimeoutError("try later")

    master = Master(channel)
    policy = RetryPolicy(max_attempts=2, backoff=1.0, jitter=0)
    await master.create_worker(cleanup.queue(unique), task, prefetch_count=1, retries=policy)
    await master.create_task(unique, kwargs={"name": "slow"})
    await wait_until(lambda: order == ["slow#1"], 5, "the first attempt")
    for i in range(3):
        await master.create_task(unique, kwargs={"name": f"other{i}"})
    await wait_until(lambda: len(order) == 4, 5, "the other tasks")
    assert order == ["slow#1", "other0#1", "other1#1", "other2#1"]

    async def retry_waits() -> bool:
        counts = [await channel.queue_declare(queue, passive=True) for queue in ladder]
        return sum(ok.message_count for ok in counts) == 1

    ladder = delay_queues(unique)
    # The retry waits in the task's delay queues, not in a worker.
    await wait_until(retry_waits, 5, "the retry in the delay queues")
    await wait_until(lambda: order[-1:] == ["slow#2"], 5, "the retry")


async def test_requeued_tasks_are_counted_and_dead_lettered_past_the_limit(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    runs = 0

    async def always_requeue(*, n: int) -> None:
        nonlocal runs
        runs += 1
        raise NackMessage(requeue=True)

    master = Master(channel)
    policy = RetryPolicy(max_redeliveries=2)
    await master.create_worker(cleanup.queue(unique), always_requeue, retries=policy)
    await master.create_task(unique, kwargs={"n": 1})
    (dead,) = await dead_letters(channel, unique, 1)
    assert runs == 3
    assert dead.headers[REASON].startswith("redelivered 3 times")


async def test_time_limit_fails_a_task_that_runs_too_long(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    async def hang(*, n: int) -> None:
        await asyncio.sleep(30)

    master = Master(channel)
    await master.create_worker(cleanup.queue(unique), hang, time_limit=0.2)
    started = time.monotonic()
    await master.create_task(unique, kwargs={"n": 1})
    (dead,) = await dead_letters(channel, unique, 1)
    assert time.monotonic() - started < 3
    headers = dead.headers
    assert headers["x-leveret-exception-type"] == "TimeoutError"
    assert "longer than its 0.2 s limit" in headers["x-leveret-exception-message"]


async def test_plain_functions_see_current_task_in_their_thread(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    seen: list[tuple[str, int, bool]] = []

    def task(*, n: int) -> None:
        info = current_task()
        seen.append(
            (info.name, info.attempt, threading.current_thread() is threading.main_thread())
        )

    master = Master(channel)
    await master.create_worker(cleanup.queue(unique), task)
    await master.create_task(unique, kwargs={"n": 1})
    await wait_until(lambda: seen, 5, "the task")
    assert seen == [(unique, 1, False)]


def test_current_task_outside_a_task_says_where_it_works() -> None:
    with pytest.raises(NoCurrentTaskError) as outside:
        current_task()
    assert str(outside.value) == (
        "current_task() was called outside a task: it works only in a function a worker "
        "runs (and in what that function calls)"
    )
    assert isinstance(outside.value, LookupError)  # as the bare context variable raised


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_attempts": 0}, "max_attempts=0"),
        ({"jitter": 2}, "jitter=2"),
        ({"factor": 0.5}, "factor >= 1"),
        ({"max_redeliveries": -1}, "max_redeliveries=-1"),
    ],
)
def test_retry_policies_that_make_no_sense_are_refused(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        RetryPolicy(**options)


async def test_quorum_worker_runs_tasks_and_the_broker_dead_letters_past_the_delivery_limit(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    runs: list[int] = []

    async def task(*, n: int) -> None:
        runs.append(n)
        if n == 0:
            raise NackMessage(requeue=True)

    master = Master(channel)
    await master.create_worker(
        cleanup.queue(unique), task, queue_type="quorum", retries=RetryPolicy(max_redeliveries=2)
    )
    await master.create_task(unique, kwargs={"n": 1})
    await master.create_task(unique, kwargs={"n": 0})
    (dead,) = await dead_letters(channel, unique, 1)
    assert json.loads(dead.body) == {"n": 0}
    assert dead.headers["x-death"][0]["reason"] == "delivery_limit"
    assert runs.count(1) == 1 and runs.count(0) == 3


async def test_quorum_queues_cannot_be_exclusive_or_auto_delete(channel: Channel) -> None:
    with pytest.raises(ConfigurationError, match="quorum queue is durable"):
        await Master(channel).create_worker("q", lambda: None, queue_type="quorum", exclusive=True)
    with pytest.raises(ConfigurationError, match="queue_type='stream'"):
        await Master(channel).create_worker("q", lambda: None, queue_type="stream")  # type: ignore[arg-type]
