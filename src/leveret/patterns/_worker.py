"""Workers: run each task of one queue, then ack, retry or dead-letter it.

Outcomes of a delivery:

- the function returns: ack;
- it raises and the retry policy allows another attempt: re-publish to the
  delay ladder for the policy's delay (confirmed), then ack;
- it raises for the last time, raises ``RejectMessage``/``NackMessage`` without
  requeue, or the task cannot be decoded or does not fit the function: publish
  to ``<task>.dlq`` with headers saying why (confirmed), then ack;
- ``requeue=True`` (``NackMessage``/``RejectMessage``, or a master made with
  ``requeue=True`` when the function raises): the broker requeues it and
  redelivers it; the redelivery is counted (see :class:`Handler`), so it cannot
  come back forever.

Without a dead-letter queue (``dead_letter=False``) such tasks are rejected
without requeue (dropped, or routed by the queue's own dead-letter exchange).
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Callable
from typing import Any

from ..amqp import Delivery
from ..exceptions import (
    AMQPError,
    ConfigurationError,
    MessageProcessingError,
    RejectMessage,
    SerializationError,
)
from ._call import KeywordCall
from ._cancel import CANCELLED_REASON, revocations
from ._delay import addressed, check_name, declare_ladder, route
from ._handler import Handler, Result
from ._observe import (
    DEAD_LETTERED,
    FAILED,
    REJECTED,
    REQUEUED,
    RETRIED,
    SUCCEEDED,
    Observers,
    Outcome,
)
from ._retry import (
    ATTEMPT_HEADER,
    ATTEMPTS_HEADER,
    DEAD_LETTERED_AT_HEADER,
    EXCEPTION_MESSAGE_HEADER,
    EXCEPTION_TYPE_HEADER,
    ORIGINAL_EXCHANGE_HEADER,
    ORIGINAL_ROUTING_KEY_HEADER,
    PARKED_HEADER,
    REASON_HEADER,
    TRACEBACK_HEADER,
    RetryPolicy,
    _current,
    dead_letter_queue,
    int_header,
    parked_queue,
)
from ._seam import PatternChannel, QueueType
from ._settle import settle
from ._threads import TimeLimitExceeded

log = logging.getLogger("leveret.patterns")


class Worker(Handler):
    """A consumer of one task queue (made by :meth:`Master.create_worker`).

    :meth:`close` stops it gracefully. ``decode`` turns a delivery into the
    task's keyword arguments (raising :class:`SerializationError`); the other
    arguments are :meth:`Master.create_worker`'s.
    """

    kind = "task"

    def __init__(
        self,
        channel: PatternChannel,
        call: KeywordCall,
        decode: Callable[[Delivery], Any],
        *,
        retries: RetryPolicy,
        dead_letter: bool,
        time_limit: float | None,
        limit: int,
        queue_type: QueueType = "classic",
        requeue: bool = False,
        reject_on_redelivered: bool = False,
        throwaway: bool = False,
        observers: Observers,
    ) -> None:
        super().__init__(
            channel,
            call.name,
            call,
            limit=limit,
            broker_counts=queue_type == "quorum",
            max_redeliveries=retries.max_redeliveries,
            observers=observers,
        )
        self.retries = retries
        self.dead_letter = dead_letter
        self.time_limit = time_limit
        self.requeue = requeue
        self.reject_on_redelivered = reject_on_redelivered
        self._decode = decode
        self._queue_type = queue_type
        # An auto-delete or exclusive worker's dead-letter and delay queues go with it.
        self._throwaway = throwaway
        self._own_queues: set[str] = set()
        # Why this task's name cannot go on the delay ladder (None: it can).
        self._undelayable: str | None = None
        try:
            check_name(self.name)
        except ConfigurationError as exc:
            self._undelayable = str(exc)
        # Revoked message ids of this task (see _cancel.py): a truth test while none.
        self._revoked = revocations.of(self.name)
        # The asyncio task running each delivery's function, and those being cancelled.
        self._tasks: dict[Delivery, asyncio.Task[Any]] = {}
        self._cancelling: set[Delivery] = set()

    def cancel(self, message_id: str) -> bool:
        """Cancel the run of task ``message_id`` if it runs here now; whether it did.

        An ``async def`` function gets ``CancelledError`` at once; a plain function is
        interrupted in its thread (one blocked in C code for more than a second is
        left running, and its result is discarded). Either way the task goes to its
        dead-letter queue with the reason ``cancelled`` and is never retried.
        """
        for delivery, task in self._tasks.items():
            if delivery.properties.message_id == message_id:
                if delivery not in self._cancelling:
                    self._cancelling.add(delivery)
                    task.cancel()
                return True
        return False

    def _cancelled_here(self, delivery: Delivery) -> bool:
        """Whether a ``CancelledError`` in ``delivery``'s run came from :meth:`cancel`
        alone (then it is taken back: the delivery is settled, not the runner stopped)."""
        if delivery not in self._cancelling:
            return False
        self._cancelling.discard(delivery)
        task = asyncio.current_task()
        return task is not None and task.uncancel() == 0

    async def close(self, timeout: float | None = None) -> None:
        """Stop consuming; tasks already running finish first.

        Tasks received but not started go back to the queue at once. After
        ``timeout`` seconds the tasks still running are cancelled and requeued;
        nothing is acked that did not finish. A throwaway worker (``auto_delete``
        or ``exclusive``) then deletes the dead-letter and delay queues it made.
        Idempotent.
        """
        closing = not self._closed
        await super().close(timeout)
        if closing and self._throwaway:
            await self._delete_own_queues()

    async def _delete_own_queues(self) -> None:
        for queue in sorted(self._own_queues):
            try:
                dropped = await self.channel.queue_delete(queue)
            except AMQPError as exc:
                log.warning("worker %r could not delete %s: %s", self.name, queue, exc)
                continue
            if dropped:
                log.warning(
                    "worker %r deleted %s with %d message(s) in it: it was auto_delete or "
                    "exclusive, so its queues go with it",
                    self.name,
                    queue,
                    dropped,
                )
        self._own_queues.clear()

    async def _running_elsewhere(self, delivery: Delivery) -> Outcome:
        # Not run twice at once, and not held either (held unacked, it would trip the
        # consumer_timeout again): parked for a moment, then looked at again. By then
        # the run going on here has ended (the copy is acked) or it has not.
        self._parking = True
        wait = (self._consumer_timeout or 4.0) / 2
        queue = parked_queue(self.name)
        self._log(
            logging.WARNING,
            delivery,
            "came back while it still runs here; parked in %s for %.1f s",
            queue,
            wait,
        )
        await self._move(
            delivery,
            queue,
            {PARKED_HEADER: 1},
            expiration=max(1, int(wait * 1000)),
            declare=lambda: self.declare(queue),
        )
        return REQUEUED

    async def declare_ladder(self) -> None:
        """Declare the delay ladder and this task's delay queues (see :mod:`._delay`),
        which retries and delayed tasks wait in; for a name that cannot be delayed,
        log why (its tasks are not retried, a failure dead-letters them).

        Raises:
            BrokerError: the broker refused a declaration.
        """
        if self._undelayable is not None:
            log.warning("%s; a task of it that fails is not retried", self._undelayable)
            return
        self._own_queues.update(await declare_ladder(self.channel, self.name))

    async def declare(self, queue: str) -> None:
        """Declare this worker's dead-letter queue or its parking queue (which
        dead-letters back to the task queue)."""
        if queue == dead_letter_queue(self.name):
            # The same type as the task queue: a quorum task queue dead-letters into it
            # itself, and a re-declare of another type would fail with 406.
            quorum = self._queue_type == "quorum"
            arguments = {"x-queue-type": "quorum"} if quorum else None
        else:
            arguments = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": self.name}
        await self.channel.queue_declare(queue, durable=True, arguments=arguments)
        self._own_queues.add(queue)

    # -- one delivery --------------------------------------------------------------

    async def _process(self, delivery: Delivery) -> Result:
        """Run one task and settle it."""
        headers = delivery.properties.headers or {}
        attempt = int_header(headers, ATTEMPT_HEADER, 1) if headers else 1
        if self._revoked and revocations.revoked(self.name, delivery.properties.message_id):
            reason = CANCELLED_REASON
            return await self._dead_letter(delivery, reason, attempt, level=logging.INFO), None
        redeliveries = (
            0 if self._uncounted(delivery, headers) else await self._redeliveries(delivery, headers)
        )
        if redeliveries is None:
            return REQUEUED, None
        if redeliveries > self.retries.max_redeliveries:
            timeout = self._consumer_timeout
            reason = f"redelivered {redeliveries} times " + (
                f"(it runs longer than the broker's consumer_timeout, {timeout:g} s, which "
                "requeues it each time: set a time_limit below it or raise it)"
                if timeout is not None
                else "(it may crash its worker, or was requeued again and again)"
            )
            return await self._dead_letter(delivery, reason, attempt), None
        try:
            kwargs = self._decode(delivery)
        except SerializationError as exc:
            return await self._dead_letter(delivery, str(exc), attempt), exc
        problem = self.call.check(kwargs)
        if problem is not None:
            reason = f"{problem} for {self.call.func!r}"
            return await self._dead_letter(delivery, reason, attempt), None
        # What current_task() reports, built only if the function asks for it.
        token = _current.set((self.name, delivery, attempt, redeliveries))
        runner = asyncio.current_task()
        if runner is not None:
            self._tasks[delivery] = runner
        try:
            await self._run(delivery, kwargs, self.time_limit)
        except asyncio.CancelledError:
            if not self._cancelled_here(delivery):
                raise
            reason = CANCELLED_REASON
            return await self._dead_letter(delivery, reason, attempt, level=logging.INFO), None
        except MessageProcessingError as exc:
            if exc.requeue:
                settle(delivery, "nack", requeue=True, what=self._what(delivery))
                return REQUEUED, exc
            verb = "rejected" if isinstance(exc, RejectMessage) else "nacked"
            # The function's own decision: worth a note, not an error.
            reason = f"{verb} by the task function"
            return await self._dead_letter(delivery, reason, attempt, level=logging.INFO), exc
        except TimeLimitExceeded:
            error = TimeoutError(
                f"task {self.name!r} ran longer than its {self.time_limit} s limit"
            )
            return await self._failed(delivery, error, attempt, redeliveries), error
        except Exception as exc:
            return await self._failed(delivery, exc, attempt, redeliveries), exc
        finally:
            _current.reset(token)
            self._tasks.pop(delivery, None)
            if delivery in self._cancelling:  # it ended before the cancel reached it
                self._cancelled_here(delivery)
        settle(delivery, "ack", what=lambda: f"{self._what(delivery)} finished, but")
        return SUCCEEDED, None

    async def _failed(
        self, delivery: Delivery, error: BaseException, attempt: int, redeliveries: int
    ) -> Outcome:
        retry = self.retries.should_retry(attempt, error)
        if retry and self._undelayable is None:
            delay = self.retries.delay(attempt + 1)
            self._log(
                logging.WARNING,
                delivery,
                "failed with %s: %s; retrying in %.1f s",
                type(error).__name__,
                error,
                delay,
                attempt=attempt,
            )
            exchange, key = route(self.name, delay) if delay > 0 else ("", self.name)
            moved = await self._move(
                delivery,
                key,
                {ATTEMPT_HEADER: attempt + 1},
                exchange=exchange,
                fresh=True,
                declare=self.declare_ladder,
            )
            return RETRIED if moved else REQUEUED
        again = self.reject_on_redelivered and redeliveries > 0
        if self.requeue and not again:
            self._log(
                logging.WARNING,
                delivery,
                "failed with %s: %s; requeued (requeue=True)",
                type(error).__name__,
                error,
                attempt=attempt,
            )
            settle(delivery, "nack", requeue=True, what=self._what(delivery))
            return REQUEUED
        self._log(logging.ERROR, delivery, "failed", attempt=attempt, exc_info=error)
        if again:
            reason = f"failed again after {redeliveries} redelivery(s) (reject_on_redelivered)"
        else:
            reason = f"failed after {attempt} attempt{'s' if attempt > 1 else ''}"
            if retry:
                reason += f", not retried: {self._undelayable}"
        outcome = await self._dead_letter(delivery, reason, attempt, error)
        return FAILED if outcome == DEAD_LETTERED else outcome

    async def _dead_letter(
        self,
        delivery: Delivery,
        reason: str,
        attempt: int,
        error: BaseException | None = None,
        *,
        level: int = logging.ERROR,
    ) -> Outcome:
        if not self.dead_letter:
            self._log(level, delivery, "rejected without requeue: %s", reason, attempt=attempt)
            settle(delivery, "reject", what=self._what(delivery))
            return REJECTED
        exchange, routing_key = addressed(delivery, self.name)
        headers: dict[str, Any] = {
            REASON_HEADER: reason[:2000],  # reasons quote what they reject: keep the header bounded
            ATTEMPTS_HEADER: attempt,
            ORIGINAL_EXCHANGE_HEADER: exchange,
            ORIGINAL_ROUTING_KEY_HEADER: routing_key,
            DEAD_LETTERED_AT_HEADER: int(time.time()),
        }
        if error is not None:
            headers[EXCEPTION_TYPE_HEADER] = type(error).__name__
            headers[EXCEPTION_MESSAGE_HEADER] = str(error)[:2000]
            headers[TRACEBACK_HEADER] = "".join(traceback.format_exception(error))[-8000:]
        queue = dead_letter_queue(self.name)
        self._log(level, delivery, "goes to %s: %s", queue, reason, attempt=attempt)
        moved = await self._move(delivery, queue, headers, declare=lambda: self.declare(queue))
        return DEAD_LETTERED if moved else REQUEUED
