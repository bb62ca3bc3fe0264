"""``leveret run`` and ``leveret status`` against the real broker: serving an app in one
process or several, stopping on signals, and what ``ps`` can see."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from leveret import App, connect
from leveret.patterns import dead_letter_queue, delay_queues, revoked_queue
from tests.cli.conftest import (
    Project,
    Reaper,
    children_of,
    command_line,
    free_port,
    is_running,
    leveret,
    spawn,
)
from tests.conftest import AMQP_URL
from tests.support.waiting import wait_until


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text: str = response.read().decode()
        return text


def _client_app(project: Project) -> App:
    """The same tasks, declared in this process (as a client would import them)."""
    app = App(AMQP_URL, prefix=project.prefix)

    @app.task
    async def record(*, n: int) -> None: ...

    @app.task
    async def hog(*, seconds: float) -> None: ...

    @app.task
    def nap(*, seconds: float) -> None: ...

    @app.rpc
    def multiply(*, x: int, y: int) -> int:
        raise NotImplementedError  # served by the runner's processes

    return app


async def _consumers(queue: str) -> int:
    async with await connect(AMQP_URL) as conn:
        channel = await conn.channel()
        try:
            return (await channel.queue_declare(queue, passive=True)).consumer_count
        except Exception:
            return 0


async def _served_by(project: Project, processes: int) -> None:
    # The RPC method is served last, after every task's worker has started.
    queues = [f"{project.prefix}.record", f"{project.prefix}.multiply"]

    async def all_consume() -> bool:
        return all([await _consumers(queue) == processes for queue in queues])

    await wait_until(all_consume, 15, f"{processes} processes to consume {queues}")


async def _delete_queues(project: Project) -> None:
    async with await connect(AMQP_URL) as conn:
        channel = await conn.channel()
        for name in ("record", "hog", "nap"):
            task = f"{project.prefix}.{name}"
            for queue in (task, dead_letter_queue(task), revoked_queue(task), *delay_queues(task)):
                await channel.queue_delete(queue)
        await channel.queue_delete(f"{project.prefix}.multiply")


@contextlib.asynccontextmanager
async def _serving(
    project: Project, reaper: Reaper, processes: int, *options: str
) -> AsyncIterator[tuple[subprocess.Popen[str], list[int]]]:
    """``leveret run demoapp:app`` with ``processes``, once all consume; its children's
    pids. The app's queues are deleted afterwards."""
    many = ["--processes", str(processes)] if processes > 1 else []
    runner = reaper(spawn("run", "demoapp:app", *many, *options, env=project.env))
    try:
        await _served_by(project, processes)
        children = children_of(runner.pid)
        reaper.pids += children
        yield runner, children
    finally:
        await _delete_queues(project)


async def _stop(runner: subprocess.Popen[str], signum: int, timeout: float = 30) -> str:
    """Send ``signum``, wait for the end; what it said on stderr."""
    runner.send_signal(signum)
    _, err = await asyncio.to_thread(runner.communicate, timeout=timeout)
    return err


async def test_leveret_run_serves_an_app_in_several_processes_and_stops_on_sigterm(
    amqp_url: str, project: Project, reaper: Reaper
) -> None:
    port = free_port()  # and the next one, for the second process
    queue = f"{project.prefix}.record"
    async with _serving(project, reaper, 2, "--url", AMQP_URL, "--metrics-port", str(port)) as (
        runner,
        _,
    ):
        async with _client_app(project) as client:
            for n in range(100):
                await client.tasks[queue].send(n=n)
            assert await client.rpcs[f"{project.prefix}.multiply"].call(x=6, y=7) == 42
        await wait_until(lambda: len(project.lines()) == 100, 10, "a hundred tasks")
        pids = {line.split()[0] for line in project.lines()}
        received = [
            sum(
                float(line.rpartition(" ")[2])
                for line in text.splitlines()
                if line.startswith(f'leveret_tasks_received_total{{task="{queue}"}}')
            )
            for text in await asyncio.gather(
                *(asyncio.to_thread(_scrape, p) for p in (port, port + 1))
            )
        ]
        assert sum(received) == 100 and all(received)
        err = await _stop(runner, signal.SIGTERM)
    assert runner.returncode == 0, err
    assert len(pids) == 2  # both processes took tasks


async def test_sigint_to_leveret_run_stops_all_its_processes_which_never_see_the_password(
    amqp_url: str, project: Project, reaper: Reaper
) -> None:
    # The URL comes from AMQP_URL, as it would in production: guest:guest@...
    async with _serving(project, reaper, 2, "--shutdown-timeout", "5") as (runner, children):
        assert len(children) == 2
        for child in children:
            argv = command_line(child)
            assert not any(b"guest" in arg or b"amqp" in arg for arg in argv), argv
            assert b"--url" in argv and argv[argv.index(b"--url") + 1] == b"-"
        started = time.monotonic()
        err = await _stop(runner, signal.SIGINT, timeout=20)
        assert time.monotonic() - started < 5 + 10
    assert runner.returncode == 0, err
    assert not any(is_running(child) for child in children)
    # Once each (while starting, or serving): never forwarded twice.
    assert (
        err.count("INFO leveret.patterns: SIGINT received")
        + err.count("INFO leveret.cli: SIGINT received while starting")
        == 2
    )
    assert "Traceback" not in err


