"""Worker and callee processes that fault tests start, kill -9 and restart.

Run as ``python -m tests.faults.processes worker|callee ...`` from the
repository root (:class:`Spawned` does that). Each process appends one line
per event to its own log with a single unbuffered ``os.write``, made *before*
the task function returns and so before the ack: a line survives ``kill -9``,
and no task is acked without its line. Lines:

- ``ready <pid>``: consuming;
- ``done <task_id> <attempt> <redeliveries> <pid>``: a task finished;
- ``crash <task_id> <attempt> <redeliveries> <pid>``: the task is about to ``os._exit(1)``;
- ``start <call_id> <pid>``: the callee took a call (and hangs in it until killed).

SIGTERM stops a process gracefully (:func:`leveret.patterns.serve`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from leveret.amqp import connect_robust
from leveret.patterns import RPC, Master, RetryPolicy, current_task, serve

ROOT = Path(__file__).resolve().parents[2]


class _Log:
    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, *fields: object) -> None:
        os.write(self._fd, (" ".join(map(str, fields)) + "\n").encode())


async def _worker(args: argparse.Namespace, log: _Log) -> None:
    pid = os.getpid()

    async def task(*, task_id: int) -> None:
        info = current_task()
        if task_id == args.exit_on:
            log.write("crash", task_id, info.attempt, info.redeliveries, pid)
            os._exit(1)
        if args.delay:
            await asyncio.sleep(args.delay)
        log.write("done", task_id, info.attempt, info.redeliveries, pid)

    async with await connect_robust(args.url, reconnect_interval=0.05) as connection:
        master = Master(await connection.channel())
        await master.create_worker(
            args.queue,
            task,
            prefetch_count=args.prefetch,
            retries=RetryPolicy(max_redeliveries=args.max_redeliveries),
        )
        log.write("ready", pid)
        await serve(master, timeout=5)


async def _callee(args: argparse.Namespace, log: _Log) -> None:
    pid = os.getpid()

    async def hang(*, call_id: int) -> str:
        log.write("start", call_id, pid)
        await asyncio.Event().wait()  # until the process is killed
        raise AssertionError("unreachable")

    async with await connect_robust(args.url, reconnect_interval=0.05) as connection:
        rpc = await RPC.create(await connection.channel(), prefetch_count=args.prefetch)
        await rpc.register(args.queue, hang)
        log.write("ready", pid)
        await serve(rpc, timeout=0.5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.processes")
    parser.add_argument("role", choices=["worker", "callee"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--prefetch", type=int, default=16)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds each task takes")
    parser.add_argument("--max-redeliveries", type=int, default=5)
    parser.add_argument("--exit-on", type=int, default=None, help="task id that exits the process")
    args = parser.parse_args(argv)
    log = _Log(args.log)
    asyncio.run((_worker if args.role == "worker" else _callee)(args, log))


class Spawned:
    """A worker or callee process of a test (see the module docstring), with its log."""

    def __init__(self, role: str, log: Path, *options: str) -> None:
        self.log = log
        self._stderr = log.with_suffix(".stderr")
        with self._stderr.open("ab") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.faults.processes", role, "--log", str(log), *options],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def ready(self) -> bool:
        """Whether it is consuming; fails at once if it died instead."""
        if not self.running:
            raise AssertionError(f"{self} exited before it was ready: {self.stderr()}")
        return f"ready {self.pid}\n" in self.log.read_text() if self.log.exists() else False

    def stderr(self) -> str:
        return self._stderr.read_text()[-4000:] if self._stderr.exists() else ""

    def kill(self) -> None:
        """``kill -9`` and reap it."""
        if self.running:
            self.process.kill()
        self.process.wait(10)

    def terminate(self, timeout: float = 20) -> int:
        """SIGTERM (a graceful stop), wait for it, and return its exit code.

        If it does not stop within ``timeout`` seconds it is killed and the test fails.
        """
        if self.running:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self} ignored SIGTERM for {timeout} s") from None

    def __repr__(self) -> str:
        return f"<process {self.pid} {self.log.stem}>"


if __name__ == "__main__":
    main()
