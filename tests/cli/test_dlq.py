"""``leveret dlq show``: which dead letter, and how it reads."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from leveret import connect
from leveret.patterns import Master, dead_letter_queue, delay_queues, list_dead_letters
from tests.cli.conftest import base_env, leveret
from tests.conftest import AMQP_URL
from tests.support.waiting import wait_until


@pytest.fixture
async def failed_task(amqp_url: str) -> AsyncIterator[str]:
    """A task whose first two runs failed: two dead letters, m0 then m1."""
    task = f"dlq-show-{uuid.uuid4().hex[:8]}"

    failed: list[int] = []

    async def fail(*, n: int) -> None:
        failed.append(n)
        raise ValueError(f"bad {n}")

    async with await connect(amqp_url) as connection:
        channel = await connection.channel()
        master = Master(channel)
        await master.create_worker(task, fail, prefetch_count=1)
        for n in range(2):
            await master.create_task(task, kwargs={"n": n}, message_id=f"m{n}")
        await wait_until(lambda: len(failed) == 2, 5, "two failures")
        await master.close()  # once the tasks it ran are settled: dead-lettered
        assert len(await list_dead_letters(channel, task)) == 2
        try:
            yield task
        finally:
            for queue in (task, dead_letter_queue(task), *delay_queues(task)):
                await channel.queue_delete(queue)


def _show(*args: str) -> str:
    result = leveret("dlq", "show", *args, "--url", AMQP_URL, env=base_env())
    assert result.returncode == 0, result.stderr
    return result.stdout


async def test_dlq_show_takes_the_index_as_dlq_list_numbers_them(failed_task: str) -> None:
    first = await asyncio.to_thread(_show, failed_task)
    second = await asyncio.to_thread(_show, failed_task, "1")
    assert first.splitlines()[0] == "message id:  m0"
    assert second.splitlines()[0] == "message id:  m1"
    assert "exception:   ValueError: bad 1" in second


async def test_dlq_show_prints_one_header_a_line_and_the_traceback_once(failed_task: str) -> None:
    shown = await asyncio.to_thread(_show, failed_task, "0")
    lines = shown.splitlines()
    headers = lines[lines.index("headers:") + 1 : lines.index("body:")]
    names = [line.split(":")[0].strip() for line in headers]
    assert "x-leveret-reason" in names and "x-leveret-exception-type" in names
    assert all(line.startswith("  x-") for line in headers)
    assert "  x-leveret-reason: failed after 1 attempt" in headers
    assert shown.count("Traceback (most recent call last)") == 1
    assert lines[lines.index("traceback:") + 1] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: bad 0"
    assert "  content_type: application/json" in lines


async def test_dlq_show_names_a_dead_letter_that_is_not_there(failed_task: str) -> None:
    result = await asyncio.to_thread(
        leveret, "dlq", "show", failed_task, "5", "--url", AMQP_URL, env=base_env()
    )
    assert result.returncode == 1
    assert result.stderr == f"leveret dlq show: no dead letter number 5 in {failed_task}.dlq\n"
