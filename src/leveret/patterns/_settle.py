"""Settling deliveries: ack, nack, reject, or move a copy elsewhere first.

Every path that settles a task or call goes through here, so "the channel closed
since the delivery arrived" is handled once: the broker has requeued it, which
is logged, never raised.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from ..amqp import Delivery, Properties, SettleKind
from ..exceptions import AMQPError, ConfigurationError, DeliveryError, MessageReturnedError
from ._retry import DEATH_HEADER_PREFIXES, DROPPED_HEADER, ORIGINAL_USER_ID_HEADER
from ._seam import PatternChannel

log = logging.getLogger("leveret.patterns")


def settle(
    delivery: Delivery,
    action: SettleKind,
    *,
    requeue: bool = False,
    what: str | Callable[[], str] = "",
) -> None:
    """``ack``, ``nack`` or ``reject`` a delivery unless it is settled already.

    If the channel closed since the delivery arrived the broker has requeued it;
    that is logged, not raised, naming the delivery as ``what`` (or what it returns:
    a hot path passes a function, so the words are only built for the log line).
    """
    if delivery.settled is not None:
        return
    try:
        if action == "ack":
            delivery.ack()
        elif action == "nack":
            delivery.nack(requeue)
        elif action == "reject":
            delivery.reject(requeue)
        else:
            raise ValueError(f"settle: {action!r} is not 'ack', 'nack' or 'reject'")
    except DeliveryError as exc:
        log.warning("%s: %s", (what() if callable(what) else what) or repr(delivery), exc)


async def move(
    channel: PatternChannel,
    delivery: Delivery,
    queue: str,
    headers: dict[str, Any],
    *,
    exchange: str = "",
    expiration: int | None = None,
    fresh: bool = False,
    declare: Callable[[], Awaitable[None]] | None = None,
    what: str,
) -> bool:
    """Publish a copy of ``delivery`` to ``queue`` (confirmed), then ack the original.

    ``queue`` is the routing key (on ``exchange``: by default the queue of that
    name). ``headers`` are added to the copy's; ``expiration`` (ms) replaces its
    own; ``fresh`` leaves out the broker's dead-letter history (``x-death`` and
    the like: a copy that is dead-lettered again must not look like a cycle).
    If the copy's properties cannot be sent (see :func:`_copies`), a leaner copy
    is sent that names what it left out. If the queue is missing, ``declare()``
    is called and the publish tried once more. If the copy cannot be published,
    the original is requeued instead: a delivery is never acked before its copy
    is safe. Returns whether it moved.
    """
    where = f"{exchange} ({queue})" if exchange else queue
    for attempt in (1, 2):
        try:
            if attempt == 2 and declare is not None:
                await declare()
            copies = _copies(delivery, headers, expiration, fresh)
            await _publish_first(channel, delivery.body, exchange, queue, copies)
            break
        except MessageReturnedError as exc:
            if attempt == 1 and declare is not None:
                continue  # the queue is not there yet (or was deleted): declare it
            error: Exception = exc
        except (AMQPError, ConfigurationError) as exc:
            error = exc
        log.warning("%s could not be moved to %s (%s); requeued", what, where, error)
        settle(delivery, "nack", requeue=True, what=what)
        return False
    settle(delivery, "ack", what=f"{what} moved to {where}, but")
    return True


async def _publish_first(
    channel: PatternChannel,
    body: bytes,
    exchange: str,
    routing_key: str,
    copies: Iterator[Properties],
) -> None:
    """Publish ``body`` with the first of ``copies`` that the channel can send.

    Raises:
        ConfigurationError: none of them can be sent.
        AMQPError: as ``channel.publish``.
    """
    for properties in copies:
        try:
            await channel.publish(
                body,
                exchange=exchange,
                routing_key=routing_key,
                mandatory=True,
                properties=properties,
            )
            return
        except ConfigurationError as exc:  # nothing was sent: try a leaner copy
            error = exc
    raise error


def _copies(
    delivery: Delivery, added: dict[str, Any], expiration: int | None, fresh: bool
) -> Iterator[Properties]:
    """The properties for a copy of ``delivery``: exact first, then leaner ones.

    What a delivery carries does not always go out again: a short string or a
    header name that was not UTF-8 was decoded with replacement characters and
    may now exceed 255 bytes, and the headers added here may take the content
    header past the frame size. Without a leaner copy such a task could never be
    moved, and would be requeued forever. So after the exact copy come one
    without the values that do not encode and one without any of the original
    headers; ``x-leveret-dropped`` names what they left out.
    """
    original = delivery.properties
    own = original.headers or {}
    if fresh:
        own = {
            key: value for key, value in own.items() if not key.startswith(DEATH_HEADER_PREFIXES)
        }
    if original.user_id is not None:
        # The broker checks user_id against who publishes, and the copy is ours: the
        # sender's id travels as a header instead.
        added = {ORIGINAL_USER_ID_HEADER: original.user_id, **added}
        original = original.replace(user_id=None)
    yield original.replace(headers={**own, **added}, expiration=expiration)
    dropped: list[str] = []
    kept: dict[str, Any] = {}
    for name, value in original.as_dict().items():
        if name in ("headers", "expiration"):
            continue
        if name == "cluster_id":  # deprecated by AMQP 0-9-1; Properties() does not take it
            dropped.append(name)
            continue
        try:
            Properties(**{name: value}).encode()
        except ConfigurationError:
            dropped.append(name)
        else:
            kept[name] = value
    kept_headers: dict[str, Any] = {}
    for key, value in own.items():
        try:
            Properties(headers={key: value}).encode()
        except ConfigurationError:
            dropped.append(f"header {key[:40]!r}")
        else:
            kept_headers[key] = value
    if dropped:
        yield Properties(
            **kept,
            headers={**kept_headers, **added, DROPPED_HEADER: ", ".join(dropped)},
            expiration=expiration,
        )
    if own:
        every = ", ".join([*dropped, "the original headers (too large to send again with ours)"])
        yield Properties(**kept, headers={**added, DROPPED_HEADER: every}, expiration=expiration)
