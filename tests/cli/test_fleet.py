"""``leveret workers``, ``inspect`` and ``cancel`` against the real broker, with the
workers in ``leveret run`` processes and every command a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import textwrap
import time
from collections.abc import AsyncIterator

import pytest

from leveret import connect
from leveret.patterns import Master, dead_letter_queue, revoked_queue
from tests.cli.conftest import Project, Reaper, leveret, spawn
from tests.conftest import AMQP_URL
from tests.support.waiting import wait_until

pytestmark = pytest.mark.rabbitmq_only

FLEET_APP = textwrap.dedent(
    """
    import asyncio
    import os
    from leveret import App

    app = App(prefix=os.environ["APP_PREFIX"])

    @app.task(prefetch_count=4)
    async def nap(*, seconds: float) -> None:
        await asyncio.sleep(seconds)
    """
)


@pytest.fixture
def fleet_project(project: Project) -> Project:
    (project.folder / "fleetapp.py").write_text(FLEET_APP)
    return project


async def _delete_queues(project: Project) -> None:
    task = f"{project.prefix}.nap"
    async with await connect(AMQP_URL) as conn:
        channel = await conn.channel()
        for queue in (task, dead_letter_queue(task), revoked_queue(task)):
            await channel.queue_delete(queue)


@contextlib.asynccontextmanager
async def _running(
    project: Project, reaper: Reaper, count: int
) -> AsyncIterator[list[subprocess.Popen[str]]]:
    """``count`` separate ``leveret run`` processes, once each is listed as alive."""
    runners = [
        reaper(spawn("run", "fleetapp:app", "--heartbeat-interval", "0.5", env=project.env))
        for _ in range(count)
    ]
    try:
        await wait_until(
            lambda: _states(project).count("alive") == count, 30, f"{count} workers alive"
        )
        yield runners
    finally:
        for runner in runners:
            if runner.poll() is None:
                runner.send_signal(signal.SIGTERM)
            await asyncio.to_thread(runner.communicate, timeout=30)
        await _delete_queues(project)


def _workers(project: Project) -> subprocess.CompletedProcess[str]:
    return leveret("workers", project.prefix, env=project.env)


def _states(project: Project) -> list[str]:
    """The state column of ``leveret workers APP``, a line per worker."""
    done = _workers(project)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    return [line.split()[2] for line in lines[1:]] if lines[0].startswith("worker") else []


async def test_leveret_workers_shows_a_killed_worker_lost_and_a_stopped_one_stopped(
    amqp_url: str, fleet_project: Project, reaper: Reaper
) -> None:
    async with _running(fleet_project, reaper, 2) as (victim, survivor):
        listing = _workers(fleet_project).stdout
        assert f"{fleet_project.prefix}.nap" in listing and str(victim.pid) in listing
        os.kill(victim.pid, signal.SIGKILL)
        killed = time.monotonic()
        await wait_until(lambda: "lost" in _states(fleet_project), 30, "the killed one lost")
        assert time.monotonic() - killed < 30
        assert sorted(_states(fleet_project)) == ["alive", "lost"]
        survivor.send_signal(signal.SIGTERM)
        await asyncio.to_thread(survivor.communicate, timeout=30)
        states = _states(fleet_project)  # the lost one may be forgotten by now
        assert "stopped" in states and "alive" not in states


async def test_leveret_inspect_shows_a_running_task_and_leveret_cancel_ends_it_as_cancelled(
    amqp_url: str, fleet_project: Project, reaper: Reaper
) -> None:
    task = f"{fleet_project.prefix}.nap"
    async with _running(fleet_project, reaper, 1):
        async with await connect(AMQP_URL) as conn:
            master = Master(await conn.channel())
            await master.create_task(task, {"seconds": 120}, message_id="the-long-nap")

        def inspected() -> str | None:
            done = leveret("inspect", fleet_project.prefix, env=fleet_project.env)
            assert done.returncode == 0, done.stderr
            return done.stdout if "the-long-nap" in done.stdout else None

        shown = await wait_until(inspected, 30, "the running task in leveret inspect")
        assert task in shown
        done = leveret("cancel", task, "the-long-nap", env=fleet_project.env)
        assert done.returncode == 0, done.stderr
        assert "the-long-nap" in done.stdout

        def dead_lettered() -> str | None:
            letters = leveret("dlq", "list", task, env=fleet_project.env).stdout
            return letters if "the-long-nap" in letters else None

        letters = await wait_until(dead_lettered, 30, "the cancelled task dead-lettered")
        assert "cancelled" in letters
        idle = leveret("inspect", fleet_project.prefix, env=fleet_project.env)
        assert "the-long-nap" not in idle.stdout and "(idle)" in idle.stdout


def test_leveret_workers_and_inspect_say_when_no_worker_is_heard(
    amqp_url: str, fleet_project: Project
) -> None:
    for command in ("workers", "inspect"):
        done = leveret(command, fleet_project.prefix, env=fleet_project.env)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"no worker of app {fleet_project.prefix!r}")
