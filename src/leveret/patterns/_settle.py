"""Settling deliveries: ack, nack, reject, or move a copy elsewhere first.

Every path that settles a task or call goes through here, so "the channel closed
since the delivery arrived" is handled once: the broker has requeued it, which
is logged, never raised.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..amqp import Delivery
from ..exceptions import AMQPError, DeliveryError, MessageReturnedError
from ._base import PatternChannel

log = logging.getLogger("leveret.patterns")


def settle(delivery: Delivery, action: str, *, requeue: bool = False, what: str = "") -> None:
    """``ack``, ``nack`` or ``reject`` a delivery unless it is settled already.

    If the channel closed since the delivery arrived the broker has requeued it;
    that is logged, not raised.
    """
    if delivery.settled is not None:
        return
    try:
        if action == "ack":
            delivery.ack()
        elif action == "nack":
            delivery.nack(requeue)
        else:
            delivery.reject(requeue)
    except DeliveryError as exc:
        log.warning("%s: %s", what or repr(delivery), exc)


async def move(
    channel: PatternChannel,
    delivery: Delivery,
    queue: str,
    headers: dict[str, Any],
    *,
    expiration: int | None = None,
    declare: Callable[[], Awaitable[None]] | None = None,
    what: str,
) -> bool:
    """Publish a copy of ``delivery`` to ``queue`` (confirmed), then ack the original.

    ``headers`` are added to the copy's; ``expiration`` (ms) replaces its own.
    If the queue is missing, ``declare()`` is called and the publish tried once
    more. If the copy cannot be published, the original is requeued instead: a
    delivery is never acked before its copy is safe. Returns whether it moved.
    """
    properties = delivery.properties.replace(
        headers={**(delivery.properties.headers or {}), **headers},
        expiration=expiration,
    )
    for attempt in (1, 2):
        try:
            if attempt == 2 and declare is not None:
                await declare()
            await channel.publish(
                delivery.body, routing_key=queue, mandatory=True, properties=properties
            )
            break
        except MessageReturnedError as exc:
            if attempt == 1 and declare is not None:
                continue  # the queue is not there yet (or was deleted): declare it
            error: AMQPError = exc
        except AMQPError as exc:
            error = exc
        log.warning("%s could not be moved to %s (%s); requeued", what, queue, error)
        settle(delivery, "nack", requeue=True, what=what)
        return False
    settle(delivery, "ack", what=f"{what} moved to {queue}, but")
    return True
