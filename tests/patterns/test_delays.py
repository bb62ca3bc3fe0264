"""Delayed tasks: held by the broker on the delay ladder, never early, in any order."""

from __future__ import annotations

import asyncio
import datetime
import itertools
import time
from pathlib import Path
from typing import Any

import pytest

from leveret import App
from leveret.amqp import Channel
from leveret.blocking import BlockingClient
from leveret.exceptions import ConfigurationError, NotFoundError, UnroutableError
from leveret.patterns import (
    MAX_DELAY,
    UNDELIVERABLE,
    Master,
    RetryPolicy,
    current_task,
    delay_queues,
    list_dead_letters,
    replay_dead_letters,
)
from leveret.testing import MemoryBroker, drain
from tests.cli.conftest import base_env, leveret
from tests.conftest import AMQP_URL
from tests.patterns.conftest import Cleanup, ConnectBroker, dead_letters
from tests.support.waiting import wait_until

UTC = datetime.UTC
REASON = "x-leveret-reason"


class Arrivals:
    """A task function that notes when each task arrived (by its ``name``)."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.order: list[str] = []

    async def __call__(self, *, name: str) -> None:
        self.at[name] = time.monotonic()
        self.order.append(name)


async def delayed_count(channel: Channel, task: str) -> int:
    """How many copies of ``task`` wait in its delay queues now (none if there are none)."""
    waiting = 0
    for queue in delay_queues(task):
        try:
            waiting += (await channel.queue_declare(queue, passive=True)).message_count
        except NotFoundError:  # the broker closed that channel
            channel = await channel.connection.channel()
    return waiting


async def test_a_delayed_task_never_arrives_before_its_delay(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    arrivals = Arrivals()
    master = Master(channel)
    await master.create_worker(cleanup.queue(unique), arrivals)
    sent: dict[str, float] = {}
    delays: dict[str, float | datetime.timedelta] = {
        "a": 0.05,
        "b": 0.3,
        "c": 0.7,
        "d": datetime.timedelta(seconds=1.1),
    }
    for name, delay in delays.items():
        sent[name] = time.monotonic()
        await master.create_task(unique, {"name": name}, delay=delay)
    await wait_until(lambda: len(arrivals.at) == 4, 20, "the delayed tasks")
    for name, delay in delays.items():
        seconds = delay.total_seconds() if isinstance(delay, datetime.timedelta) else delay
        assert arrivals.at[name] - sent[name] >= seconds, name
    assert arrivals.order == ["a", "b", "c", "d"]


async def test_a_short_delay_sent_after_a_long_one_arrives_first(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    arrivals = Arrivals()
    master = Master(channel)
    await master.create_worker(cleanup.queue(unique), arrivals)
    await master.create_task(unique, {"name": "long"}, delay=3.0)
    sent = time.monotonic()
    await master.create_task(unique, {"name": "short"}, delay=0.2)
    await wait_until(lambda: "short" in arrivals.at, 10, "the short delay")
    assert arrivals.order == ["short"]  # not held behind the long one
    assert arrivals.at["short"] - sent < 2.5
    await wait_until(lambda: "long" in arrivals.at, 20, "the long delay")
    assert arrivals.order == ["short", "long"]


async def test_a_task_with_an_eta_arrives_at_it_and_not_before(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    arrivals = Arrivals()
    master = Master(channel)
    await master.create_worker(cleanup.queue(unique), arrivals)
    eta = datetime.datetime.now(UTC) + datetime.timedelta(seconds=0.5)
    await master.create_task(unique, {"name": "eta"}, eta=eta)
    past = datetime.datetime.now(
        datetime.timezone(datetime.timedelta(hours=2))
    ) - datetime.timedelta(hours=1)
    await master.create_task(unique, {"name": "past"}, eta=past)  # due already: at once
    await wait_until(lambda: len(arrivals.at) == 2, 10, "both tasks")
    assert arrivals.order == ["past", "eta"]
    assert datetime.datetime.now(UTC) >= eta


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"eta": datetime.datetime(2030, 1, 1)}, "is naive; give it a timezone"),
        ({"delay": 5, "eta": datetime.datetime(2030, 1, 1, tzinfo=UTC)}, "not both"),
        ({"delay": -1}, "delay=-1 is negative"),
        ({"delay": datetime.timedelta(seconds=-3)}, "is negative"),
        ({"delay": MAX_DELAY + 1}, "is longer than the longest delay, 34,359,738 s"),
        ({"eta": datetime.datetime.now(UTC) + datetime.timedelta(days=400)}, "longest delay"),
        ({"delay": "soon"}, "delay='soon' is not seconds or a timedelta"),
        ({"delay": 5, "expiration": 10}, "expiration= cannot go with a delay"),
    ],
)
async def test_a_delay_that_cannot_be_kept_is_refused_and_nothing_is_sent(
    channel: Channel, unique: str, cleanup: Cleanup, options: dict[str, Any], words: str
) -> None:
    arrivals = Arrivals()
    master = Master(channel)
    await master.create_worker(cleanup.queue(unique), arrivals)
    with pytest.raises(ConfigurationError, match=words):
        await master.create_task(unique, {"name": "x"}, **options)
    assert (await channel.queue_declare(unique, passive=True)).message_count == 0
    assert await delayed_count(channel, unique) == 0  # (this may close the channel)
    assert MAX_DELAY >= 365 * 86400


def test_a_retry_policy_cannot_wait_longer_than_the_longest_delay() -> None:
    with pytest.raises(ConfigurationError, match="longer than the longest delay"):
        RetryPolicy(max_delay=MAX_DELAY + 1)
    assert RetryPolicy(max_delay=MAX_DELAY).max_delay == MAX_DELAY


async def test_a_task_whose_name_cannot_be_delayed_still_runs_but_is_not_retried(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    name = cleanup.queue(f"{unique}.*")  # '*' is a wildcard word to the delay ladder
    runs: list[int] = []

    async def fails(*, n: int) -> None:
        runs.append(n)
        raise ValueError("no")

    master = Master(channel)
    await master.create_worker(name, fails, retries=RetryPolicy(max_attempts=3, backoff=0.1))
    await master.create_task(name, {"n": 1})
    (dead,) = await dead_letters(channel, name, 1)
    assert runs == [1]
    assert "failed after 1 attempt, not retried: task" in dead.headers[REASON]
    assert "cannot be delayed" in dead.headers[REASON]
    with pytest.raises(ConfigurationError, match="as a wildcard"):
        await master.create_task(name, {"n": 2}, delay=1)


async def test_a_delay_of_zero_is_an_ordinary_task(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    arrivals = Arrivals()
    master = Master(channel)
    await master.create_worker(cleanup.queue(unique), arrivals)
    await master.create_task(unique, {"name": "zero"}, delay=0)
    await master.create_task(unique, {"name": "none"}, delay=None)
    await wait_until(lambda: len(arrivals.at) == 2, 10, "both tasks")


async def test_a_delayed_task_nobody_declared_is_unroutable_and_the_channel_stays_open(
    channel: Channel, unique: str
) -> None:
    master = Master(channel)
    with pytest.raises(UnroutableError, match="no worker ever declared it"):
        await master.create_task(unique, {"name": "x"}, delay=1)
    assert not channel.is_closed
    with pytest.raises(UnroutableError):
        await master.create_task(unique, {"name": "x"})  # the same channel still publishes


async def test_a_waiting_task_is_on_the_broker_not_unacked_in_a_worker(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    arrivals = Arrivals()
    master = Master(channel)
    worker = await master.create_worker(cleanup.queue(unique), arrivals, prefetch_count=1)
    await master.create_task(unique, {"name": "later"}, delay=3)
    await master.create_task(unique, {"name": "now"})
    await wait_until(lambda: arrivals.order == ["now"], 10, "the ordinary task")
    # The worker's one prefetch slot was free for it; the delayed task waits elsewhere.
    assert worker.in_flight == 0
    assert (await channel.queue_declare(unique, passive=True)).message_count == 0
    assert await delayed_count(channel, unique) == 1
    await wait_until(lambda: arrivals.order == ["now", "later"], 20, "the delayed task")


async def test_a_delayed_task_reaches_an_exclusive_task_queue_from_another_connection(
    channel: Channel, connect_broker: ConnectBroker, unique: str, cleanup: Cleanup
) -> None:
    arrivals = Arrivals()
    owner = await connect_broker()
    master = Master(await owner.channel())
    await master.create_worker(cleanup.queue(unique), arrivals, exclusive=True)
    await Master(channel).create_task(unique, {"name": "x"}, delay=0.2)
    await wait_until(lambda: "x" in arrivals.at, 10, "the delayed task")
    await master.close()  # a throwaway worker: its delay queues go with it
    await owner.close()


async def test_a_delayed_task_reaches_a_quorum_task_queue(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    arrivals = Arrivals()
    master = Master(channel)
    await master.create_worker(cleanup.queue(unique), arrivals, queue_type="quorum")
    sent = time.monotonic()
    await master.create_task(unique, {"name": "q"}, delay=0.4)
    await wait_until(lambda: "q" in arrivals.at, 10, "the delayed task")
    assert arrivals.at["q"] - sent >= 0.4


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_retries_through_the_same_delay_queues_are_not_lost(
    channel: Channel, unique: str, cleanup: Cleanup, queue_type: Any
) -> None:
    # The same delay three times walks the same delay queues three times: a copy that
    # kept the broker's dead-letter history would be dropped there as a cycle.
    runs: list[tuple[int, float]] = []

    async def flaky(*, name: str) -> None:
        runs.append((current_task().attempt, time.monotonic()))
        if current_task().attempt < 4:
            raise ConnectionError("not yet")

    policy = RetryPolicy(max_attempts=4, backoff=0.1, factor=1, jitter=0)
    master = Master(channel)
    await master.create_worker(cleanup.queue(unique), flaky, retries=policy, queue_type=queue_type)
    await master.create_task(unique, {"name": "r"})
    await wait_until(lambda: len(runs) == 4, 20, "four attempts")
    assert [attempt for attempt, _ in runs] == [1, 2, 3, 4]
    assert all(later - earlier >= 0.1 for (_, earlier), (_, later) in itertools.pairwise(runs))


async def test_a_delayed_task_that_fails_is_dead_lettered_under_its_own_name_and_replays(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    seen: list[int] = []

    async def fails_once(*, n: int) -> None:
        seen.append(n)
        if len(seen) == 1:
            raise ValueError("first time")

    master = Master(channel)
    await master.create_worker(cleanup.queue(unique), fails_once)
    await master.create_task(unique, {"n": 7}, delay=0.1)
    letters: list[Any] = []

    async def dead_lettered() -> bool:
        letters[:] = await list_dead_letters(channel, unique)
        return len(letters) == 1

    await wait_until(dead_lettered, 10, "the dead letter")
    assert letters[0].routing_key == unique
    assert await replay_dead_letters(channel, unique) == 1
    await wait_until(lambda: seen == [7, 7], 10, "the replayed task")


@pytest.mark.rabbitmq_only  # a queue the user deleted while a task waited for it
async def test_a_delayed_task_whose_queue_was_deleted_meanwhile_waits_in_undeliverable(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    master = Master(channel)
    worker = await master.create_worker(cleanup.queue(unique), Arrivals())
    await master.create_task(unique, {"name": "orphan"}, delay=0.5, message_id=unique)
    await worker.close()
    await channel.queue_delete(unique)

    async def found() -> bool:
        ok = await channel.queue_declare(UNDELIVERABLE, passive=True)
        for _ in range(ok.message_count):
            delivery = await channel.get(UNDELIVERABLE)
            assert delivery is not None
            if delivery.properties.message_id == unique:
                delivery.ack()
                return True
            delivery.nack(requeue=True)
        return False

    await wait_until(found, 10, "the task in the undeliverable queue")


async def test_the_apps_send_in_and_send_at_delay_a_task_and_keep_its_own_keywords(
    broker_kind: str, connection: Any, unique: str, cleanup: Cleanup
) -> None:
    app = App(AMQP_URL, prefix=unique)
    got: list[tuple[str, float]] = []

    @app.task
    async def remind(*, delay: str, eta: str) -> None:  # the same names as the options
        got.append((delay, time.monotonic()))

    cleanup.queue(remind.name)

    async def check() -> None:
        sent = time.monotonic()
        await remind.send_in(0.3, delay="in", eta="kwarg")
        soon = datetime.datetime.now(UTC) + datetime.timedelta(seconds=0.3)
        await remind.send_at(soon, delay="at", eta="kwarg")
        with pytest.raises(TypeError, match="unexpected"):
            await remind.send_in(1, later=True)  # type: ignore[call-arg]
        await wait_until(lambda: len(got) == 2, 10, "the delayed tasks")
        assert sorted(name for name, _ in got) == ["at", "in"]
        assert all(at - sent >= 0.3 for _, at in got)

    if broker_kind == "memory":
        async with app.testing():
            await check()
        return
    master, rpc = await app.start(connection)
    try:
        await check()
    finally:
        await master.close()
        await rpc.close()
        await app.close()


@pytest.mark.rabbitmq_only  # a client of its own thread, on the real broker
async def test_the_blocking_client_sends_delayed_tasks(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    arrivals = Arrivals()
    master = Master(channel)
    await master.create_worker(cleanup.queue(unique), arrivals)
    eta = datetime.datetime.now(UTC) + datetime.timedelta(seconds=0.3)

    def send() -> None:
        with BlockingClient(AMQP_URL) as client:
            client.create_task(unique, {"name": "in"}, delay=0.3)
            client.create_task(unique, {"name": "at"}, eta=eta)
            with pytest.raises(ConfigurationError, match="naive"):
                client.create_task(unique, {"name": "x"}, eta=datetime.datetime(2030, 1, 1))

    sent = time.monotonic()
    await asyncio.to_thread(send)
    await wait_until(lambda: len(arrivals.at) == 2, 10, "the delayed tasks")
    assert all(at - sent >= 0.3 for at in arrivals.at.values())


@pytest.mark.rabbitmq_only  # the leveret command, against the real broker
async def test_leveret_status_shows_how_many_tasks_wait_in_delay_queues(
    channel: Channel, unique: str, cleanup: Cleanup, tmp_path: Path
) -> None:
    (tmp_path / "delayapp.py").write_text(
        "from leveret import App\n"
        f"app = App(prefix={unique!r})\n"
        "@app.task\n"
        "async def later(*, n: int) -> None: ...\n"
    )
    task = cleanup.queue(f"{unique}.later")
    master = Master(channel)
    await master.create_worker(task, Arrivals())
    await master.close()  # nobody consumes: the ready count is what arrived
    for n in range(3):
        await master.create_task(task, {"n": n}, delay=600)
    await master.create_task(task, {"n": 9})
    env = base_env(AMQP_URL=AMQP_URL, PYTHONPATH=str(tmp_path))
    status = await asyncio.to_thread(leveret, "status", "delayapp:app", env=env)
    assert status.returncode == 0, status.stderr
    lines = [line.split() for line in status.stdout.splitlines()]
    assert lines[0] == ["queue", "ready", "consumers", "delayed"]
    assert [task, "1", "0", "3"] in lines


async def test_on_the_in_memory_broker_advance_lets_an_hour_long_delay_pass_at_once(
    leveret_broker: MemoryBroker, leveret_master: Master
) -> None:
    arrivals = Arrivals()
    await leveret_master.create_worker("reminders", arrivals)
    await leveret_master.create_task("reminders", {"name": "hour"}, delay=3600)
    await leveret_master.create_task("reminders", {"name": "day"}, delay=86400)
    leveret_broker.advance(3599)
    await drain(leveret_master, retries=False)
    assert arrivals.order == []  # not a second early
    leveret_broker.advance(1.1)
    await wait_until(lambda: arrivals.order == ["hour"], 5, "the hour-long delay")
    leveret_broker.advance(86400)
    await wait_until(lambda: arrivals.order == ["hour", "day"], 5, "the day-long delay")
