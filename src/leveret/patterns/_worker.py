"""Workers: run each task of one queue, then ack, retry or dead-letter it.

Outcomes of a delivery:

- the function returns: ack;
- it raises and the retry policy allows another attempt: re-publish to the
  delay queue for that attempt (confirmed), then ack;
- it raises for the last time, raises ``RejectMessage``/``NackMessage`` without
  requeue, or the task cannot be decoded or does not fit the function: publish
  to ``<task>.dlq`` with headers saying why (confirmed), then ack;
- ``requeue=True`` (``NackMessage``/``RejectMessage``, or a master made with
  ``requeue=True`` when the function raises): the broker requeues it and
  redelivers it; the redelivery is counted (see :mod:`._retry`), so it cannot
  come back forever.

Without a dead-letter queue (``dead_letter=False``) such tasks are rejected
without requeue (dropped, or routed by the queue's own dead-letter exchange).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from typing import TYPE_CHECKING, Any

from ..amqp import Delivery
from ..exceptions import AMQPError, PatternError, SerializationError
from . import _observe
from ._base import KeywordCall, PatternChannel
from ._retry import (
    ATTEMPT_HEADER,
    ATTEMPTS_HEADER,
    DEAD_LETTERED_AT_HEADER,
    DELIVERY_COUNT_HEADER,
    EXCEPTION_MESSAGE_HEADER,
    EXCEPTION_TYPE_HEADER,
    ORIGINAL_EXCHANGE_HEADER,
    ORIGINAL_ROUTING_KEY_HEADER,
    REASON_HEADER,
    REDELIVERIES_HEADER,
    TRACEBACK_HEADER,
    RetryPolicy,
    _current,
    dead_letter_queue,
    int_header,
    retry_queue,
)
from ._runner import Runner
from ._settle import move, settle

if TYPE_CHECKING:
    from ._master import Master

log = logging.getLogger("leveret.patterns")


class MessageProcessingError(PatternError):
    """Raised by a task function to settle its task in a particular way."""

    def __init__(self, requeue: bool = False) -> None:
        self.requeue = requeue
        super().__init__(f"{type(self).__name__}(requeue={requeue})")


class NackMessage(MessageProcessingError):
    """Raise in a task function to ``basic.nack`` the task (``requeue`` as asked)."""


class RejectMessage(MessageProcessingError):
    """Raise in a task function to ``basic.reject`` the task (``requeue`` as asked)."""


class Worker:
    """A consumer of one task queue (made by :meth:`Master.create_worker`).

    :meth:`close` stops it gracefully.
    """

    def __init__(
        self,
        master: Master,
        call: KeywordCall,
        *,
        retries: RetryPolicy,
        dead_letter: bool,
        time_limit: float | None,
        retry_arguments: dict[str, Any],
        limit: int,
        queue_type: str = "classic",
        requeue: bool = False,
        reject_on_redelivered: bool = False,
        throwaway: bool = False,
    ) -> None:
        self.master = master
        self.channel: PatternChannel = master.channel
        self.queue = call.name
        self.consumer_tag = ""
        self.retries = retries
        self.dead_letter = dead_letter
        self.time_limit = time_limit
        self.requeue = requeue
        self.reject_on_redelivered = reject_on_redelivered
        self._call = call
        self._retry_arguments = retry_arguments
        self._queue_type = queue_type
        # An auto-delete or exclusive worker's dead-letter and retry queues go with it.
        self._throwaway = throwaway
        self._own_queues: set[str] = set()
        # A quorum queue counts deliveries (x-delivery-count) and enforces its limit;
        # on a classic queue that header proves nothing (anyone can send it).
        self._broker_counts = queue_type == "quorum"
        self._runner = Runner(self._handle, limit, f"worker {call.name!r}")
        self._closed = False

    @property
    def in_flight(self) -> int:
        """Tasks received by this worker and not finished yet."""
        return self._runner.active + self._runner.waiting

    async def _start(self) -> None:
        self.consumer_tag = await self.channel.consume(
            self.queue, self._runner.push, prefetch_count=self._runner.limit
        )

    async def close(self, timeout: float | None = None) -> None:
        """Stop consuming; tasks already running finish first.

        Tasks received but not started go back to the queue at once. After
        ``timeout`` seconds the tasks still running are cancelled and requeued;
        nothing is acked that did not finish. Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(AMQPError):
            await self.channel.cancel(self.consumer_tag)
        await self._runner.close(timeout)
        if self._throwaway:
            await self._delete_own_queues()

    async def _delete_own_queues(self) -> None:
        for queue in sorted(self._own_queues):
            try:
                dropped = await self.channel.queue_delete(queue)
            except AMQPError as exc:
                log.warning("worker %r could not delete %s: %s", self.queue, queue, exc)
                continue
            if dropped:
                log.warning(
                    "worker %r deleted %s with %d message(s) in it: it was auto_delete or "
                    "exclusive, so its queues go with it",
                    self.queue,
                    queue,
                    dropped,
                )
        self._own_queues.clear()

    def __repr__(self) -> str:
        return f"<Worker queue={self.queue!r} tag={self.consumer_tag!r}>"

    # -- one delivery --------------------------------------------------------------

    def _log(
        self,
        level: int,
        delivery: Delivery,
        attempt: int,
        message: str,
        *args: Any,
        exc_info: BaseException | None = None,
    ) -> None:
        """Log about one task: the line names it, and ``extra`` carries the fields."""
        message_id = delivery.properties.message_id
        log.log(
            level,
            f"task %r (message %s, attempt %d): {message}",
            self.queue,
            message_id,
            attempt,
            *args,
            exc_info=exc_info,
            extra={
                "task": self.queue,
                "message_id": message_id,
                "attempt": attempt,
                "correlation_id": delivery.properties.correlation_id,
            },
        )

    async def _handle(self, delivery: Delivery) -> None:
        if not _observe.observers:
            await self._process(delivery)
            return
        tokens = _observe.start("task", self.queue, delivery)
        outcome: tuple[str, BaseException | None] = (_observe.REQUEUED, None)
        try:
            outcome = await self._process(delivery)
        finally:
            _observe.finish("task", self.queue, tokens, *outcome)

    async def _process(self, delivery: Delivery) -> tuple[str, BaseException | None]:
        """Run one task and settle it; returns the outcome for observers."""
        name = self.queue
        headers = delivery.properties.headers
        attempt = int_header(headers, ATTEMPT_HEADER, 1)
        redeliveries = int_header(
            headers, DELIVERY_COUNT_HEADER if self._broker_counts else REDELIVERIES_HEADER, 0
        )
        if delivery.redelivered and not self._broker_counts:
            # A classic queue does not count deliveries: count this one ourselves.
            return await self._redelivered(delivery, attempt, redeliveries + 1), None
        try:
            kwargs = self.master._decode(delivery)
        except SerializationError as exc:
            return await self._dead_letter(delivery, str(exc), attempt), exc
        problem = self._call.check(kwargs)
        if problem is not None:
            reason = f"{problem} for {self._call.func!r}"
            return await self._dead_letter(delivery, reason, attempt), None
        # What current_task() reports, built only if the function asks for it.
        token = _current.set((name, delivery, attempt, redeliveries))
        limit = None if self.time_limit is None else asyncio.timeout(self.time_limit)
        try:
            if limit is None:  # entering a timeout context costs a few µs per task
                await self._call(kwargs)
            else:
                async with limit:
                    await self._call(kwargs)
        except MessageProcessingError as exc:
            if exc.requeue:
                settle(delivery, "nack", requeue=True, what=f"task {name!r}")
                return _observe.REQUEUED, exc
            verb = "rejected" if isinstance(exc, RejectMessage) else "nacked"
            # The function's own decision: worth a note, not an error.
            reason = f"{verb} by the task function"
            return await self._dead_letter(delivery, reason, attempt, level=logging.INFO), exc
        except asyncio.CancelledError:
            settle(delivery, "nack", requeue=True, what=f"task {name!r}")
            raise
        except Exception as exc:
            if isinstance(exc, TimeoutError) and limit is not None and limit.expired():
                exc = TimeoutError(f"task {name!r} ran longer than its {self.time_limit} s limit")
            return await self._failed(delivery, exc, attempt, redeliveries), exc
        finally:
            _current.reset(token)
        settle(delivery, "ack", what=f"task {name!r} finished, but")
        return _observe.SUCCEEDED, None

    async def _failed(
        self, delivery: Delivery, error: BaseException, attempt: int, redeliveries: int
    ) -> str:
        if self.retries.should_retry(attempt, error):
            delay = self.retries.delay(attempt + 1)
            self._log(
                logging.WARNING,
                delivery,
                attempt,
                "failed with %s: %s; retrying in %.1f s",
                type(error).__name__,
                error,
                delay,
            )
            queue = retry_queue(self.queue, attempt + 1)
            await self._republish(
                delivery, queue, {ATTEMPT_HEADER: attempt + 1}, expiration=max(1, int(delay * 1000))
            )
            return _observe.RETRIED
        again = self.reject_on_redelivered and redeliveries > 0
        if self.requeue and not again:
            self._log(
                logging.WARNING,
                delivery,
                attempt,
                "failed with %s: %s; requeued (requeue=True)",
                type(error).__name__,
                error,
            )
            settle(delivery, "nack", requeue=True, what=f"task {self.queue!r}")
            return _observe.REQUEUED
        self._log(logging.ERROR, delivery, attempt, "failed", exc_info=error)
        if again:
            reason = f"failed again after {redeliveries} redelivery(s) (reject_on_redelivered)"
        else:
            reason = f"failed after {attempt} attempt{'s' if attempt > 1 else ''}"
        await self._dead_letter(delivery, reason, attempt, error)
        return _observe.FAILED

    async def _redelivered(self, delivery: Delivery, attempt: int, redeliveries: int) -> str:
        if redeliveries > self.retries.max_redeliveries:
            return await self._dead_letter(
                delivery,
                f"redelivered {redeliveries} times (it may crash its worker, or was requeued "
                "again and again)",
                attempt,
            )
        # Back to the end of the queue, counted, so a task that kills its worker
        # cannot come back forever.
        await self._republish(delivery, self.queue, {REDELIVERIES_HEADER: redeliveries})
        return _observe.REQUEUED

    async def _dead_letter(
        self,
        delivery: Delivery,
        reason: str,
        attempt: int,
        error: BaseException | None = None,
        *,
        level: int = logging.ERROR,
    ) -> str:
        name = self.queue
        if not self.dead_letter:
            self._log(level, delivery, attempt, "rejected without requeue: %s", reason)
            settle(delivery, "reject", what=f"task {name!r}")
            return _observe.REJECTED
        headers: dict[str, Any] = {
            REASON_HEADER: reason[:2000],  # reasons quote what they reject: keep the header bounded
            ATTEMPTS_HEADER: attempt,
            ORIGINAL_EXCHANGE_HEADER: delivery.exchange,
            ORIGINAL_ROUTING_KEY_HEADER: delivery.routing_key,
            DEAD_LETTERED_AT_HEADER: int(time.time()),
        }
        if error is not None:
            headers[EXCEPTION_TYPE_HEADER] = type(error).__name__
            headers[EXCEPTION_MESSAGE_HEADER] = str(error)[:2000]
            headers[TRACEBACK_HEADER] = "".join(traceback.format_exception(error))[-8000:]
        self._log(level, delivery, attempt, "goes to %s: %s", dead_letter_queue(name), reason)
        await self._republish(delivery, dead_letter_queue(name), headers)
        return _observe.DEAD_LETTERED

    async def _republish(
        self,
        delivery: Delivery,
        queue: str,
        headers: dict[str, Any],
        *,
        expiration: int | None = None,
    ) -> None:
        async def declare() -> None:
            await self._declare(queue)

        what = f"task {self.queue!r} (message {delivery.properties.message_id})"
        await move(
            self.channel,
            delivery,
            queue,
            headers,
            expiration=expiration,
            declare=declare,
            what=what,
        )

    async def _declare(self, queue: str) -> None:
        """Declare this worker's dead-letter queue or one of its retry queues."""
        if queue == dead_letter_queue(self.queue):
            # The same type as the task queue: a quorum task queue dead-letters into it
            # itself, and a re-declare of another type would fail with 406.
            quorum = self._queue_type == "quorum"
            arguments = {"x-queue-type": "quorum"} if quorum else None
            await self.channel.queue_declare(queue, durable=True, arguments=arguments)
        else:
            await self.channel.queue_declare(queue, durable=True, arguments=self._retry_arguments)
        self._own_queues.add(queue)
