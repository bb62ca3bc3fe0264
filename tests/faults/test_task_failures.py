"""Task functions that raise, hang past their time limit, or kill their worker process.

Retries, timeouts and the dead-letter queue must do what they promise: a task
that keeps failing runs ``max_attempts`` times and then waits in ``<task>.dlq``
with headers saying why; a task that kills its worker is counted as a
redelivery each time and, past ``max_redeliveries``, dead-lettered instead of
killing workers forever. Every other task is processed exactly once: nothing
is lost, nothing is left in the task queue or its delay queues.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from leveret.amqp import Channel, Connection
from leveret.patterns import (
    DeadLetter,
    Master,
    RetryPolicy,
    current_task,
    dead_letter_queue,
    delay_queues,
    list_dead_letters,
)
from tests.faults.processes import Spawned
from tests.faults.support import (
    Ledger,
    declared,
    publish_until,
    read_log,
    runs_in,
    settled_and_empty,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.faults


async def _dead_lettered(channel: Channel, queue: str, expected: int) -> list[DeadLetter]:
    """The dead letters of ``queue`` once there are ``expected`` of them (they stay there)."""

    async def arrived() -> bool:
        ok = await channel.queue_declare(dead_letter_queue(queue), passive=True)
        return ok.message_count >= expected

    await wait_until(arrived, 30, f"{expected} dead letters")
    return await list_dead_letters(channel, queue, limit=expected + 10)


def _ids(letters: list[DeadLetter]) -> set[int]:
    return {json.loads(letter.body)["task_id"] for letter in letters}


def _account(ledger: Ledger, dead: set[int], figures: dict[str, Any]) -> None:
    """A task is accounted for if it was processed or is in the dead-letter queue."""
    figures.update(ledger.figures(), dead_lettered=len(dead), lost=len(ledger.lost - dead))
    assert not ledger.lost - dead


async def test_a_task_that_keeps_raising_is_retried_then_dead_lettered_with_the_reason(
    figures: dict[str, Any], connection: Connection, amqp_url: str, task_queue: str
) -> None:
    tasks = 60
    failing = set(range(0, tasks, 6))
    ledger = Ledger()
    attempts: defaultdict[int, list[int]] = defaultdict(list)

    async def task(*, task_id: int) -> None:
        attempts[task_id].append(current_task().attempt)
        if task_id in failing:
            raise ValueError(f"task {task_id} cannot be done")
        ledger.processed(task_id)

    channel = await connection.channel()
    master = Master(channel)
    policy = RetryPolicy(max_attempts=3, backoff=0.05, factor=2, jitter=0)
    await master.create_worker(task_queue, task, retries=policy, prefetch_count=16)
    await publish_until(master, task_queue, ledger, asyncio.Event(), limit=tasks)

    letters = await _dead_lettered(channel, task_queue, len(failing))
    await wait_until(lambda: len(ledger.runs) == tasks - len(failing), 10, "the other tasks")
    await wait_until(lambda: settled_and_empty(task_queue), 30, "an empty, settled queue")
    await master.close()
    _account(ledger, _ids(letters), figures)
    figures["attempts_of_failing"] = sorted({len(attempts[n]) for n in failing})

    assert _ids(letters) == failing and len(letters) == len(failing)
    assert all(attempts[n] == [1, 2, 3] for n in failing)
    assert all(attempts[n] == [1] for n in set(range(tasks)) - failing)
    for letter in letters:
        n = json.loads(letter.body)["task_id"]
        assert letter.reason == "failed after 3 attempts"
        assert letter.attempts == 3 and letter.routing_key == task_queue
        assert letter.exception_type == "ValueError"
        assert letter.exception_message == f"task {n} cannot be done"
        assert letter.traceback is not None and "ValueError" in letter.traceback
        assert letter.dead_lettered_at is not None
    for queue in delay_queues(task_queue):  # they hold nothing once the retries ran
        assert await declared(amqp_url, queue) == (0, 0)
    assert await declared(amqp_url, task_queue) == (0, 0)


async def test_a_task_that_hangs_past_its_time_limit_is_retried_then_dead_lettered(
    figures: dict[str, Any], connection: Connection, amqp_url: str, task_queue: str
) -> None:
    tasks = 20
    hanging = {0, 5, 10, 15}
    ledger = Ledger()
    attempts: defaultdict[int, list[int]] = defaultdict(list)

    async def task(*, task_id: int) -> None:
        attempts[task_id].append(current_task().attempt)
        if task_id in hanging:
            await asyncio.sleep(3600)
        ledger.processed(task_id)

    loop = asyncio.get_running_loop()
    channel = await connection.channel()
    master = Master(channel)
    policy = RetryPolicy(max_attempts=2, backoff=0.05, jitter=0)
    await master.create_worker(
        task_queue, task, retries=policy, time_limit=0.2, prefetch_count=len(hanging)
    )
    started = loop.time()
    await publish_until(master, task_queue, ledger, asyncio.Event(), limit=tasks)

    letters = await _dead_lettered(channel, task_queue, len(hanging))
    seconds = loop.time() - started
    await wait_until(lambda: len(ledger.runs) == tasks - len(hanging), 10, "the other tasks")
    await wait_until(lambda: settled_and_empty(task_queue), 30, "an empty, settled queue")
    await master.close()
    _account(ledger, _ids(letters), figures)
    figures["seconds_to_dead_letter"] = round(seconds, 2)

    assert _ids(letters) == hanging and len(letters) == len(hanging)
    assert all(attempts[n] == [1, 2] for n in hanging)
    # Two attempts of 0.2 s and a short backoff: the limit stops a hang, not the clock.
    assert seconds < 5
    for letter in letters:
        assert letter.reason == "failed after 2 attempts" and letter.attempts == 2
        assert letter.exception_type == "TimeoutError"
        assert letter.exception_message == (f"task {task_queue!r} ran longer than its 0.2 s limit")
    for queue in delay_queues(task_queue):
        assert await declared(amqp_url, queue) == (0, 0)
    assert await declared(amqp_url, task_queue) == (0, 0)


async def test_a_task_that_exits_its_worker_process_is_dead_lettered_after_max_redeliveries(
    figures: dict[str, Any],
    connection: Connection,
    amqp_url: str,
    task_queue: str,
    logs: Callable[[str], Path],
) -> None:
    tasks, poison, max_redeliveries = 30, 10, 2
    # Prefetch 1: the poison task is the only one its worker holds when it exits
    # (with more, the tasks beside it would be redelivered with it, each time).
    options = ["--url", amqp_url, "--queue", task_queue, "--prefetch", "1"]
    options += ["--max-redeliveries", str(max_redeliveries), "--exit-on", str(poison)]
    workers = [Spawned("worker", logs("worker0"), *options)]
    ledger = Ledger()
    exits: list[int | None] = []
    try:
        await wait_until(workers[0].ready, 30, "the first worker consuming")
        channel = await connection.channel()
        await publish_until(Master(channel), task_queue, ledger, asyncio.Event(), limit=tasks)

        def processed() -> list[int]:
            return [n for worker in workers for n in runs_in(worker.log)]

        async def settled() -> bool:
            if not workers[-1].running:  # restart the worker each time it dies
                exits.append(workers[-1].process.returncode)
                workers.append(Spawned("worker", logs(f"worker{len(workers)}"), *options))
                return False
            dead, _ = await declared(amqp_url, dead_letter_queue(task_queue))
            return dead == 1 and len(set(processed())) == tasks - 1

        await wait_until(settled, 60, "every task processed or dead-lettered")
        await wait_until(lambda: settled_and_empty(task_queue), 30, "an empty, settled queue")
        assert await asyncio.to_thread(workers[-1].terminate) == 0, workers[-1].stderr()
        letters = await list_dead_letters(channel, task_queue)
        for n in processed():
            ledger.processed(n)
        crashes = [
            (int(fields[1]), int(fields[3]))
            for worker in workers
            for fields in read_log(worker.log)
            if fields[0] == "crash"
        ]
        _account(ledger, _ids(letters), figures)
        figures.update(
            poison_runs=len(crashes), worker_exits=len(exits), workers_started=len(workers)
        )

        # It ran once, then once per tolerated redelivery, each time killing its worker.
        assert crashes == [(poison, redeliveries) for redeliveries in range(max_redeliveries + 1)]
        assert exits == [1] * (max_redeliveries + 1)
        (letter,) = letters
        assert json.loads(letter.body) == {"task_id": poison}
        assert letter.reason.startswith(f"redelivered {max_redeliveries + 1} times")
        assert (letter.properties.headers or {}).get("x-leveret-redeliveries") == max_redeliveries
        # Every other task ran exactly once, and the last worker is still serving.
        assert ledger.runs.keys() == set(range(tasks)) - {poison}
        assert max(ledger.runs.values()) == 1
        assert await declared(amqp_url, task_queue) == (0, 0)
    finally:
        for worker in workers:
            worker.kill()
