"""Delayed tasks, held by the broker in a ladder of fixed-TTL queues.

RabbitMQ expires messages only at the head of a queue, so one queue of
per-message TTLs makes a short delay wait behind a long one. Here every queue
holds all its messages for the same time, so its head is always the first to
expire, and a delay is spelled in binary across levels:

- level ``k`` (``MIN_LEVEL``..``MAX_LEVEL``) holds a message ``2**k`` ms: the
  task's durable queue ``<task>.delay.<k>`` with ``x-message-ttl`` ``2**k``,
  dead-lettering (routing key kept) to the exchange of level ``k - 1``, or for
  the lowest level to :data:`DELIVER_EXCHANGE`;
- a delay, rounded up to ``2**MIN_LEVEL`` ms (never early), is written as its
  binary digits, one routing-key word per level from the highest down, then
  the task's name: ``0.0.….1.0.1.images.resize``;
- each level's exchange ``leveret.delay.<k>`` (topic, shared by all tasks)
  routes a key whose digit for ``k`` is ``1`` to the task's level queue
  (bound for that task's keys only), and one whose digit is ``0`` on to the
  next level's exchange (an exchange-to-exchange binding);
- :data:`DELIVER_EXCHANGE` routes by the name at the end of the key to the
  task queue.

A message is published to the exchange of its highest ``1`` digit and walks
down one level per digit: at most ``MAX_LEVEL - MIN_LEVEL + 1`` hops, each a
plain dead-lettering. Every exchange of the ladder has the alternate exchange
:data:`UNDELIVERABLE` (a fanout to the durable queue of that name), so a copy
whose level queue or task queue was deleted meanwhile waits there to be looked
at instead of being dropped.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping
from typing import Any

from ..amqp import Delivery
from ..exceptions import ConfigurationError
from ._seam import PatternChannel

#: The lowest level: delays are rounded up to 2**MIN_LEVEL ms (16 ms).
MIN_LEVEL = 4
#: The highest level: it holds a message 2**MAX_LEVEL ms (about 199 days).
MAX_LEVEL = 34
#: The levels from the highest down, as their digits stand in a routing key.
LEVELS = tuple(range(MAX_LEVEL, MIN_LEVEL - 1, -1))
#: The longest delay, in seconds (every level once: about 397 days).
MAX_DELAY = (2 ** (MAX_LEVEL + 1) - 2**MIN_LEVEL) / 1000
#: Where the lowest level hands a message to its task queue.
DELIVER_EXCHANGE = "leveret.delay.deliver"
#: Alternate exchange of the ladder and the queue it fills: copies nothing takes.
UNDELIVERABLE = "leveret.delay.undeliverable"

_AE = {"alternate-exchange": UNDELIVERABLE}


def level_exchange(level: int) -> str:
    """The exchange of one level of the ladder (shared by all tasks)."""
    return f"leveret.delay.{level}"


def delay_queue(task: str, level: int) -> str:
    """The queue that holds ``task``'s copies ``2**level`` ms."""
    return f"{task}.delay.{level}"


def delay_queues(task: str) -> list[str]:
    """The queues that hold ``task``'s delayed copies, from the longest level down."""
    return [delay_queue(task, level) for level in LEVELS]


def delay_seconds(
    task: str, delay: float | datetime.timedelta | None, eta: datetime.datetime | None
) -> float | None:
    """The delay asked for by ``delay=`` (seconds or a timedelta) or ``eta=`` (an
    aware datetime), in seconds; ``None`` for an ordinary task (no delay, a delay of
    0, or an ``eta`` already past).

    Raises:
        ConfigurationError: both given, a naive ``eta``, a delay that is negative,
            not a number, or longer than :data:`MAX_DELAY`.
    """
    if delay is not None and eta is not None:
        raise ConfigurationError(
            f"create_task({task!r}): give delay= or eta=, not both (eta is when, delay how long)"
        )
    if eta is not None:
        if not isinstance(eta, datetime.datetime):
            raise ConfigurationError(f"create_task({task!r}): eta={eta!r} is not a datetime")
        if eta.tzinfo is None or eta.utcoffset() is None:
            raise ConfigurationError(
                f"create_task({task!r}): eta={eta!r} is naive; give it a timezone "
                "(datetime.now(timezone.utc) + ..., or datetime(..., tzinfo=...))"
            )
        seconds = (eta - datetime.datetime.now(datetime.UTC)).total_seconds()
        if seconds <= 0:
            return None  # due already: run it as soon as a worker can
        what = f"eta={eta.isoformat()}"
    elif delay is None:
        return None
    elif isinstance(delay, datetime.timedelta):
        seconds, what = delay.total_seconds(), f"delay={delay}"
    elif isinstance(delay, int | float) and not isinstance(delay, bool):
        seconds, what = float(delay), f"delay={delay!r}"
    else:
        raise ConfigurationError(
            f"create_task({task!r}): delay={delay!r} is not seconds or a timedelta"
        )
    if not seconds >= 0:  # NaN too
        raise ConfigurationError(f"create_task({task!r}): {what} is negative")
    if seconds > MAX_DELAY:
        raise ConfigurationError(
            f"create_task({task!r}): {what} is longer than the longest delay, "
            f"{MAX_DELAY:,.0f} s (about {MAX_DELAY / 86400:.0f} days)"
        )
    return seconds or None


