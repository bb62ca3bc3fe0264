"""What a worker and an RPC callee share: consuming one queue and the skeleton around
each delivery.

A :class:`Handler` consumes its queue through a :class:`Runner` (bounded
concurrency), tells its observers about each delivery, logs about it in one
format, counts redeliveries, and requeues a delivery whose handling was
cancelled. What is done with a delivery (run a task and ack, retry or
dead-letter it; run a call and reply) is the subclass's :meth:`Handler._process`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar

from ..amqp import Delivery
from ..exceptions import AMQPError, ConsumerTimeoutError
from ._call import KeywordCall
from ._observe import OUTCOMES, REJECTED, REQUEUED, SKIPPED, Kind, Observers, Outcome
from ._retry import DELIVERY_COUNT_HEADER, PARKED_HEADER, REDELIVERIES_HEADER, int_header
from ._runner import Runner
from ._seam import PatternChannel
from ._settle import move, settle
from ._threads import ThreadPool, TimeLimitExceeded

log = logging.getLogger("leveret.patterns")

#: How handling a delivery ended, for the observers: the outcome and what was raised.
Result = tuple[Outcome, BaseException | None]
#: Deliveries remembered as handled although their ack never reached the broker.
HANDLED_MEMORY = 10_000
#: Handling times a callee keeps (its latest), for its percentiles.
DURATIONS_KEPT = 1000


class Handler:
    """One consumer of one queue, handling at most ``limit`` deliveries at once.

    ``broker_counts``: the queue is a quorum queue, which counts deliveries
    itself (``x-delivery-count``); on a classic queue that header proves
    nothing (anyone can send it), so a redelivery is counted here instead.
    """

    #: ``"task"`` or ``"call"``: what observers and log lines call a delivery.
    kind: ClassVar[Kind]

    def __init__(
        self,
        channel: PatternChannel,
        queue: str,
        call: KeywordCall,
        *,
        limit: int,
        broker_counts: bool,
        max_redeliveries: int,
        observers: Observers,
    ) -> None:
        self.channel = channel
        #: The queue consumed (for a callee on an exchange, ``"<exchange>::<method>"``).
        self.queue = queue
        #: The task or method name.
        self.name = name = call.name
        self.call = call
        self.consumer_tag = ""
        self._broker_counts = broker_counts
        self._max_redeliveries = max_redeliveries
        self._observers = observers
        self._runner = Runner(self._handle, limit, f"{self.kind} {name!r}")
        # A plain function gets as many threads as deliveries run at once: none waits.
        self._threads = None if call.is_async else ThreadPool(limit, f"leveret {self.kind} {name}")
        #: The deliveries whose function runs now, with when it started (time.monotonic()).
        self.running: dict[Delivery, float] = {}
        # Deliveries handled to the end whose ack was lost with their channel: when the
        # broker hands one back, it is acked, not run again (see _already_handled).
        self._handled: OrderedDict[tuple[Any, ...], Outcome] = OrderedDict()
        # Only ever compared with itself: the plain C clock, not a loop method around it.
        self._clock = time.monotonic
        #: The broker's consumer_timeout, once a channel close told it.
        self._consumer_timeout: float | None = None
        self._parking = False  # a copy was parked: deliveries may carry PARKED_HEADER
        self._closed = False
        #: How handling ended, counted per outcome since this handler started (the
        #: fleet's heartbeats report them: one dict increment per delivery).
        self.outcomes: dict[Outcome, int] = dict.fromkeys(OUTCOMES, 0)
        #: A callee's latest handling times in seconds (``None`` for a worker).
        self.durations: deque[float] | None = (
            deque(maxlen=DURATIONS_KEPT) if self.kind == "call" else None
        )

    @property
    def limit(self) -> int:
        """Deliveries handled at once at most (the consumer's prefetch)."""
        return self._runner.limit

    @property
    def in_flight(self) -> int:
        """Deliveries received by this consumer and not finished yet."""
        return self._runner.active + self._runner.waiting

    async def start(self) -> None:
        """Start consuming (with this handler's prefetch)."""
        self.channel.close_callbacks.append(self._on_channel_closed)
        try:
            self.consumer_tag = await self.channel.consume(
                self.queue, self._runner.push, prefetch_count=self._runner.limit
            )
        except BaseException:
            self._forget_channel()
            raise

    async def close(self, timeout: float | None = None) -> None:
        """Stop consuming; deliveries already being handled finish first.

        Deliveries received but not started go back to the queue at once. After
        ``timeout`` seconds those still running are cancelled and requeued;
        nothing is acked that did not finish. Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        if self.consumer_tag:
            with contextlib.suppress(AMQPError):
                await self.channel.cancel(self.consumer_tag)
        await self._runner.close(timeout)
        self._forget_channel()
        if self._threads is not None:
            self._threads.shutdown()

    def _forget_channel(self) -> None:
        with contextlib.suppress(ValueError):
            self.channel.close_callbacks.remove(self._on_channel_closed)

    def _on_channel_closed(self, channel: PatternChannel, reason: BaseException | None) -> None:
        if channel.is_closed:  # a robust channel that will reopen is not closed
            self._runner.abandon()  # nothing can be settled any more
            return
        # It will reopen, but the deliveries of this life of the channel cannot be
        # settled any more: the broker has requeued them. Those not started are
        # dropped (they come back); those running finish, and are remembered.
        waiting = self._runner.drop_waiting()
        if isinstance(reason, ConsumerTimeoutError):
            self._consumer_timed_out(reason, waiting)

    def _consumer_timed_out(self, reason: ConsumerTimeoutError, waiting: int) -> None:
        limit = self._consumer_timeout = reason.timeout
        now = self._clock()
        for delivery, started in list(self.running.items()):
            age = now - started
            if limit is not None and age < limit:
                continue
            self._log(
                logging.ERROR,
                delivery,
                "has run %.1f s, past the broker's consumer_timeout (%s): RabbitMQ closed the "
                "channel and requeued its unacked deliveries (%d not started here yet). It "
                "finishes here and is not run again by this %s when it comes back; set a "
                "time_limit below consumer_timeout, or raise consumer_timeout in rabbitmq.conf",
                age,
                f"{limit:g} s" if limit is not None else "unknown",
                waiting,
                "worker" if self.kind == "task" else "callee",
            )

    # -- one delivery ----------------------------------------------------------------

    async def _handle(self, delivery: Delivery) -> None:
        observers = self._observers
        started = observers.start(self.kind, self.name, delivery) if observers else None
        durations = self.durations
        began = self._clock() if durations is not None else 0.0
        result: Result = (REQUEUED, None)
        try:
            again = delivery.redelivered or (
                self._parking and PARKED_HEADER in (delivery.properties.headers or ())
            )
            if again and self._handled and self._already_handled(delivery):
                result = (SKIPPED, None)
            elif again and self._running_here(delivery):
                result = (await self._running_elsewhere(delivery), None)
            else:
                result = await self._process(delivery)
                if delivery.settled is None and result[0] not in (REQUEUED, REJECTED):
                    self._remember(delivery, result[0])
        except asyncio.CancelledError:
            # Shutdown ran out of time, or the channel is gone: back to the queue.
            settle(delivery, "nack", requeue=True, what=self._what(delivery))
            raise
        finally:
            self.outcomes[result[0]] += 1
            if durations is not None:
                durations.append(self._clock() - began)
            if started is not None:
                observers.finish(started, self.kind, self.name, *result)

    @staticmethod
    def _identity(delivery: Delivery) -> tuple[Any, ...]:
        props = delivery.properties
        return (props.message_id, props.correlation_id, delivery.routing_key, hash(delivery.body))

    def _remember(self, delivery: Delivery, outcome: Outcome) -> None:
        """``delivery`` was handled to the end, but its ack was lost with its channel."""
        handled = self._handled
        handled[self._identity(delivery)] = outcome
        while len(handled) > HANDLED_MEMORY:
            handled.popitem(last=False)

    def _running_here(self, delivery: Delivery) -> bool:
        """Whether another delivery of the same message is running here now (the
        broker requeued it when the channel closed under it, as after a
        consumer_timeout, and handed it back while the first run goes on)."""
        identity = self._identity(delivery)
        return any(
            other is not delivery and self._identity(other) == identity for other in self.running
        )

    async def _running_elsewhere(self, delivery: Delivery) -> Outcome:
        """What to do with a redelivery of a message that is running here already
        (see :meth:`_running_here`); the subclass decides."""
        raise NotImplementedError

    def _already_handled(self, delivery: Delivery) -> bool:
        """Ack ``delivery`` if it is one this handler ran to the end before (the broker
        requeued it when the channel closed under it, as after a consumer_timeout)."""
        outcome = self._handled.pop(self._identity(delivery), None)
        if outcome is None:
            return False
        self._log(
            logging.WARNING,
            delivery,
            "came back after its channel closed, but it was already handled here (%s); "
            "acked, not run again",
            outcome.replace("_", " "),
        )
        settle(delivery, "ack", what=self._what(delivery))
        return True

    async def _run(
        self, delivery: Delivery, kwargs: dict[str, Any], time_limit: float | None = None
    ) -> Any:
        """The function's result for ``kwargs`` (from ``delivery``): awaited on the event
        loop, or run in one of this handler's threads.

        Raises:
            TimeLimitExceeded: it ran longer than ``time_limit`` seconds.
            Exception: what the function raised.
        """
        self.running[delivery] = self._clock()
        try:
            if time_limit is None and self._threads is None:  # the common case: no detour
                return await self.call.func(**kwargs)
            return await self._call_function(kwargs, time_limit)
        finally:
            del self.running[delivery]

    async def _call_function(self, kwargs: dict[str, Any], time_limit: float | None) -> Any:
        func = self.call.func
        if self._threads is not None:
            result = await self._threads.run(func, kwargs, time_limit=time_limit)
            if inspect.isawaitable(result):  # a plain function that hands back a coroutine
                result = await result
            return result
        if time_limit is None:
            return await func(**kwargs)
        limit = asyncio.timeout(time_limit)
        try:
            async with limit:
                return await func(**kwargs)
        except TimeoutError:
            if limit.expired():
                raise TimeLimitExceeded(f"ran longer than its {time_limit} s limit") from None
            raise

    async def _process(self, delivery: Delivery) -> Result:
        """Handle and settle one delivery; never raises but ``CancelledError``."""
        raise NotImplementedError

    def _uncounted(self, delivery: Delivery, headers: Mapping[str, Any]) -> bool:
        """A first delivery with no headers on a classic queue: no count to read or
        keep, so :meth:`_redeliveries` (a coroutine, costly per delivery) is skipped."""
        return not (headers or delivery.redelivered or self._broker_counts)

    async def _redeliveries(self, delivery: Delivery, headers: Mapping[str, Any]) -> int | None:
        """How often this delivery was redelivered so far; ``None`` if it was just
        moved to the back of its queue to count one more.

        A quorum queue counts itself. On a classic queue a redelivered message
        is published again with the count in a header (confirmed before the
        original is acked) while under ``max_redeliveries``, so a task that
        crashes its consumer cannot come back forever; past the limit its count
        is returned for the subclass to refuse it.
        """
        if self._broker_counts:
            return int_header(headers, DELIVERY_COUNT_HEADER, 0)
        count = int_header(headers, REDELIVERIES_HEADER, 0)
        if not delivery.redelivered:
            return count
        count += 1
        if count > self._max_redeliveries:
            return count
        await self._move(delivery, self.queue, {REDELIVERIES_HEADER: count})
        if delivery.settled is None:  # the copy is out, but the ack was lost
            self._remember(delivery, REQUEUED)
        return None

    async def _move(
        self,
        delivery: Delivery,
        queue: str,
        headers: dict[str, Any],
        *,
        exchange: str = "",
        expiration: int | None = None,
        fresh: bool = False,
        declare: Callable[[], Awaitable[None]] | None = None,
    ) -> bool:
        """A copy of ``delivery`` to ``queue``, confirmed, then the original acked (see
        :func:`move`); requeued instead if the copy cannot be published. Whether it moved."""
        return await move(
            self.channel,
            delivery,
            queue,
            headers,
            exchange=exchange,
            expiration=expiration,
            fresh=fresh,
            declare=declare,
            what=self._what(delivery),
        )

    def _what(self, delivery: Delivery) -> str:
        """The delivery in a log line or error: ``task 'resize' (message abc.1)``."""
        props = delivery.properties
        if self.kind == "call":
            return f"call {self.name!r} ({props.correlation_id})"
        return f"task {self.name!r} (message {props.message_id})"

    def _log(
        self,
        level: int,
        delivery: Delivery,
        message: str,
        *args: Any,
        attempt: int = 1,
        exc_info: BaseException | None = None,
    ) -> None:
        """Log about one delivery: the line names it, and ``extra`` carries the fields
        (``task``, ``message_id``, ``attempt``, ``correlation_id``) for JSON handlers."""
        props = delivery.properties
        if self.kind == "call":
            prefix = "call %r (correlation %s, message %s): "
            ids: tuple[Any, ...] = (props.correlation_id, props.message_id)
        else:
            prefix = "task %r (message %s, attempt %d): "
            ids = (props.message_id, attempt)
        log.log(
            level,
            prefix + message,
            self.name,
            *ids,
            *args,
            exc_info=exc_info,
            extra={
                "task": self.name,
                "message_id": props.message_id,
                "attempt": attempt,
                "correlation_id": props.correlation_id,
            },
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} queue={self.queue!r} tag={self.consumer_tag!r}>"
