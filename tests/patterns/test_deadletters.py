"""Dead-letter queues: listing, inspecting and replaying them, by function and by CLI."""

import asyncio
import subprocess
import sys

import pytest

from leveret.amqp import Channel
from leveret.exceptions import UnroutableError
from leveret.patterns import (
    Master,
    RejectMessage,
    dead_letter_queue,
    list_dead_letters,
    replay_dead_letters,
)
from tests.conftest import AMQP_URL
from tests.patterns.conftest import Cleanup
from tests.support.waiting import wait_until


async def _dead_letter_five(channel: Channel, queue: str, done: list[int]) -> Master:
    """A worker that fails tasks n < 5 the first time; five tasks end in the DLQ."""

    async def task(*, n: int) -> None:
        if n < 5 and n not in done:
            done.append(n)
            raise ValueError(f"bad {n}")
        done.append(100 + n)

    master = Master(channel)
    await master.create_worker(queue, task)
    for n in range(5):
        await master.create_task(queue, kwargs={"n": n}, message_id=f"m{n}")

    async def five_dead() -> bool:
        ok = await channel.queue_declare(dead_letter_queue(queue), passive=True)
        return ok.message_count == 5

    await wait_until(five_dead, 5, "five dead letters")
    return master


async def test_listing_dead_letters_shows_why_and_leaves_them_in_order(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    await _dead_letter_five(channel, cleanup.queue(unique), [])
    letters = await list_dead_letters(channel, unique, limit=10)
    assert [letter.message_id for letter in letters] == [f"m{n}" for n in range(5)]
    first = letters[0]
    assert first.reason == "failed after 1 attempt"
    assert (first.exception_type, first.exception_message) == ("ValueError", "bad 0")
    assert first.attempts == 1 and first.routing_key == unique
    assert first.dead_lettered_at is not None and "task" in (first.traceback or "")
    again = await list_dead_letters(channel, unique, limit=2)
    assert [letter.message_id for letter in again] == ["m0", "m1"]


async def test_replaying_dead_letters_runs_them_again_from_attempt_one(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    done: list[int] = []
    await _dead_letter_five(channel, cleanup.queue(unique), done)
    assert await replay_dead_letters(channel, unique, message_ids={"m1", "m3"}) == 2
    await wait_until(lambda: {101, 103} <= set(done), 5, "the replayed tasks")
    left = await list_dead_letters(channel, unique)
    assert [letter.message_id for letter in left] == ["m0", "m2", "m4"]
    assert await replay_dead_letters(channel, unique, limit=1) == 1
    assert await replay_dead_letters(channel, unique) == 2
    await wait_until(lambda: {100, 102, 104} <= set(done), 5, "the rest")
    assert await list_dead_letters(channel, unique) == []


async def test_replaying_when_no_worker_listens_raises_and_keeps_the_dead_letters(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    async def reject() -> None:
        raise RejectMessage(requeue=False)

    master = Master(channel)
    worker = await master.create_worker(cleanup.queue(unique), reject)
    await master.create_task(unique)
    await wait_until(lambda: worker.in_flight == 0, 5, "the task")
    await worker.close()
    await channel.queue_delete(unique)  # the worker is gone, and its queue with it
    with pytest.raises(UnroutableError, match="start a worker"):
        await replay_dead_letters(channel, unique)
    assert len(await list_dead_letters(channel, unique)) == 1


# The CLI runs in a subprocess: it can only reach the real broker.
def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "leveret.cli", *args, "--url", AMQP_URL],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.rabbitmq_only
async def test_the_dlq_command_lists_shows_and_replays(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    done: list[int] = []
    await _dead_letter_five(channel, cleanup.queue(unique), done)
    listed = await asyncio.to_thread(_cli, "dlq", "list", unique)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count("failed after 1 attempt (ValueError: bad") == 5
    shown = await asyncio.to_thread(_cli, "dlq", "show", unique, "--message-id", "m2")
    assert shown.returncode == 0, shown.stderr
    assert "ValueError: bad 2" in shown.stdout and '"n": 2' in shown.stdout
    assert "Traceback" in shown.stdout
    replayed = await asyncio.to_thread(_cli, "dlq", "replay", unique)
    assert replayed.returncode == 0, replayed.stderr
    assert f"moved 5 tasks from {unique}.dlq back to {unique}" in replayed.stdout
    await wait_until(lambda: len([n for n in done if n >= 100]) == 5, 5, "the replayed tasks")
    assert await list_dead_letters(channel, unique) == []


@pytest.mark.rabbitmq_only
async def test_the_dlq_command_names_a_missing_queue_and_an_unreachable_broker(
    amqp_url: str,  # skips (or fails under CI) without RabbitMQ, like the other tests
) -> None:
    missing = await asyncio.to_thread(_cli, "dlq", "list", "no-such-task-anywhere")
    assert missing.returncode == 1
    assert "no queue 'no-such-task-anywhere.dlq'" in missing.stderr
    down = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "leveret.cli",
            "dlq",
            "list",
            "x",
            "--url",
            "amqp://u:pw@127.0.0.1:1/",
        ],
        capture_output=True,
        text=True,
    )
    assert down.returncode == 1
    assert "127.0.0.1:1" in down.stderr and "rabbitmq-server -detached" in down.stderr
    assert ":pw@" not in down.stderr
