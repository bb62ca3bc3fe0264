"""Bounded concurrent handling of one consumer's deliveries.

A :class:`Runner` keeps a small pool of coroutines that take deliveries from a
queue. A runner drains the queue in a loop, so handlers that finish without
suspending cost no task and no wake-up each; before starting a delivery while
more are waiting, it makes sure one other runner is on its way, so a handler
that suspends (I/O, a thread pool) never holds up the rest. At most ``limit``
deliveries are handled at once.

Trap: a runner whose handlers never suspend (CPU-bound ``async def``
functions) would keep the event loop to itself until its queue is empty, and
everything they write (replies, acks) leaves only when the loop turn ends. So a
runner yields to the loop once it has run for :data:`SLICE` seconds, and a
reply waits for at most one slice, not for every handler queued before it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from ..amqp import Delivery
from ._settle import settle

log = logging.getLogger("leveret.patterns")

Handler = Callable[[Delivery], Awaitable[None]]
#: The longest a runner keeps the event loop before it lets other work (writes) run.
SLICE = 0.005


class Runner:
    """Runs ``handler(delivery)`` for each pushed delivery, at most ``limit`` at once.

    The handler settles the delivery itself and must not raise.
    """

    def __init__(self, handler: Handler, limit: int, name: str) -> None:
        self._handler = handler
        self.limit = max(1, limit)
        self._name = name
        self._loop = asyncio.get_running_loop()
        self._queue: deque[Delivery] = deque()
        self._idle: deque[asyncio.Future[None]] = deque()
        self._runners: set[asyncio.Task[None]] = set()
        self._ready = 0  # runners woken or created that have not looked at the queue yet
        self._active = 0
        self._closing = False

    @property
    def active(self) -> int:
        """Deliveries being handled right now."""
        return self._active

    @property
    def waiting(self) -> int:
        """Deliveries received and not started yet."""
        return len(self._queue)

    def push(self, delivery: Delivery) -> None:
        """Queue a delivery (the consumer callback; never blocks)."""
        if self._closing:
            settle(delivery, "nack", requeue=True)
            return
        self._queue.append(delivery)
        if not self._ready:
            self._kick()

    def _kick(self) -> None:
        if self._idle:
            self._ready += 1
            self._idle.popleft().set_result(None)
        elif len(self._runners) < self.limit:
            self._ready += 1
            task = self._loop.create_task(self._run(), name=f"{self._name} runner")
            self._runners.add(task)
            task.add_done_callback(self._runners.discard)

    async def _run(self) -> None:
        queue = self._queue
        clock = time.monotonic  # the C function: loop.time() is a Python method around it
        while True:
            self._ready -= 1
            slice_ends = clock() + SLICE
            while queue:
                delivery = queue.popleft()
                if queue and not self._ready:
                    self._kick()
                self._active += 1
                try:
                    await self._handler(delivery)
                finally:
                    self._active -= 1
                if queue and clock() > slice_ends:
                    await asyncio.sleep(0)  # let what the handlers wrote go out
                    slice_ends = clock() + SLICE
            if self._closing:
                return
            waiter: asyncio.Future[None] = self._loop.create_future()
            self._idle.append(waiter)
            await waiter

    def drop_waiting(self) -> int:
        """Forget the deliveries not started yet (their channel closed: the broker has
        requeued them, and they can no longer be settled here); how many."""
        dropped = len(self._queue)
        self._queue.clear()
        return dropped

    def abandon(self) -> None:
        """The channel is gone for good: cancel every runner (nothing can be settled)."""
        self._closing = True
        self._queue.clear()
        self._idle.clear()  # their runners are cancelled: nothing may wake them again
        for task in self._runners:
            task.cancel()

    async def close(self, timeout: float | None = None) -> None:
        """Stop: requeue what has not started, let running handlers finish.

        After ``timeout`` seconds the handlers still running are cancelled
        (a handler requeues its delivery when cancelled).
        """
        self._closing = True
        while self._queue:
            settle(self._queue.popleft(), "nack", requeue=True)
        while self._idle:
            waiter = self._idle.popleft()
            if not waiter.done():  # a runner cancelled while idle left its waiter behind
                self._ready += 1
                waiter.set_result(None)
        runners = [task for task in self._runners if task is not asyncio.current_task()]
        if not runners:
            return
        _, pending = await asyncio.wait(runners, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            log.warning(
                "%s: %d handler(s) still running after %s s were cancelled",
                self._name,
                len(pending),
                timeout,
            )
            await asyncio.gather(*pending, return_exceptions=True)
