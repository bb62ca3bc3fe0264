"""Queue arguments checked as RabbitMQ 3.10 checks them, with its reply texts.

First whether the queue's type takes the argument at all (``x-max-priority``
on a quorum queue is refused), then its value. Arguments RabbitMQ does not know
(``x-custom``) are accepted and kept, as RabbitMQ keeps them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ._errors import VHOST, Refusal, amqp_type

_COMMON = frozenset(
    {
        "x-expires",
        "x-message-ttl",
        "x-dead-letter-exchange",
        "x-dead-letter-routing-key",
        "x-max-length",
        "x-max-length-bytes",
        "x-overflow",
        "x-single-active-consumer",
        "x-queue-type",
    }
)
#: What each queue type takes (RabbitMQ 3.10's queue type capabilities).
CAPABILITIES = {
    "classic": _COMMON
    | {"x-max-priority", "x-queue-mode", "x-queue-master-locator", "x-queue-version"},
    "quorum": _COMMON
    | {
        "x-dead-letter-strategy",
        "x-max-in-memory-length",
        "x-max-in-memory-bytes",
        "x-quorum-initial-group-size",
        "x-delivery-limit",
        "x-queue-leader-locator",
    },
}
_STREAM = {"x-max-age", "x-stream-max-segment-size-bytes", "x-initial-cluster-size"}
_KNOWN = frozenset().union(*CAPABILITIES.values(), _STREAM)
_TYPE_MODULES = {"classic": "rabbit_classic_queue", "quorum": "rabbit_quorum_queue"}

#: The longest queue or per-message TTL RabbitMQ accepts: ten years, in ms.
MAX_TTL = 315_360_000_000


def check_queue_arguments(name: str, queue_type: str, arguments: Mapping[str, Any]) -> None:
    """Refuse what RabbitMQ refuses in a new queue's arguments.

    Raises:
        Refusal: 406, worded as RabbitMQ words it.
    """
    allowed = CAPABILITIES[queue_type]
    for arg in arguments:
        if arg in _KNOWN and arg not in allowed:
            raise Refusal(
                406,
                f"PRECONDITION_FAILED - invalid arg '{arg}' for queue '{name}' in vhost "
                f"'{VHOST}' of queue type {_TYPE_MODULES[queue_type]}",
            )
    for arg, check in _CHECKS.items():
        if arg in arguments:
            problem = check(arguments[arg], arguments)
            if problem is not None:
                raise Refusal(
                    406,
                    f"PRECONDITION_FAILED - invalid arg '{arg}' for queue '{name}' in vhost "
                    f"'{VHOST}': {problem}",
                )
    for arg in ("x-dead-letter-exchange", "x-dead-letter-routing-key"):
        value = arguments.get(arg)
        if value is not None and not isinstance(value, str):
            raise Refusal(
                406,
                f"PRECONDITION_FAILED - invalid type '{amqp_type(value)}' for arg '{arg}' in "
                f"queue '{name}' in vhost '{VHOST}'",
            )


def _integer(value: Any) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return None
    return f'"expected integer, got {amqp_type(value)}"'


def _non_negative(value: Any, _: Mapping[str, Any]) -> str | None:
    problem = _integer(value)
    if problem is None and value < 0:
        return f"{{value_negative,{value}}}"
    return problem


def _positive(value: Any, arguments: Mapping[str, Any]) -> str | None:
    problem = _non_negative(value, arguments)
    if problem is None and value == 0:
        return "{value_zero,0}"
    return problem


def _ttl(value: Any, arguments: Mapping[str, Any]) -> str | None:
    problem = _non_negative(value, arguments)
    if problem is None and value > MAX_TTL:
        return f"{{value_too_large,{value}}}"
    return problem


def _priority(value: Any, arguments: Mapping[str, Any]) -> str | None:
    problem = _non_negative(value, arguments)
    if problem is None and value > 255:
        return f"{{max_value_exceeded,{value}}}"
    return problem


def _one_of(*choices: str, wrong: Callable[[str], str]) -> Callable[[Any, Any], str | None]:
    def check(value: Any, _: Mapping[str, Any]) -> str | None:
        if not isinstance(value, str):
            return f"{{unacceptable_type,{amqp_type(value)}}}"
        return None if value in choices else wrong(value)

    return check


def _boolean(value: Any, _: Mapping[str, Any]) -> str | None:
    return None if isinstance(value, bool) else f"{{unacceptable_type,{amqp_type(value)}}}"


def _routing_key(value: Any, arguments: Mapping[str, Any]) -> str | None:
    if "x-dead-letter-exchange" not in arguments:
        return "routing_key_but_no_dlx_defined"
    return None


_CHECKS: dict[str, Callable[[Any, Mapping[str, Any]], str | None]] = {
    "x-expires": _positive,
    "x-message-ttl": _ttl,
    "x-dead-letter-routing-key": _routing_key,
    "x-max-length": _non_negative,
    "x-max-length-bytes": _non_negative,
    "x-max-priority": _priority,
    "x-overflow": _one_of(
        "drop-head", "reject-publish", "reject-publish-dlx", wrong=lambda _: "invalid_overflow"
    ),
    "x-queue-mode": _one_of(
        "default", "lazy", wrong=lambda mode: f"\"unsupported queue mode '{mode}'\""
    ),
    "x-dead-letter-strategy": _one_of(
        "at-most-once", "at-least-once", wrong=lambda _: "invalid_dlx_strategy"
    ),
    "x-single-active-consumer": _boolean,
}


def check_classic_settings(name: str, arguments: Mapping[str, Any]) -> None:
    """``x-queue-version`` is 1 or 2; an unknown ``x-queue-master-locator`` fails
    inside RabbitMQ 3.10, which closes the connection (541).

    Raises:
        Refusal: 406 (the version), 541 (the locator).
    """
    locator = arguments.get("x-queue-master-locator")
    if locator is not None and locator not in ("min-masters", "client-local", "random"):
        raise Refusal(541, "INTERNAL_ERROR")
    version = arguments.get("x-queue-version")
    if version is not None and version not in (1, 2):
        raise Refusal(
            406,
            f"PRECONDITION_FAILED - invalid arg 'x-queue-version' for queue '{name}' in vhost "
            f"'{VHOST}': \"unsupported queue version '{version}'\"",
        )
