"""Background work owned by a connection or a channel, never left behind.

Every task is spawned through a :class:`TaskOwner`, which logs its failure and
cancels and awaits it on close. Every user callback (consumers, close, return,
cancel and blocked callbacks, on both brokers) goes through :meth:`TaskOwner.call`:
a plain function runs at once, an ``async def`` becomes an owned task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from inspect import isawaitable
from typing import Any

log = logging.getLogger("leveret.amqp")


class TaskOwner:
    """A set of tasks that live no longer than their owner; failures go to ``logger``."""

    __slots__ = ("_log", "_tasks")

    def __init__(self, logger: logging.Logger = log) -> None:
        self._log = logger
        self._tasks: set[asyncio.Future[Any]] = set()

    def spawn(self, awaitable: Awaitable[Any], name: str) -> asyncio.Future[Any]:
        """Run ``awaitable`` as a task of this owner; a failure is logged."""
        task = asyncio.ensure_future(awaitable)
        if isinstance(task, asyncio.Task):
            task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def call(self, callback: Callable[..., Any], *args: Any) -> None:
        """Call a user callback; await it as an owned task if it is async. Never raises
        (a failure is logged with the arguments it failed on)."""
        try:
            result = callback(*args)
        except Exception:
            self._log.exception("callback failed: %r(%s)", callback, _shown(args))
            return
        if result is not None and isawaitable(result):
            # Named cheaply: this runs for each delivery to an async consumer.
            name = getattr(callback, "__qualname__", None) or type(callback).__qualname__
            self.spawn(result, f"leveret callback {name}")

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._log.error("task %r failed", task, exc_info=task.exception())

    async def wait_all(self, timeout: float) -> None:
        """Let the tasks finish for up to ``timeout`` seconds, then cancel the rest."""
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
            await self.cancel_all()

    async def cancel_all(self) -> None:
        """Cancel every task (but the caller's own) and wait until they are done."""
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def _shown(args: tuple[Any, ...]) -> str:
    return ", ".join(repr(arg) for arg in args)
