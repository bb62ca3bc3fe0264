"""App decorators and the leveret run / status / demo commands, against the real broker."""

import asyncio
import signal
import socket
import subprocess
import sys
import textwrap
import urllib.request
import uuid
from pathlib import Path

import pytest

from leveret import App, connect
from leveret.exceptions import ConfigurationError
from tests.conftest import AMQP_URL
from tests.support.waiting import wait_until

APP_MODULE = textwrap.dedent(
    """
    import os
    from pathlib import Path
    from leveret import App

    app = App(os.environ["AMQP_URL"], prefix=os.environ["APP_PREFIX"])
    out = Path(os.environ["APP_OUT"])

    @app.task(prefetch_count=10)
    async def record(*, n: int) -> None:
        with out.open("a") as f:
            f.write(f"{os.getpid()} {n}\\n")

    @app.rpc()
    def multiply(*, x: int, y: int) -> int:
        return x * y
    """
)


@pytest.fixture
def app_module(tmp_path: Path, amqp_url: str) -> tuple[Path, dict[str, str]]:
    (tmp_path / "demoapp.py").write_text(APP_MODULE)
    env = {
        "AMQP_URL": AMQP_URL,
        "APP_PREFIX": f"app-{uuid.uuid4().hex[:8]}",
        "APP_OUT": str(tmp_path / "out.txt"),
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(tmp_path),
    }
    return tmp_path, env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


def _client_app(env: dict[str, str]) -> App:
    """The same tasks, declared in this process (as a client would import them)."""
    app = App(AMQP_URL, prefix=env["APP_PREFIX"])

    @app.task()
    async def record(*, n: int) -> None: ...

    @app.rpc()
    def multiply(*, x: int, y: int) -> int:
        raise AssertionError("the served processes run it, never the client")

    return app


async def _consumers(queue: str) -> int:
    async with await connect(AMQP_URL) as conn:
        channel = await conn.channel()
        try:
            return (await channel.queue_declare(queue, passive=True)).consumer_count
        except Exception:
            return 0


async def test_handles_are_plain_callables_and_reach_workers_started_by_the_app(
    amqp_url: str,
) -> None:
    app = App(amqp_url, prefix=f"app-{uuid.uuid4().hex[:8]}")
    seen: list[str] = []

    @app.task()
    async def greet(*, name: str) -> None:
        seen.append(name)

    @app.rpc()
    async def shout(*, word: str) -> str:
        return word.upper()

    await greet(name="local")  # the plain function, as a unit test would call it
    assert await shout.func(word="local") == "LOCAL"
    async with await connect(amqp_url) as serving, app:
        master, rpc = await app.start(serving)
        await greet.send(name="remote")
        assert await shout(word="hi") == "HI"
        await wait_until(lambda: seen == ["local", "remote"], 5, "the remote task")
        with pytest.raises(TypeError, match="keyword arguments only"):
            await greet.send("positional")  # type: ignore[call-arg]
        await master.close()
        await rpc.close()
        channel = await serving.channel()
        for queue in (greet.name, f"{greet.name}.dlq", shout.name):
            await channel.queue_delete(queue)


def test_a_name_declared_twice_is_refused() -> None:
    app = App()

    @app.task()
    def same() -> None: ...

    with pytest.raises(ConfigurationError, match="declared twice"):

        @app.rpc(name="same")
        def other() -> None: ...


def _spawn(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "leveret.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_leveret_run_serves_an_app_in_several_processes_and_stops_on_sigterm(
    app_module: tuple[Path, dict[str, str]],
) -> None:
    folder, env = app_module
    port = _free_port()
    runner = _spawn(
        env,
        "run",
        "demoapp:app",
        "--processes",
        "2",
        "--url",
        AMQP_URL,
        "--metrics-port",
        str(port),
    )
    client = _client_app(env)
    queue = f"{env['APP_PREFIX']}.record"

    async def both_consume() -> bool:
        return await _consumers(queue) == 2

    try:
        await wait_until(both_consume, 10, "both processes to consume")
        async with client:
            for n in range(100):
                await client.tasks[queue].send(n=n)
            assert await client.rpcs[f"{env['APP_PREFIX']}.multiply"](x=6, y=7) == 42
        out = folder / "out.txt"
        await wait_until(
            lambda: out.exists() and len(out.read_text().splitlines()) == 100, 10, "a hundred tasks"
        )
        pids = {line.split()[0] for line in out.read_text().splitlines()}
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
        runner.send_signal(signal.SIGTERM)
        _, err = await asyncio.to_thread(runner.communicate, timeout=30)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert runner.returncode == 0, err
    assert len(pids) == 2  # both processes took tasks
    async with await connect(AMQP_URL) as conn:
        channel = await conn.channel()
        for name in (queue, f"{queue}.dlq", f"{env['APP_PREFIX']}.multiply"):
            await channel.queue_delete(name)


async def test_leveret_status_shows_the_queues_of_an_app(
    app_module: tuple[Path, dict[str, str]],
) -> None:
    _, env = app_module
    status = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "leveret.cli", "status", "demoapp:app", "--url", AMQP_URL],
        env=env,
        capture_output=True,
        text=True,
    )
    assert status.returncode == 0, status.stderr
    assert f"{env['APP_PREFIX']}.record " in status.stdout and "missing" in status.stdout


async def test_leveret_run_names_the_address_and_how_to_start_rabbitmq_when_it_is_down(
    app_module: tuple[Path, dict[str, str]],
) -> None:
    _, env = app_module
    result = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "leveret.cli",
            "run",
            "demoapp:app",
            "--url",
            "amqp://guest:hidden@127.0.0.1:1/",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "127.0.0.1:1" in result.stderr and "rabbitmq-server -detached" in result.stderr
    assert "hidden" not in result.stderr


async def test_leveret_demo_runs_and_prints_a_summary(amqp_url: str) -> None:
    result = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "leveret.cli",
            "demo",
            "--tasks",
            "300",
            "--calls",
            "50",
            "--url",
            AMQP_URL,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "300 / 300" in result.stdout and "RPC calls" in result.stdout


def test_a_target_that_is_not_an_app_is_refused(
    app_module: tuple[Path, dict[str, str]],
) -> None:
    _, env = app_module
    result = subprocess.run(
        [sys.executable, "-m", "leveret.cli", "run", "demoapp:out"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "not a leveret.App" in result.stderr


def test_leveret_demo_runs_on_the_in_memory_broker_without_rabbitmq() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "leveret.cli",
            "demo",
            "--tasks",
            "500",
            "--calls",
            "50",
            "--url",
            "memory://",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "500 / 500" in result.stdout


async def test_connect_and_connect_robust_reach_the_in_memory_broker() -> None:
    from leveret import connect_robust
    from leveret.patterns import RPC

    async with await connect("memory://app-test") as serving:
        callee = await RPC.create(await serving.channel())
        await callee.register("double", lambda *, x: 2 * x)
        async with await connect_robust("memory://app-test") as client:
            caller = await RPC.create(await client.channel())
            assert await caller.call("double", {"x": 21}) == 42
