"""Hooks that see tasks and calls as they happen: the ground of metrics and tracing.

Register an :class:`Observer` with :func:`add_observer`. With none registered
(the default) the patterns skip all of this at the cost of one check per
message. Observers run on the event loop, inside the task that sends or handles
the message, so they can read and set context variables (a tracing observer
makes its span current there); they must be quick and must not raise.
"""

from __future__ import annotations

import logging
from typing import Any

from ..amqp import Delivery

log = logging.getLogger("leveret.patterns")

#: Outcomes passed to :meth:`Observer.on_finish`.
SUCCEEDED = "succeeded"  # the function returned (a call: the result was sent)
FAILED = "failed"  # it raised and will not run again (a call: the error was sent)
RETRIED = "retried"  # it raised and was scheduled to run again
DEAD_LETTERED = "dead_lettered"  # moved to the dead-letter queue without running to the end
REQUEUED = "requeued"  # back in the queue (requeue, redelivery count, shutdown)
SKIPPED = "skipped"  # a call whose caller had already given up
REJECTED = "rejected"  # dropped (no dead-letter queue, or a call with nowhere to reply)


class Observer:
    """Override what you need; every method does nothing by default.

    ``kind`` is ``"task"`` or ``"call"``; ``name`` the task or method name.
    """

    def on_send(self, kind: str, name: str, headers: dict[str, Any]) -> None:
        """A task or call is about to be published; ``headers`` may be extended."""

    def on_start(self, kind: str, name: str, delivery: Delivery) -> Any:
        """A task or call was received and is about to be handled; returns a token
        that :meth:`on_finish` gets back."""
        return None

    def on_finish(
        self, kind: str, name: str, token: Any, outcome: str, error: BaseException | None
    ) -> None:
        """Handling ended with ``outcome`` (one of the module's constants)."""

    def on_call(self, name: str, seconds: float, error: BaseException | None) -> None:
        """A call made by this process returned a result (``error`` is None) or raised."""


observers: list[Observer] = []


def add_observer(observer: Observer) -> None:
    """Start telling ``observer`` what happens to tasks and calls in this process."""
    if observer not in observers:
        observers.append(observer)


def remove_observer(observer: Observer) -> None:
    if observer in observers:
        observers.remove(observer)


def send_headers(kind: str, name: str, headers: dict[str, Any] | None) -> dict[str, Any] | None:
    """The headers to publish with, after the observers had their say."""
    if not observers:
        return headers
    extended = dict(headers or {})
    for observer in observers:
        try:
            observer.on_send(kind, name, extended)
        except Exception:
            log.exception("observer %r failed in on_send", observer)
    return extended or None


def start(kind: str, name: str, delivery: Delivery) -> list[Any]:
    tokens = []
    for observer in observers:
        try:
            tokens.append(observer.on_start(kind, name, delivery))
        except Exception:
            log.exception("observer %r failed in on_start", observer)
            tokens.append(None)
    return tokens


def finish(
    kind: str, name: str, tokens: list[Any], outcome: str, error: BaseException | None
) -> None:
    # Reversed: an observer that started last (and set a context) finishes first.
    for observer, token in reversed(list(zip(observers, tokens, strict=False))):
        try:
            observer.on_finish(kind, name, token, outcome, error)
        except Exception:
            log.exception("observer %r failed in on_finish", observer)


def called(name: str, seconds: float, error: BaseException | None) -> None:
    for observer in observers:
        try:
            observer.on_call(name, seconds, error)
        except Exception:
            log.exception("observer %r failed in on_call", observer)