def check_name(task: str) -> None:
    """Refuse a task name the ladder cannot address.

    Raises:
        ConfigurationError: a word of it (between dots) is ``*`` or ``#`` (a
            topic exchange's wildcards), or it is too long for its delay queues'
            names and routing keys (255 bytes each).
    """
    if any(word in ("*", "#") for word in task.split(".")):
        raise ConfigurationError(
            f"task {task!r} cannot be delayed: a word of its name is '*' or '#', "
            "which routing to its delay queues would take as a wildcard"
        )
    if len(task.encode()) > 255 - 2 * len(LEVELS):
        raise ConfigurationError(
            f"task {task!r} cannot be delayed: its name is longer than "
            f"{255 - 2 * len(LEVELS)} bytes, too long for the routing key of a delay"
        )


def route(task: str, seconds: float) -> tuple[str, str]:
    """The exchange and routing key that make ``task`` wait ``seconds`` (> 0, at
    most :data:`MAX_DELAY`) on the ladder, rounded up to ``2**MIN_LEVEL`` ms."""
    # round() first: 0.3 s is 300.00000000000006 ms as a float, one unit too many.
    units = max(1, math.ceil(round(seconds * 1000, 3) / 2**MIN_LEVEL))
    digits = format(units, f"0{len(LEVELS)}b")
    return level_exchange(MIN_LEVEL + units.bit_length() - 1), ".".join([*digits, task])


def addressed(delivery: Delivery, task: str) -> tuple[str, str]:
    """The exchange and routing key a task was sent to, before its delay (if it had one)."""
    if delivery.exchange == DELIVER_EXCHANGE:
        return "", task
    return delivery.exchange, delivery.routing_key


def _pattern(level: int, digit: str, task: str | None = None) -> str:
    """A binding key: any digits above ``level``, ``digit`` at it, then any digits
    below it and ``task`` (or, for no task, anything: ``#``)."""
    if task is None:
        return ".".join(["*"] * (MAX_LEVEL - level) + [digit, "#"])
    return ".".join(["*"] * (MAX_LEVEL - level) + [digit] + ["*"] * (level - MIN_LEVEL) + [task])


async def declare_shared(channel: PatternChannel) -> None:
    """Declare the exchanges of the ladder, their bindings to each other, and the
    queue of undeliverable copies (idempotent; shared by every task)."""
    await channel.exchange_declare(UNDELIVERABLE, "fanout", durable=True)
    await channel.queue_declare(UNDELIVERABLE, durable=True)
    await channel.queue_bind(UNDELIVERABLE, UNDELIVERABLE)
    await channel.exchange_declare(DELIVER_EXCHANGE, "topic", durable=True, arguments=_AE)
    below = DELIVER_EXCHANGE
    for level in reversed(LEVELS):
        await channel.exchange_declare(level_exchange(level), "topic", durable=True, arguments=_AE)
        await channel.exchange_bind(below, level_exchange(level), _pattern(level, "0"))
        below = level_exchange(level)


async def declare_ladder(channel: PatternChannel, task: str) -> list[str]:
    """Declare the ladder (see :func:`declare_shared`) and ``task``'s delay queues,
    bound for its keys only, and bind its task queue to the delivering exchange.
    Returns the delay queues' names.

    Raises:
        ConfigurationError: see :func:`check_name`.
        NotFoundError: the task queue does not exist (nothing was declared for the
            task; the channel is closed by the broker).
        BrokerError: the broker refused a declaration.
    """
    check_name(task)
    await declare_shared(channel)
    await channel.queue_bind(task, DELIVER_EXCHANGE, ".".join(["*"] * len(LEVELS) + [task]))
    for level in LEVELS:
        below = DELIVER_EXCHANGE if level == MIN_LEVEL else level_exchange(level - 1)
        arguments: Mapping[str, Any] = {
            "x-message-ttl": 2**level,
            "x-dead-letter-exchange": below,
        }
        queue = delay_queue(task, level)
        await channel.queue_declare(queue, durable=True, arguments=arguments)
        await channel.queue_bind(queue, level_exchange(level), _pattern(level, "1", task))
    return delay_queues(task)