async def test_when_one_process_dies_leveret_run_stops_the_others_and_says_so(
    amqp_url: str, project: Project, reaper: Reaper
) -> None:
    async with _serving(project, reaper, 2) as (runner, (first, second)):
        os.kill(first, signal.SIGKILL)
        _, err = await asyncio.to_thread(runner.communicate, timeout=40)
    assert runner.returncode == 128 + signal.SIGKILL
    assert f"process {first} exited with status {128 + signal.SIGKILL}: stopping the others" in err
    assert not is_running(second)


async def test_processes_that_cannot_stop_are_killed_after_the_shutdown_timeout_and_10_s(
    amqp_url: str, project: Project, reaper: Reaper
) -> None:
    async with _serving(project, reaper, 2, "--shutdown-timeout", "0") as (runner, _):
        async with _client_app(project) as client:
            await client.tasks[f"{project.prefix}.hog"].send(seconds=60)
        await wait_until(lambda: project.lines(), 10, "the hog to start")
        started = time.monotonic()
        err = await _stop(runner, signal.SIGTERM)
        took = time.monotonic() - started
    assert 10 <= took < 20
    assert runner.returncode == 1
    assert err.splitlines()[-1] == (
        "leveret run: 1 of 2 processes did not stop in time (--shutdown-timeout plus 10 s): killed"
    )


async def test_a_plain_function_stuck_past_the_shutdown_timeout_neither_holds_the_exit_nor_is_lost(
    amqp_url: str, project: Project, reaper: Reaper
) -> None:
    async with _serving(project, reaper, 1, "--shutdown-timeout", "1") as (runner, _):
        async with _client_app(project) as client:
            await client.tasks[f"{project.prefix}.nap"].send(seconds=60)
        await wait_until(lambda: project.lines(), 10, "the nap to start")
        started = time.monotonic()
        err = await _stop(runner, signal.SIGINT)
        took = time.monotonic() - started
        async with await connect(AMQP_URL) as conn:
            channel = await conn.channel()
            waiting = await channel.queue_declare(f"{project.prefix}.nap", passive=True)
    # Bounded by --shutdown-timeout plus a second for the interruption, not the 60 s nap.
    assert took < 10, err
    assert runner.returncode == 0, err
    assert "it is left running in its thread, and its task is requeued: it may run again" in err
    assert waiting.message_count == 1  # back in its queue, for the next worker


#: What ``--loop auto`` runs on: uvloop if the speed extra is installed.
AUTO_LOOP = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"


@pytest.mark.parametrize(("options", "loop"), [((), AUTO_LOOP), (("--loop", "asyncio"), "asyncio")])
async def test_leveret_run_logs_what_it_serves_under_the_apps_name_and_on_which_loop(
    amqp_url: str, project: Project, reaper: Reaper, options: tuple[str, ...], loop: str
) -> None:
    async with _serving(project, reaper, 1, *options) as (runner, _):
        err = await _stop(runner, signal.SIGTERM)
    assert runner.returncode == 0, err
    assert (
        f"INFO leveret.cli: serving demoapp:app (app {project.prefix!r}: 3 tasks, 1 RPC method) "
        f"on amqp://guest:******@127.0.0.1:5672/, pid {runner.pid}, event loop {loop}\n"
    ) in err


def test_leveret_status_shows_the_queues_of_an_app(amqp_url: str, project: Project) -> None:
    status = leveret("status", "demoapp:app", env=project.env)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0].split() == ["queue", "ready", "consumers", "delayed"]
    assert lines[1].split() == [f"{project.prefix}.record", "missing"]


@pytest.mark.parametrize("kind", ["--url", "AMQP_URL"])
def test_leveret_run_and_status_use_the_apps_own_url_unless_told(
    project: Project, kind: str, tmp_path: Path
) -> None:
    (tmp_path / "ownurl.py").write_text(
        "from leveret import App\napp = App('amqp://guest:guest@127.0.0.1:1/')\n"
    )
    env = {**project.env, "AMQP_URL": "amqp://guest:guest@127.0.0.1:2/"}
    args = ("--url", "amqp://guest:guest@127.0.0.1:3/") if kind == "--url" else ()
    port = "3" if kind == "--url" else "1"  # AMQP_URL does not override App(url)
    result = leveret("status", "ownurl:app", *args, env=env)
    assert result.returncode == 1
    assert f"127.0.0.1:{port}/: connection refused" in result.stderr
