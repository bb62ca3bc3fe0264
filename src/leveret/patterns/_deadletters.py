"""Looking into dead-letter queues and sending their tasks back.

A task's dead letters are in ``<task>.dlq``. :func:`list_dead_letters` peeks at
them (they stay where they are, in order); :func:`replay_dead_letters` moves them
back to the task queue, each one confirmed before it leaves the dead-letter queue.
The ``leveret dlq`` command wraps both.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Collection, Mapping
from typing import Any

from ..amqp import Delivery, Properties
from ..exceptions import MessageReturnedError, UnroutableError
from ._retry import (
    ATTEMPTS_HEADER,
    DEAD_LETTER_HEADERS,
    DEAD_LETTERED_AT_HEADER,
    DEATH_HEADER_PREFIXES,
    DELIVERY_COUNT_HEADER,
    EXCEPTION_MESSAGE_HEADER,
    EXCEPTION_TYPE_HEADER,
    ORIGINAL_ROUTING_KEY_HEADER,
    REASON_HEADER,
    TRACEBACK_HEADER,
    dead_letter_queue,
)
from ._seam import GetChannel
from ._settle import settle


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """A task in a dead-letter queue, and why it is there.

    Tasks the broker dead-lettered itself (a quorum queue's delivery limit, an
    expired task) have no leveret headers; their reason comes from ``x-death``.
    """

    task: str
    body: bytes
    properties: Properties
    reason: str
    exception_type: str | None
    exception_message: str | None
    traceback: str | None
    attempts: int | None
    routing_key: str
    dead_lettered_at: datetime.datetime | None

    @property
    def message_id(self) -> str | None:
        return self.properties.message_id

    @classmethod
    def from_delivery(cls, task: str, delivery: Delivery) -> DeadLetter:
        headers: Mapping[str, Any] = delivery.properties.headers or {}
        deaths = headers.get("x-death")
        death = deaths[0] if isinstance(deaths, list) and deaths else {}
        reason = headers.get(REASON_HEADER) or (
            f"dead-lettered by the broker: {death.get('reason')}" if death else "unknown"
        )
        when = headers.get(DEAD_LETTERED_AT_HEADER)
        at = (
            datetime.datetime.fromtimestamp(when, datetime.UTC)
            if isinstance(when, int)
            else death.get("time")
        )
        return cls(
            task=task,
            body=delivery.body,
            properties=delivery.properties,
            reason=str(reason),
            exception_type=_text(headers.get(EXCEPTION_TYPE_HEADER)),
            exception_message=_text(headers.get(EXCEPTION_MESSAGE_HEADER)),
            traceback=_text(headers.get(TRACEBACK_HEADER)),
            attempts=headers.get(ATTEMPTS_HEADER),
            routing_key=_text(headers.get(ORIGINAL_ROUTING_KEY_HEADER)) or task,
            dead_lettered_at=at if isinstance(at, datetime.datetime) else None,
        )


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else repr(value)


async def list_dead_letters(
    channel: GetChannel, task: str, *, limit: int = 100
) -> list[DeadLetter]:
    """The oldest ``limit`` dead letters of ``task``; they stay in the queue, in order.

    Raises:
        NotFoundError: ``task`` has no dead-letter queue.
    """
    held: list[Delivery] = []
    try:
        while len(held) < limit:
            delivery = await channel.get(dead_letter_queue(task))
            if delivery is None:
                break
            held.append(delivery)
    finally:
        for delivery in held:
            settle(delivery, "nack", requeue=True, what=f"dead letter of {task!r}")
    return [DeadLetter.from_delivery(task, delivery) for delivery in held]


async def replay_dead_letters(
    channel: GetChannel,
    task: str,
    *,
    limit: int | None = None,
    message_ids: Collection[str] | None = None,
) -> int:
    """Send dead letters of ``task`` back to its queue, oldest first; returns how many.

    Each one is published again (with its dead-letter headers and attempt count
    removed, so it starts afresh), confirmed, and only then removed from the
    dead-letter queue. ``message_ids`` picks some; ``limit`` caps how many move.

    Raises:
        NotFoundError: ``task`` has no dead-letter queue.
        UnroutableError: nothing consumes ``task`` any more.
    """
    moved = 0
    skipped: list[Delivery] = []
    try:
        while limit is None or moved < limit:
            delivery = await channel.get(dead_letter_queue(task))
            if delivery is None:
                break
            if message_ids is not None and delivery.properties.message_id not in message_ids:
                skipped.append(delivery)
                continue
            letter = DeadLetter.from_delivery(task, delivery)
            try:
                await channel.publish(
                    delivery.body,
                    routing_key=letter.routing_key,
                    mandatory=True,
                    properties=delivery.properties.replace(headers=_fresh_headers(delivery)),
                )
            except MessageReturnedError as exc:
                skipped.append(delivery)
                raise UnroutableError(
                    f"no queue takes {letter.routing_key!r} any more: start a worker for "
                    f"{task!r} first ({moved} dead letters were moved before this one)",
                    exc.message,
                ) from exc
            delivery.ack()
            moved += 1
    finally:
        for delivery in skipped:
            settle(delivery, "nack", requeue=True, what=f"dead letter of {task!r}")
    return moved


def _fresh_headers(delivery: Delivery) -> dict[str, Any] | None:
    headers = {
        key: value
        for key, value in (delivery.properties.headers or {}).items()
        if key not in DEAD_LETTER_HEADERS
        # The broker's own bookkeeping: a replayed task starts afresh (a stale
        # x-delivery-count would also stop a classic-queue worker counting redeliveries).
        and key != DELIVERY_COUNT_HEADER
        and not key.startswith(DEATH_HEADER_PREFIXES)
    }
    return headers or None
