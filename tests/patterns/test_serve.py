"""Graceful shutdown on SIGTERM/SIGINT: running tasks finish, the rest go back."""

import asyncio
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from leveret.amqp import Connection
from leveret.patterns import Master
from tests.conftest import AMQP_URL
from tests.patterns.conftest import Cleanup
from tests.support.waiting import wait_until

# Workers run in subprocesses (signals): they can only reach the real broker.
pytestmark = pytest.mark.rabbitmq_only

WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from leveret import connect
    from leveret.patterns import Master, serve

    queue, log = sys.argv[1], Path(sys.argv[2])

    async def task(*, n: int, seconds: float) -> None:
        with log.open("a") as out:
            out.write(f"start {n}\\n")
        await asyncio.sleep(seconds)
        with log.open("a") as out:
            out.write(f"done {n}\\n")

    async def main() -> None:
        async with await connect(sys.argv[3]) as connection:
            master = Master(await connection.channel())
            await master.create_worker(queue, task, prefetch_count=5)
            got = await serve(master, timeout=float(sys.argv[4]))
            print(f"stopped by {got.name}")

    asyncio.run(main())
    """
)


def _start_worker(tmp_path: Path, queue: str, grace: float) -> tuple[subprocess.Popen[str], Path]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    log = tmp_path / "tasks.log"
    log.touch()
    process = subprocess.Popen(
        [sys.executable, str(script), queue, str(log), AMQP_URL, str(grace)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return process, log


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_lets_running_tasks_finish_and_requeues_the_rest(
    connection: Connection, unique: str, cleanup: Cleanup, tmp_path: Path, signum: signal.Signals
) -> None:
    channel = await connection.channel()
    await channel.queue_declare(cleanup.queue(unique), durable=True)  # as the worker declares it

    async def consumed() -> bool:
        return (await channel.queue_declare(unique, passive=True)).consumer_count == 1

    process, log = _start_worker(tmp_path, unique, grace=1.0)
    try:
        await wait_until(consumed, 10, "the worker process to consume")
        master = Master(channel)
        await master.create_task(unique, kwargs={"n": 0, "seconds": 0.5})
        for n in range(1, 8):
            await master.create_task(unique, kwargs={"n": n, "seconds": 30})
        await wait_until(lambda: log.read_text().count("start") == 5, 5, "five running tasks")
        process.send_signal(signum)
        out, err = await asyncio.to_thread(process.communicate, timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert f"stopped by {signum.name}" in out
    lines = log.read_text().splitlines()
    # Task 0 finished within the grace period and was acked; tasks 1-4 ran past it
    # and were cancelled and requeued; 5-7 had not started and went straight back.
    assert "done 0" in lines and not any(
        line.startswith("done") and line != "done 0" for line in lines
    )
    ok = await channel.queue_declare(unique, passive=True)
    assert (ok.message_count, ok.consumer_count) == (7, 0)
