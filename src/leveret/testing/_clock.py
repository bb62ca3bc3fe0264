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
    there is a loop) plus what :meth:`MemoryBroker.advance` added; while it
    advances, time stands still at each moment it handles (:meth:`hold`)."""

    __slots__ = ("_held", "_loop", "offset")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._held: float | None = None
        #: Seconds added by advancing so far.
        self.offset = 0.0

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def _base(self) -> float:
        loop = self._loop
        return time.monotonic() if loop is None or loop.is_closed() else loop.time()

    def now(self) -> float:
        """The broker's monotonic time."""
        held = self._held
        return held if held is not None else self._base() + self.offset

    def wall(self) -> float:
        """The broker's wall-clock time (``time.time()`` moved on as :meth:`now` is)."""
        return time.time() + (self.now() - self._base())

    def hold(self, when: float) -> None:
        """Stand still at ``when`` (never earlier than now) until :meth:`release`."""
        self._held = max(when, self.now())

    def release(self) -> None:
        """Run on from where time was held."""
        if self._held is not None:
            self.offset = self._held - self._base()
            self._held = None

    def call_at(self, when: float, callback: Callable[[], None]) -> asyncio.TimerHandle | None:
        """Call ``callback`` when broker time reaches ``when`` (None without a live loop)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return None
        return loop.call_at(when - self.offset, callback)
