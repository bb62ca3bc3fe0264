"""Serving until the process is asked to stop, then stopping gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

log = logging.getLogger("leveret.patterns")


class Closable(Protocol):
    """A Master, Worker or RPC: something that closes gracefully within a timeout."""

    async def close(self, timeout: float | None = None) -> None: ...


#: What runs while :func:`serve` serves, given its services: entered before it waits
#: for a signal, left once they are closed (the fleet's heartbeats register here).
ServeHook = Callable[[Sequence[Closable]], AbstractAsyncContextManager[object]]
serve_hooks: list[ServeHook] = []


async def serve(
    *services: Closable,
    timeout: float = 30.0,
    signals: Iterable[signal.Signals] = (signal.SIGINT, signal.SIGTERM),
) -> signal.Signals:
    """Run until one of ``signals`` arrives, then close ``services`` gracefully.

    Closing stops consuming at once, requeues tasks received but not started,
    and gives running ones ``timeout`` seconds before they are cancelled and
    requeued: nothing is acked that did not finish. A second signal while closing
    gets the default behaviour (Ctrl-C raises ``KeyboardInterrupt``). Returns the
    signal that stopped it.
    """
    loop = asyncio.get_running_loop()
    received: asyncio.Future[signal.Signals] = loop.create_future()
    chosen = list(signals)

    def stop(signum: signal.Signals) -> None:
        if not received.done():
            received.set_result(signum)

    # The signals first: one that comes while a hook starts is kept, not fatal.
    for signum in chosen:
        loop.add_signal_handler(signum, stop, signum)
    async with contextlib.AsyncExitStack() as hooks:
        try:
            for hook in serve_hooks:
                await hooks.enter_async_context(hook(services))
            got = await received
        finally:
            for signum in chosen:
                loop.remove_signal_handler(signum)
        log.info("%s received: stopping; running tasks get %s s to finish", got.name, timeout)
        await asyncio.gather(*(service.close(timeout) for service in services))
    return got
