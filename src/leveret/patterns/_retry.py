"""Retries with backoff, redelivery limits, and what a task can know about itself.

A task that raises is retried by re-publishing a copy of it to the delay
ladder (see :mod:`._delay`), which hands it back to the task queue when its
delay has passed; the copy keeps leveret's headers (the attempt it will be)
but not the broker's dead-letter history. The original delivery is acked only
after the copy was confirmed, so a waiting retry never sits unacked in a worker
and never blocks other tasks.

A delivery the broker redelivers (its worker crashed, its connection dropped,
or it was requeued) counts as a redelivery; past ``max_redeliveries`` it goes to
the dead-letter queue, so a task that kills its worker cannot loop forever.
"""

from __future__ import annotations

import contextvars
import dataclasses
import random
from collections.abc import Mapping
from typing import Any

from ..amqp import Delivery
from ..exceptions import ConfigurationError, NoCurrentTaskError
from ._delay import MAX_DELAY

#: The attempt this delivery is (1 for the first run).
ATTEMPT_HEADER = "x-leveret-attempt"
#: How many times the broker redelivered this task so far.
REDELIVERIES_HEADER = "x-leveret-redeliveries"
#: Quorum queues count deliveries themselves (and dead-letter past x-delivery-limit).
DELIVERY_COUNT_HEADER = "x-delivery-count"

# Headers of a dead letter: why it is there and where it came from.
REASON_HEADER = "x-leveret-reason"
EXCEPTION_TYPE_HEADER = "x-leveret-exception-type"
EXCEPTION_MESSAGE_HEADER = "x-leveret-exception-message"
TRACEBACK_HEADER = "x-leveret-traceback"
ATTEMPTS_HEADER = "x-leveret-attempts"
ORIGINAL_EXCHANGE_HEADER = "x-leveret-original-exchange"
ORIGINAL_ROUTING_KEY_HEADER = "x-leveret-original-routing-key"
DEAD_LETTERED_AT_HEADER = "x-leveret-dead-lettered-at"
#: What a copy of a task had to leave out because it would not encode again.
DROPPED_HEADER = "x-leveret-dropped"
#: The user_id of the original message (the broker refuses a copy that keeps it).
ORIGINAL_USER_ID_HEADER = "x-leveret-original-user-id"
#: Set on a copy of a task parked while the same task still runs on its worker.
PARKED_HEADER = "x-leveret-parked"
#: The broker's dead-letter history (``x-death``, ``x-first-death-*``, ``x-last-death-*``).
DEATH_HEADER_PREFIXES = ("x-death", "x-first-death", "x-last-death")

DEAD_LETTER_HEADERS = (
    REASON_HEADER,
    EXCEPTION_TYPE_HEADER,
    EXCEPTION_MESSAGE_HEADER,
    TRACEBACK_HEADER,
    ATTEMPTS_HEADER,
    ORIGINAL_EXCHANGE_HEADER,
    ORIGINAL_ROUTING_KEY_HEADER,
    DEAD_LETTERED_AT_HEADER,
    DROPPED_HEADER,
    ATTEMPT_HEADER,
    REDELIVERIES_HEADER,
)


def dead_letter_queue(task: str) -> str:
    """Where a task's dead letters go."""
    return f"{task}.dlq"


def parked_queue(task: str) -> str:
    """Where a task waits, a moment at a time, while another copy of it still runs."""
    return f"{task}.parked"


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How a worker retries tasks that raise, and tolerates redeliveries.

    Attributes:
        max_attempts: runs of a task that keeps raising, the first included
            (1: no retry). After the last, the task is dead-lettered.
        backoff: the delay before the second attempt, in seconds.
        factor: each further delay is ``factor`` times the previous one.
        max_delay: the longest delay, in seconds (at most
            :data:`~leveret.patterns.MAX_DELAY`).
        jitter: a delay is shortened by a random fraction up to this (0..1), so
            retries of tasks that failed together do not come back together.
        max_redeliveries: redeliveries by the broker (worker crash, lost
            connection, requeue) tolerated before the task is dead-lettered.
        retry_on: exception types worth retrying; others go to the dead-letter
            queue at once.
    """

    max_attempts: int = 1
    backoff: float = 1.0
    factor: float = 2.0
    max_delay: float = 300.0
    jitter: float = 0.5
    max_redeliveries: int = 5
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError(f"max_attempts={self.max_attempts} must be at least 1")
        if self.backoff < 0 or self.max_delay < 0 or self.factor < 1:
            raise ConfigurationError("backoff and max_delay must be >= 0 and factor >= 1")
        if self.max_delay > MAX_DELAY:
            raise ConfigurationError(
                f"max_delay={self.max_delay} is longer than the longest delay, {MAX_DELAY:,.0f} s"
            )
        if not 0 <= self.jitter <= 1:
            raise ConfigurationError(f"jitter={self.jitter} is outside 0..1")
        if self.max_redeliveries < 0:
            raise ConfigurationError(f"max_redeliveries={self.max_redeliveries} is negative")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before running ``attempt`` (2 for the first retry)."""
        base = min(self.max_delay, self.backoff * self.factor ** max(0, attempt - 2))
        return base * (1 - self.jitter * random.random())

    def should_retry(self, attempt: int, error: BaseException) -> bool:
        """Whether a task whose ``attempt``-th run raised ``error`` runs again."""
        return attempt < self.max_attempts and isinstance(error, self.retry_on)


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """What a running task can learn about itself (see :func:`current_task`)."""

    name: str
    message_id: str | None
    attempt: int
    redeliveries: int
    headers: Mapping[str, Any]


#: (name, delivery, attempt, redeliveries) of the task being run in this context.
_current: contextvars.ContextVar[tuple[str, Delivery, int, int]] = contextvars.ContextVar(
    "leveret_task"
)


def current_task() -> TaskInfo:
    """The task being run by this worker (inside a task function only).

    Raises:
        NoCurrentTaskError: called outside a task function (a ``LookupError`` too).
    """
    try:
        name, delivery, attempt, redeliveries = _current.get()
    except LookupError:
        raise NoCurrentTaskError(
            "current_task() was called outside a task: it works only in a function a "
            "worker runs (and in what that function calls)"
        ) from None
    headers = delivery.properties.headers or {}
    return TaskInfo(name, delivery.properties.message_id, attempt, redeliveries, headers)


def int_header(headers: Mapping[str, Any] | None, name: str, default: int) -> int:
    """An integer header, or ``default`` if absent, not an integer, or below ``default``.

    The headers read this way are counts that start at ``default``; a smaller one
    was forged or garbled (an attempt 0 or -5 would buy a task retries its policy
    does not allow, a negative redelivery count would let it crash its worker
    more often).
    """
    value = headers.get(name) if headers else None
    if isinstance(value, int) and not isinstance(value, bool) and value >= default:
        return value
    return default
