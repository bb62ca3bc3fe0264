"""Plain (not ``async``) task and RPC functions: run in threads, stopped when they must be.

Each worker or callee with a plain function has a thread pool of its own, as
large as its concurrency, so a delivery it takes never waits for a thread: a
time limit or a caller's deadline counts from when the function starts, not from
when a thread came free.

A thread cannot be killed. When a plain function outlives its time limit, or its
worker is shutting down and stops waiting for it, the function is interrupted
the way dramatiq does it: an exception is raised inside its thread
(``PyThreadState_SetAsyncExc``), which stops Python code at its next line but
not a call blocked in C (``time.sleep``, a socket read) until that call
returns. The task is settled only once the thread has let go of it, by what the
function did: returned (ack, even if late: the work is done, so it is not run
again), raised the interruption (a time-out, or a requeue on shutdown), or
raised something else (the ordinary failure path). A function that ignores the
interruption past its time limit is logged after ``INTERRUPT_GRACE`` seconds
and its task settled when it returns; one that ignores it at shutdown for
``SHUTDOWN_GRACE`` seconds (on top of the shutdown timeout) is left running and
its task requeued: it may run again elsewhere, which is logged as an error.

The threads are daemon threads, so a function stuck in C never holds up the
process's exit: the stop of a worker is bounded by its shutdown timeout plus
``SHUTDOWN_GRACE``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import ctypes
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("leveret.patterns")

#: How long a function interrupted at its time limit may take to let go of its thread.
INTERRUPT_GRACE = 5.0
#: How long a function interrupted because its worker stops may take to let go.
SHUTDOWN_GRACE = 1.0

_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
_set_async_exc.argtypes = (ctypes.c_ulong, ctypes.py_object)


class Interrupted(BaseException):
    """Raised inside a plain function's thread to stop it (a BaseException, so that
    ``except Exception`` in the function does not swallow it)."""


class TimeLimitExceeded(TimeoutError):
    """A function ran longer than its time limit and was stopped (told apart from a
    ``TimeoutError`` the function raised itself)."""


class _Call:
    """One plain function running in a thread, and the means to interrupt it once."""

    __slots__ = (
        "_lock",
        "cancelled",
        "context",
        "func",
        "interrupted",
        "kwargs",
        "started",
        "thread",
    )

    def __init__(self, func: Callable[..., Any], kwargs: dict[str, Any]) -> None:
        self.func = func
        self.kwargs = kwargs
        # The thread sees the caller's context variables (current_task() works there).
        self.context = contextvars.copy_context()
        self.thread: int | None = None
        self.started: float | None = None  # time.monotonic(), the event loop's clock
        self.interrupted = False
        self.cancelled = False
        self._lock = threading.Lock()

    def run(self) -> Any:
        try:
            with self._lock:
                if self.cancelled:
                    raise Interrupted
                self.thread = threading.get_ident()
                self.started = time.monotonic()
            return self.context.run(self.func, **self.kwargs)
        finally:
            # Trap: an exception set with PyThreadState_SetAsyncExc fires at the next
            # line this thread runs, wherever that is. After this block none can be
            # pending; one that fires inside it (the function had just returned) is
            # dropped, so it never escapes into the thread pool's own code.
            while True:
                try:
                    with self._lock:
                        if self.thread is not None:
                            self.thread = None
                            _set_async_exc(threading.get_ident(), ctypes.py_object())
                    break
                except Interrupted:
                    continue

    def cancel(self) -> bool:
        """Keep the function from starting, if it has not started yet."""
        with self._lock:
            if self.started is None:
                self.cancelled = True
            return self.cancelled

    def interrupt(self) -> bool:
        """Raise :class:`Interrupted` in the thread, if the function still runs there."""
        with self._lock:
            if self.thread is None or self.interrupted:
                return False
            self.interrupted = True
            _set_async_exc(self.thread, ctypes.py_object(Interrupted))
            return True


class _DaemonThreads:
    """Up to ``size`` daemon threads, started as work comes, taking calls from one queue.

    Not ``concurrent.futures.ThreadPoolExecutor``: its threads are joined when the
    interpreter exits, so one function blocked in C would hold the process open.
    """

    def __init__(self, size: int, name: str) -> None:
        self._size = size
        self._name = name
        self._started = 0
        self._calls: queue.SimpleQueue[tuple[concurrent.futures.Future[Any], _Call] | None]
        self._calls = queue.SimpleQueue()

    def submit(self, call: _Call) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._calls.put((future, call))
        if self._started < self._size:
            self._started += 1
            name = f"{self._name}_{self._started}"
            threading.Thread(target=self._work, name=name, daemon=True).start()
        return future

    def _work(self) -> None:
        while (item := self._calls.get()) is not None:
            future, call = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = call.run()
            except BaseException as exc:  # delivered to the awaiting side, never lost
                future.set_exception(exc)
            else:
                future.set_result(result)

    def shutdown(self) -> None:
        for _ in range(self._started):
            self._calls.put(None)


class ThreadPool:
    """The threads of one worker or callee (``size`` of them), named after it."""

    def __init__(self, size: int, name: str) -> None:
        self.size = size
        self._threads = _DaemonThreads(size, name)
        self._name = name

    async def run(
        self,
        func: Callable[..., Any],
        kwargs: dict[str, Any],
        *,
        time_limit: float | None = None,
        grace: float = INTERRUPT_GRACE,
    ) -> Any:
        """``func(**kwargs)`` in a thread of the pool; its result, or what it raised.

        Raises:
            TimeLimitExceeded: it ran longer than ``time_limit`` seconds (counted
                from when it started) and was interrupted (one that ignores the
                interruption for ``grace`` seconds is logged and waited for).
            asyncio.CancelledError: the caller was cancelled and the function
                was interrupted (or did not let go within ``SHUTDOWN_GRACE``: logged).
        """
        loop = asyncio.get_running_loop()
        call = _Call(func, kwargs)
        future = asyncio.wrap_future(self._threads.submit(call), loop=loop)
        try:
            if time_limit is None:
                return await asyncio.shield(future)
            while True:
                started = call.started
                wait = time_limit if started is None else started + time_limit - loop.time()
                if wait > 0:
                    done, _ = await asyncio.wait((future,), timeout=wait)
                    if done:
                        return future.result()
                elif call.interrupt():
                    return await self._after_time_limit(future, call, time_limit, grace)
                else:  # it returned just now: the result is on its way
                    return await asyncio.shield(future)
        except asyncio.CancelledError:
            if call.cancel():
                raise  # it never started: the task goes back to its queue untouched
            call.interrupt()
            result = await self._after_cancel(future, SHUTDOWN_GRACE)
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # the function finished after all: its result is settled
            return result

    async def _after_time_limit(
        self, future: asyncio.Future[Any], call: _Call, time_limit: float, grace: float
    ) -> Any:
        done, _ = await asyncio.wait((future,), timeout=grace)
        if not done:
            log.error(
                "%s: a plain function ran past its %s s time limit and ignores the interruption "
                "(blocked in C code?); it is left running and its task will be settled when "
                "it returns",
                self._name,
                time_limit,
            )
            await asyncio.wait((future,))
        try:
            result = future.result()
        except Interrupted:
            raise TimeLimitExceeded(f"ran longer than its {time_limit} s limit") from None
        log.warning(
            "%s: a plain function finished after its %s s time limit: its result is kept",
            self._name,
            time_limit,
        )
        return result

    async def _after_cancel(self, future: asyncio.Future[Any], grace: float) -> Any:
        done, _ = await asyncio.wait((future,), timeout=grace)
        if not done:
            log.error(
                "%s: a plain function ignores the interruption after %s s (blocked in C code?); "
                "it is left running in its thread, and its task is requeued: it may run again",
                self._name,
                grace,
            )
            raise asyncio.CancelledError
        try:
            return future.result()
        except Interrupted:
            raise asyncio.CancelledError from None

    def shutdown(self) -> None:
        """Let the threads end once idle (running functions are not waited for)."""
        self._threads.shutdown()
