"""Failing fast the calls nobody will answer: a method whose queue has no consumer.

A call to a method that no queue takes comes back from the broker at once
(``UnroutableError``). A call routed to a queue whose callees are all gone would
wait there for its whole timeout (or forever without one): the queue outlives
its consumers. So while calls are pending, their RPC looks at each method's
queue every :data:`PERIOD` seconds (a passive ``queue.declare`` on a channel of
its own, so a queue deleted meanwhile cannot close the calling channel), and a
queue seen without a consumer twice running fails the calls sent before the
first of the two looks with :class:`~leveret.exceptions.NoCalleeError`: within about a
second, and never for a callee that was only between two deliveries.

The trade-off, written down: a callee that reconnects (a broker restart, a
network blip) is briefly not a consumer, and calls sent to it then fail
although it comes back; a failed call stays in its queue until its expiration,
so a callee that starts in time may still run it (its reply is dropped). An RPC
created with ``fail_fast=False`` does not look, and waits as aio-pika does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from ..exceptions import AMQPError, NotFoundError
from ._seam import PatternChannel

log = logging.getLogger("leveret.patterns")

#: Seconds between two looks at the queues of pending calls.
PERIOD = 0.4


class PendingCall(NamedTuple):
    """A call waiting for its reply."""

    future: asyncio.Future[Any]
    method: str
    queue: str  # the queue it was routed to (its method's)
    sent: float  # time.monotonic()


class CalleeWatch:
    """Looks at the queues of pending calls; reports the methods nobody serves.

    ``pending`` is the RPC's map of pending calls by correlation id;
    ``fail(method, before, why)`` fails the calls of ``method`` sent before
    ``before`` (a ``time.monotonic()``).
    """

    def __init__(
        self,
        channel: PatternChannel,
        pending: Mapping[str, PendingCall],
        fail: Callable[[str, float, str], None],
    ) -> None:
        self._channel = channel
        self._pending = pending
        self._fail = fail
        self._side: PatternChannel | None = None
        self._task: asyncio.Task[None] | None = None
        # queue -> when the last look that found no consumer on it began
        self._empty_since: dict[str, float] = {}

    def sent(self) -> None:
        """A call was sent: look at its queue soon (if not already looking)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        try:
            while self._pending:
                # First a pause: an unroutable call comes back at once and is gone by
                # then, so no look is spent on a queue that does not exist.
                await asyncio.sleep(PERIOD)
                await self._look()
        except Exception:  # a bug here must not leave calls hanging silently
            log.exception("leveret: looking for the callees of pending calls failed")
        finally:
            self._empty_since.clear()

    async def _look(self) -> None:
        queues: dict[str, str] = {}
        settled = time.monotonic() - PERIOD / 2  # calls older than this were routed
        for call in self._pending.values():
            if call.sent < settled:
                queues[call.queue] = call.method
        for queue in list(self._empty_since):
            if queue not in queues:
                del self._empty_since[queue]
        for queue, method in queues.items():
            looked = time.monotonic()
            consumers = await self._consumers(queue)
            if consumers is None or consumers > 0:
                self._empty_since.pop(queue, None)
                continue
            if consumers < 0:  # the queue is gone, and the calls in it with it
                self._fail(method, looked, f"its queue {queue!r} was deleted")
                continue
            # Two looks running without a consumer, both after the call was sent.
            previous = self._empty_since.get(queue)
            self._empty_since[queue] = looked
            if previous is not None:
                self._fail(method, previous, f"its queue {queue!r} has no consumer")

    async def _consumers(self, queue: str) -> int | None:
        """How many consume ``queue``; -1 if it does not exist; None if unknown now."""
        try:
            if self._side is None or self._side.is_closed:
                self._side = await self._channel.connection.channel(publisher_confirms=False)
            return (await self._side.queue_declare(queue, passive=True)).consumer_count
        except NotFoundError:
            self._side = None  # the broker closed it over the 404
            return -1
        except AMQPError as exc:  # reconnecting: look again next time
            log.debug("cannot look at queue %r now: %s", queue, exc)
            return None

    async def close(self) -> None:
        """Stop looking and close the channel of its own. Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        side, self._side = self._side, None
        if side is not None and not side.is_closed:
            with contextlib.suppress(AMQPError):
                await side.close()
