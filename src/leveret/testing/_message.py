"""Messages as the in-memory broker keeps them, and what it adds when it dead-letters one.

Properties are stored as their AMQP encoding and decoded afresh for every
delivery, exactly as the wire would hand them over: a header value that cannot
travel raises at publish time as on RabbitMQ, values come back with the wire's
types (tuples as lists, ``x-death`` times as ``datetime``), and a consumer that
mutates its delivery's headers cannot change the stored message.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping
from typing import Any

from ..amqp import Properties, decode_table, encode_table

#: Quorum queues count returns of a message and tell consumers in this header.
DELIVERY_COUNT_HEADER = "x-delivery-count"


def decode(encoded: bytes) -> Properties:
    """A fresh :class:`Properties` from its encoding."""
    return Properties.decode(encoded)


def normalize_table(table: Mapping[str, Any] | None) -> dict[str, Any]:
    """A field table as the broker would receive it (wire types, validated).

    Raises:
        ConfigurationError: a value has no AMQP type (as the real client raises).
    """
    if not table:
        return {}
    decoded, _ = decode_table(encode_table(table), 0)
    return decoded


@dataclasses.dataclass(slots=True, eq=False)
class StoredMessage:
    """One message in one queue (a message routed to two queues is two of these).

    ``seq`` is its position in the queue: a requeued message goes back to it,
    ahead of everything published after it, as in a RabbitMQ classic queue.
    """

    body: bytes
    encoded: bytes
    exchange: str
    routing_key: str
    seq: int
    expires_at: float | None
    redelivered: bool = False
    delivery_count: int = 0

    def delivery_properties(self, *, quorum: bool, always_count: bool = False) -> Properties:
        """The properties a consumer sees: quorum queues add ``x-delivery-count``
        to redeliveries (and, as RabbitMQ 3.10 does, to every ``basic.get``)."""
        props = decode(self.encoded)
        if quorum and (self.delivery_count or always_count):
            props.headers = {**(props.headers or {}), DELIVERY_COUNT_HEADER: self.delivery_count}
        return props


@dataclasses.dataclass(frozen=True)
class QueuedMessage:
    """A read-only snapshot of a message waiting in a queue (see :meth:`MemoryQueue.messages`)."""

    body: bytes
    properties: Properties
    exchange: str
    routing_key: str
    redelivered: bool


def dead_lettered_properties(
    message: StoredMessage, queue: str, reason: str, now: float
) -> tuple[Properties, list[dict[str, Any]]]:
    """The properties of ``message`` dead-lettered from ``queue`` at ``now`` (a
    ``time.time()``), and its death history.

    As RabbitMQ does: the ``x-death`` entry for (queue, reason) is counted up and
    moved to the front, or a new one is added there; ``x-first-death-*`` name the
    first death; the per-message ``expiration`` moves into the entry as
    ``original-expiration`` so the message cannot expire again where it goes.
    """
    props = decode(message.encoded)
    headers = dict(props.headers or {})
    deaths = [dict(death) for death in headers.get("x-death") or () if isinstance(death, dict)]
    when = datetime.datetime.fromtimestamp(int(now), datetime.UTC)
    for index, death in enumerate(deaths):
        if death.get("queue") == queue and death.get("reason") == reason:
            del deaths[index]
            count = death.get("count")
            death["count"] = (count if isinstance(count, int) else 0) + 1
            death["time"] = when
            deaths.insert(0, death)
            break
    else:
        entry: dict[str, Any] = {
            "count": 1,
            "reason": reason,
            "queue": queue,
            "time": when,
            "exchange": message.exchange,
            "routing-keys": [message.routing_key],
        }
        if props.expiration is not None:
            entry["original-expiration"] = props.expiration
        deaths.insert(0, entry)
    headers["x-death"] = deaths
    headers.setdefault("x-first-death-exchange", message.exchange)
    headers.setdefault("x-first-death-queue", queue)
    headers.setdefault("x-first-death-reason", reason)
    return props.replace(headers=headers, expiration=None), deaths


def is_dead_letter_cycle(target: str, deaths: list[dict[str, Any]], reason: str) -> bool:
    """Whether dead-lettering to ``target`` closes a cycle RabbitMQ would break.

    A message that comes back to a queue it died in, with no rejection anywhere
    on the way, is dropped (otherwise two queues with TTLs dead-lettering to each
    other would pass it around forever). Rejections never count as a cycle.
    """
    if reason == "rejected":
        return False
    for death in deaths:
        if death.get("reason") == "rejected":
            return False
        if death.get("queue") == target:
            return True
    return False
