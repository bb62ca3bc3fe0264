"""Cancelling tasks: revocations on the wire, and the revoked ids a worker checks.

A revocation names a task and a message id. It is published twice (see
:func:`publish_revocation`): persistent, to the durable queue
``leveret.revoked.<task>`` (at most :data:`REVOKED_MAX_LENGTH` of them, each
kept :data:`REVOKED_TTL` seconds: the oldest go first; the queue itself goes
after as long unused), which a worker process reads when it starts without
consuming it; and transient, to the control
exchange ``leveret.control`` with the routing key ``cancel.<task>``, so that
running workers learn it at once. A worker settles a revoked task as cancelled
when it reaches it: to its dead-letter queue with the reason
:data:`CANCELLED_REASON`, never retried.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from typing import Any

from ..amqp import Delivery
from ._seam import GetChannel, PatternChannel
from ._settle import settle

#: The topic exchange of the fleet's control traffic (heartbeats, inspect, cancel).
CONTROL_EXCHANGE = "leveret.control"
#: The dead-letter reason of a cancelled task.
CANCELLED_REASON = "cancelled"
#: Revocations kept per task (the broker drops the oldest past it) ...
REVOKED_MAX_LENGTH = 10_000
#: ... and for how long, in seconds.
REVOKED_TTL = 24 * 3600.0


def revoked_queue(task: str) -> str:
    """The durable queue that keeps ``task``'s revocations."""
    return f"leveret.revoked.{task}"


def cancel_routing_key(task: str) -> str:
    """The routing key of a revocation's live broadcast on :data:`CONTROL_EXCHANGE`."""
    return f"cancel.{task}"


class Revocations:
    """The message ids revoked per task in this process, bounded in number and age
    as the broker bounds them.

    ``of(task)`` is the live mapping a worker of ``task`` looks into (false while
    empty, so a worker with nothing revoked pays one truth test per task).
    """

    def __init__(self) -> None:
        self._tasks: dict[str, OrderedDict[str, float]] = {}

    def of(self, task: str) -> OrderedDict[str, float]:
        """Revoked message id -> when it was revoked (epoch seconds), for ``task``."""
        return self._tasks.setdefault(task, OrderedDict())

    def add(self, task: str, message_id: str, at: float | None = None) -> None:
        revoked = self.of(task)
        revoked[message_id] = time.time() if at is None else at
        revoked.move_to_end(message_id)
        while len(revoked) > REVOKED_MAX_LENGTH:
            revoked.popitem(last=False)

    def revoked(self, task: str, message_id: str | None) -> bool:
        """Whether ``message_id`` of ``task`` was revoked less than :data:`REVOKED_TTL` ago."""
        revoked = self._tasks.get(task)
        if not revoked or message_id is None:
            return False
        at = revoked.get(message_id)
        if at is None:
            return False
        if time.time() - at > REVOKED_TTL:
            del revoked[message_id]
            return False
        return True

    def clear(self) -> None:
        self._tasks.clear()


#: The revocations of this process, which every worker checks.
revocations = Revocations()


def revocation_body(task: str, message_id: str) -> bytes:
    return json.dumps({"task": task, "message_id": message_id, "at": time.time()}).encode()


def parse_revocation(body: bytes) -> tuple[str, str, float] | None:
    """(task, message id, when) from a revocation's body; ``None`` if it is not one."""
    try:
        data: Any = json.loads(body)
        task, message_id, at = data["task"], data["message_id"], float(data["at"])
    except (ValueError, TypeError, KeyError):
        return None
    if not isinstance(task, str) or not isinstance(message_id, str):
        return None
    return task, message_id, at


async def declare_revoked(channel: PatternChannel, task: str) -> str:
    """Declare ``task``'s revocation queue (durable, bounded) and the control exchange."""
    queue = revoked_queue(task)
    await channel.queue_declare(
        queue,
        durable=True,
        arguments={
            "x-max-length": REVOKED_MAX_LENGTH,
            "x-message-ttl": int(REVOKED_TTL * 1000),
            # Unused for as long (no revocation, no worker started): it goes too.
            "x-expires": int(REVOKED_TTL * 1000),
        },
    )
    await channel.exchange_declare(CONTROL_EXCHANGE, "topic", durable=True)
    return queue


async def publish_revocation(channel: PatternChannel, task: str, message_id: str) -> None:
    """Revoke ``message_id`` of ``task``: kept in its revocation queue (confirmed, if
    the channel confirms), then broadcast to running workers; and applied in this
    process at once.

    Raises:
        PublishError, ChannelClosedError: the broker did not take it.
    """
    queue = await declare_revoked(channel, task)
    body = revocation_body(task, message_id)
    await channel.publish(body, routing_key=queue, delivery_mode=2, content_type="application/json")
    await channel.publish(
        body,
        exchange=CONTROL_EXCHANGE,
        routing_key=cancel_routing_key(task),
        delivery_mode=1,
        content_type="application/json",
    )
    revocations.add(task, message_id)


async def load_revocations(channel: GetChannel, task: str) -> int:
    """Read ``task``'s revocation queue into :data:`revocations` without consuming it:
    each message is fetched, then all are requeued (in their order). How many.

    The queue is declared if it is not there (it goes a day after its last use).
    """
    queue = await declare_revoked(channel, task)
    fetched: list[Delivery] = []
    try:
        while (delivery := await channel.get(queue)) is not None:
            fetched.append(delivery)
            parsed = parse_revocation(delivery.body)
            if parsed is not None and parsed[0] == task:
                revocations.add(*parsed)
    finally:
        for delivery in fetched:
            settle(delivery, "nack", requeue=True, what=f"revocation of {task!r}")
    return len(fetched)
