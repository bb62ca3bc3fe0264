"""Worker heartbeats and the registry: who is alive, lost or stopped, and inspect."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from typing import Any

from leveret.fleet import (
    Agent,
    WorkerInfo,
    inspect,
    read_workers,
    serving,
)
from leveret.patterns import CONTROL_EXCHANGE, Master
from tests.fleet.conftest import Cleanup
from tests.support.waiting import wait_until

INTERVAL = 0.2


def _name() -> str:
    return f"fleet-{uuid.uuid4().hex[:10]}"


async def _mine(channel: Any, app: str) -> list[WorkerInfo]:
    return await read_workers(channel, app)


async def test_a_worker_process_is_listed_with_its_tasks_and_counts(
    connection: Any, cleanup: Cleanup
) -> None:
    app, task = _name(), cleanup.queue(_name())
    master = Master(await connection.channel())

    async def work(n: int) -> None:
        return None

    async with Agent(connection, app, interval=INTERVAL) as agent:
        agent.attach(master)
        await agent.start()
        await master.create_worker(task, work, prefetch_count=3)
        for n in range(3):
            await master.create_task(task, {"n": n})
        reader = await connection.channel()

        async def listed_done() -> WorkerInfo | None:
            found = await _mine(reader, app)
            if found and found[0].counts["done"] == 3:
                return found[0]
            return None

        info = await wait_until(listed_done, 10, "the worker listed with 3 tasks done")
        assert info.id == agent.id and info.state() == "alive"
        assert info.tasks == [task] and info.prefetch == {task: 3} and info.done == {task: 3}
        assert info.host and info.pid and info.version
        await master.close()


async def test_a_worker_that_stops_gracefully_is_shown_stopped_at_once(connection: Any) -> None:
    app = _name()
    agent = Agent(connection, app, interval=60)  # no second heartbeat during the test
    await agent.start()
    reader = await connection.channel()
    assert [info.state() for info in await _mine(reader, app)] == ["alive"]
    await agent.close()
    assert [info.state() for info in await _mine(reader, app)] == ["stopped"]


def test_a_worker_not_heard_from_for_two_intervals_is_lost_then_forgotten() -> None:
    now = time.time()
    heard = WorkerInfo(
        id="h:1:abcdef",
        app="a",
        host="h",
        pid=1,
        version="1",
        tasks=[],
        rpc=[],
        prefetch={},
        attempts={},
        in_flight=0,
        counts={},
        done={},
        rpc_latency={},
        started_at=now,
        sent_at=now,
        interval=2.0,
        stopped=False,
    )
    assert heard.state(now + 3.9) == "alive"
    assert heard.state(now + 4.1) == "lost" and not heard.dropped(now + 4.1)
    assert heard.dropped(now + 10.1)
    assert WorkerInfo.parse(heard.encode()) == heard
    assert WorkerInfo.parse(b"not json") is None


async def test_reading_the_registry_leaves_it_whole_for_the_next_reader(connection: Any) -> None:
    app = _name()
    async with Agent(connection, app, interval=60) as agent:
        await agent.start()
        reader = await connection.channel()
        first = await _mine(reader, app)
        second = await _mine(reader, app)
    assert [info.id for info in first] == [info.id for info in second] == [agent.id]


async def test_inspect_shows_each_running_task_and_returns_once_all_answered(
    connection: Any, cleanup: Cleanup
) -> None:
    app, task = _name(), cleanup.queue(_name())
    release = asyncio.Event()
    started = asyncio.Event()

    async def slow(n: int) -> None:
        started.set()
        await release.wait()

    master = Master(await connection.channel())
    async with (
        Agent(connection, app, interval=60) as agent,
        Agent(connection, app, interval=60) as idle,
    ):
        agent.attach(master)
        await agent.start()
        await idle.start()
        await master.create_worker(task, slow)
        await master.create_task(task, {"n": 1}, message_id="the-slow-one")
        await asyncio.wait_for(started.wait(), 10)
        found = await inspect(await connection.channel(), app, timeout=30)
        release.set()
        await master.close()
    assert found.seconds < 30  # it did not wait for the timeout
    assert found.missing == []
    assert found.running[idle.id] == []
    [running] = found.running[agent.id]
    assert (running.task, running.message_id, running.attempt) == (task, "the-slow-one", 1)
    assert running.running_for >= 0


async def test_inspect_names_a_live_worker_that_does_not_answer(connection: Any) -> None:
    app = _name()
    channel = await connection.channel()
    async with Agent(connection, app, interval=60) as agent:
        await agent.start()
        # A heartbeat of a worker that answers nothing (it is gone, or stuck).
        mute = dataclasses.replace(agent.info(), id="elsewhere:1:000000")
        await channel.publish(
            mute.encode(),
            exchange=CONTROL_EXCHANGE,
            routing_key=f"heartbeat.{app}.{mute.id}",
            delivery_mode=1,
            expiration=2000,  # gone from the shared registry soon after the test
        )
        found = await inspect(channel, app, timeout=0.5)
    assert [info.id for info in found.missing] == [mute.id]
    assert list(found.running) == [agent.id]


async def test_a_process_that_serves_announces_itself_while_it_serves(
    connection: Any, cleanup: Cleanup, revoked: list[str]
) -> None:
    task = cleanup.queue(_name())
    revoked.append(task)
    master = Master(await connection.channel())

    async def work(n: int) -> None:
        return None

    await master.create_worker(task, work)
    reader = await connection.channel()

    async def serving_it() -> WorkerInfo | None:
        return next((i for i in await read_workers(reader) if task in i.tasks), None)

    async with serving([master]):
        info = await wait_until(serving_it, 10, "a heartbeat naming the served task")
        assert info.state() == "alive"
    stopped = await serving_it()
    assert stopped is not None and stopped.state() == "stopped"
    await master.close()
