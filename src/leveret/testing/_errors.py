"""Refusals of the in-memory broker, worded as RabbitMQ words them.

The broker raises :class:`Refusal`; the channel that made the request turns it
into the :class:`~leveret.exceptions.BrokerError` subclass of its reply code
(naming the AMQP method), closes itself (or its connection, for
connection-level codes) and raises it, as the real client does when RabbitMQ
closes a channel.
"""

from __future__ import annotations

from typing import Any

from ..exceptions import Scope

VHOST = "/"

#: Reply codes that close the whole connection, not just the channel (AMQP 0-9-1).
CONNECTION_CODES = frozenset({320, 402, 501, 502, 503, 504, 505, 530, 541})


class Refusal(Exception):
    """The broker says no: ``code`` and RabbitMQ's ``text`` for it."""

    def __init__(self, code: int, text: str, *, scope: Scope | None = None) -> None:
        # The reply text is an AMQP short string: RabbitMQ cuts a longer one to 252
        # bytes and marks the cut with "...".
        encoded = text.encode()
        if len(encoded) > 255:
            text = encoded[:252].decode(errors="ignore") + "..."
        super().__init__(code, text)
        self.code = code
        self.text = text
        #: What closes: by the code's AMQP class, unless RabbitMQ closes otherwise.
        self.scope: Scope = scope or ("connection" if code in CONNECTION_CODES else "channel")


def no_queue(name: str) -> Refusal:
    return Refusal(404, f"NOT_FOUND - no queue '{name}' in vhost '{VHOST}'")


def no_exchange(name: str) -> Refusal:
    return Refusal(404, f"NOT_FOUND - no exchange '{name}' in vhost '{VHOST}'")


def locked(name: str) -> Refusal:
    return Refusal(
        405,
        f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{name}' in vhost "
        f"'{VHOST}'. It could be originally declared on another connection or the exclusive "
        "property value does not match that of the original declaration.",
    )


def reserved(kind: str, name: str) -> Refusal:
    return Refusal(403, f"ACCESS_REFUSED - {kind} name '{name}' contains reserved prefix 'amq.*'")


def inequivalent(kind: str, name: str, arg: str, received: str, current: str) -> Refusal:
    return Refusal(
        406,
        f"PRECONDITION_FAILED - inequivalent arg '{arg}' for {kind} '{name}' in vhost "
        f"'{VHOST}': received {received} but current is {current}",
    )


def not_implemented(what: str) -> Refusal:
    """Something RabbitMQ does that the in-memory broker does not: refused, never ignored."""
    return Refusal(
        540,
        f"NOT_IMPLEMENTED - {what}: not supported by the in-memory broker; "
        "test this against RabbitMQ",
    )


def flag(value: bool) -> str:
    """How RabbitMQ quotes a boolean in an inequivalence message."""
    return "'true'" if value else "'false'"


def amqp_type(value: Any) -> str:
    """The AMQP field type RabbitMQ names for a value our client encodes."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "signedint" if -(2**31) <= value < 2**31 else "long"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "longstr"
    if isinstance(value, bytes):
        return "binary"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, list):
        return "array"
    return type(value).__name__


def type_class(value: Any) -> str:
    """Values of one class are equivalent when equal (RabbitMQ: every integer type alike)."""
    kind = amqp_type(value)
    return "int" if kind in ("signedint", "long") else kind


def describe_arg(value: Any, other_present: bool) -> str:
    """One side of an inequivalence message, as RabbitMQ words it."""
    if value is None:
        return "none"
    shown = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    if isinstance(shown, bool):
        shown = str(shown).lower()
    if other_present:
        return f"'{shown}'"
    return f"the value '{shown}' of type '{amqp_type(value)}'"
