"""The processes of a run: spawned children (multiprocessing, spawn) that run a role
and hand back one result, and worker commands (a peer's CLI) in a process group of
their own. Both are always ended when the run ends, failed or not."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import queue as queue_module
import signal
import subprocess
import traceback
from collections.abc import Callable, Coroutine, Mapping, Sequence
from multiprocessing.synchronize import Barrier
from pathlib import Path
from types import TracebackType
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parents[1]

#: A role's main coroutine function, run in a spawned child; returns its result.
RoleMain = Callable[..., Coroutine[Any, Any, dict[str, Any]]]

spawn = multiprocessing.get_context("spawn")


def _child(
    role: str,
    main: RoleMain,
    args: tuple[Any, ...],
    barriers: tuple[Barrier, ...],
    results: multiprocessing.Queue[dict[str, Any]],
) -> None:
    """Entry point of a spawned child: run ``main(*args)``, hand back its result or the
    traceback; on failure break the barriers so no other process waits for this one."""
    try:
        factory = None
        if getattr(args[0], "speed", None):  # a Case with the speed extra: uvloop
            import uvloop

            factory = uvloop.new_event_loop
        with asyncio.Runner(loop_factory=factory) as runner:
            result = runner.run(main(*args))
        result["role"] = role
    except BaseException:
        for barrier in barriers:
            barrier.abort()
        result = {"role": role, "error": traceback.format_exc()}
    results.put(result)


class Children:
    """The spawned children of one run and their results, by role.

    Use as ``async with``: on exit each child is joined, and terminated (by its own
    handle) if it does not end in time (30 s, or 1 s when the block failed).
    """

    def __init__(self) -> None:
        self.results: multiprocessing.Queue[dict[str, Any]] = spawn.Queue()
        self.by_role: dict[str, dict[str, Any]] = {}
        self._processes: list[multiprocessing.process.BaseProcess] = []

    def start(
        self, role: str, main: RoleMain, args: tuple[Any, ...], barriers: tuple[Barrier, ...]
    ) -> None:
        process = spawn.Process(
            target=_child,
            args=(role, main, args, barriers, self.results),
            name=f"bench-{role}",
        )
        process.start()
        self._processes.append(process)

    async def collect(self, count: int, timeout: float) -> None:
        """Wait for ``count`` more results (``queue.Empty`` after ``timeout`` s each)."""
        for _ in range(count):
            result = await asyncio.to_thread(self.results.get, True, timeout)
            self.by_role[result["role"]] = result

    async def collect_after_failure(self) -> None:
        """Gather what the children still hand back after a failure (their errors)."""
        with contextlib.suppress(queue_module.Empty):
            await self.collect(len(self._processes) - len(self.by_role), 10.0)

    def errors(self) -> dict[str, str]:
        return {role: r["error"] for role, r in self.by_role.items() if "error" in r}

    async def join(self, timeout: float = 30.0) -> None:
        for process in self._processes:
            await asyncio.to_thread(process.join, timeout)
            if process.is_alive():
                process.terminate()  # our own child, by its handle
                await asyncio.to_thread(process.join, 5.0)

    async def __aenter__(self) -> Children:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # After a failure nobody waits for what the children still do.
        await self.join(30.0 if exc_type is None else 1.0)


class WorkerCommand:
    """A worker command (a peer's CLI, or ``python -m bench.peers.serve``) in a process
    group of its own, its output in ``log``.

    Use as ``with``: on exit the whole group gets SIGTERM, then SIGKILL if it is still
    there after ``grace`` seconds, whatever happened in the block.
    """

    def __init__(
        self, argv: Sequence[str], env: Mapping[str, str], log: Path, grace: float = 10.0
    ) -> None:
        self.argv = list(argv)
        self._env = dict(env)
        self._log = log
        self._grace = grace
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None, "not started"
        return self._process.pid

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def tracebacks(self) -> int:
        """How many tracebacks the command has logged (a task that raised, a crash)."""
        try:
            return self._log.read_text(errors="replace").count("Traceback (most recent call last)")
        except OSError:
            return 0

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self._log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> WorkerCommand:
        with open(self._log, "wb") as log:
            self._process = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: ended as a whole
            )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        process = self._process
        if process is None:
            return
        for sig, wait in ((signal.SIGTERM, self._grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(process.pid, sig)  # the group we created, by its id
            except ProcessLookupError:
                break  # nothing left in the group
            try:
                process.wait(wait)
            except subprocess.TimeoutExpired:
                continue
            if not _group_alive(process.pid):
                break
        if process.poll() is None:
            process.wait(5.0)


def _group_alive(pgid: int) -> bool:
    """Whether any process is still in the group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
