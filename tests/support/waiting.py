"""Wait for a condition with a deadline instead of sleeping a guessed amount."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")


@overload
async def wait_until(
    condition: Callable[[], Awaitable[T | None]], timeout: float, what: str
) -> T: ...


@overload
async def wait_until(condition: Callable[[], T | None], timeout: float, what: str) -> T: ...


async def wait_until(condition: Callable[[], object], timeout: float, what: str) -> object:
    """Poll ``condition`` every 20 ms until it returns something true; return that
    (never ``None``, which is false).

    ``condition`` is a plain function or an ``async def`` (awaited at each poll).
    It may raise to fail at once (the process it waits for has died).

    Raises:
        AssertionError: naming ``what``, if it stays false for ``timeout`` s.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.02)
