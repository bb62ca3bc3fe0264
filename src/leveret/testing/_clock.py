"""The in-memory broker's clock: the one place its time is read, and moved on.

Broker time is the event loop's clock plus an offset that only
:meth:`MemoryBroker.advance` grows, so a test can let an hour pass in a
millisecond while the timers of the real clock keep running for shorter waits.
Expiry times (message TTLs, ``x-expires``) are kept in broker time; timers are
armed on the loop at the loop time that broker time will be reached.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

# asyncio runs a timer up to one clock tick early; something due within that
# tick counts as due, or its timer would fire again and again for nothing.
CLOCK_SLACK = time.get_clock_info("monotonic").resolution


class Clock:
    """Broker time in seconds: the loop's ``time()`` (``time.monotonic()`` before
    there is a loop) plus what :meth:`advance` added."""

    __slots__ = ("_loop", "offset")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Seconds added by :meth:`advance` so far.
        self.offset = 0.0

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def now(self) -> float:
        """The broker's monotonic time."""
        loop = self._loop
        base = time.monotonic() if loop is None or loop.is_closed() else loop.time()
        return base + self.offset

    def wall(self) -> float:
        """The broker's wall-clock time (``time.time()`` moved on as :meth:`now` is)."""
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def call_at(self, when: float, callback: Callable[[], None]) -> asyncio.TimerHandle | None:
        """Call ``callback`` when broker time reaches ``when`` (None without a live loop)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return None
        return loop.call_at(when - self.offset, callback)
