"""Observers: what sees tasks and calls as they happen, the ground of metrics and tracing.

An :class:`Observer` is registered with a :class:`Master`, an :class:`RPC` or an
``App`` (``observers=[...]``), or process-wide with :func:`add_observer` (the
default every Master and RPC uses when given none). With none registered the
patterns pay one truth test per message. Observers run on the event loop,
inside the task that sends or handles the message, so they can read and set
context variables (a tracing observer makes its span current there); they must
be quick. One that raises is logged and skipped; the message goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any, Literal

from ..amqp import Delivery

log = logging.getLogger("leveret.patterns")

#: What a task or call is on the wire.
Kind = Literal["task", "call"]

#: How handling a task or call ended (passed to :meth:`Observer.on_finish`):
#: ``succeeded`` the function returned (a call: the result was sent); ``failed`` it
#: raised and will not run again (a call: the error was sent); ``retried`` it raised
#: and was scheduled to run again; ``dead_lettered`` moved to the dead-letter queue
#: without running to the end; ``requeued`` back in the queue (requeue, redelivery
#: count, shutdown); ``skipped`` a call whose caller had already given up;
#: ``rejected`` dropped (no dead-letter queue, or a call with nowhere to reply).
Outcome = Literal[
    "succeeded", "failed", "retried", "dead_lettered", "requeued", "skipped", "rejected"
]
SUCCEEDED: Outcome = "succeeded"
FAILED: Outcome = "failed"
RETRIED: Outcome = "retried"
DEAD_LETTERED: Outcome = "dead_lettered"
REQUEUED: Outcome = "requeued"
SKIPPED: Outcome = "skipped"
REJECTED: Outcome = "rejected"
#: Every outcome, in the order above.
OUTCOMES: tuple[Outcome, ...] = (
    SUCCEEDED,
    FAILED,
    RETRIED,
    DEAD_LETTERED,
    REQUEUED,
    SKIPPED,
    REJECTED,
)


class Observer:
    """Override what you need; every method does nothing by default.

    ``kind`` is ``"task"`` or ``"call"``; ``name`` the task or method name.
    """

    def on_send(self, kind: Kind, name: str, headers: dict[str, Any]) -> None:
        """A task or call is about to be published; ``headers`` may be extended."""

    def on_start(self, kind: Kind, name: str, delivery: Delivery) -> Any:
        """A task or call was received and is about to be handled; returns a token
        that :meth:`on_finish` gets back."""
        return None

    def on_finish(
        self, kind: Kind, name: str, token: Any, outcome: Outcome, error: BaseException | None
    ) -> None:
        """Handling ended with ``outcome``; ``error`` is what the function raised, if any."""

    def on_call(self, name: str, seconds: float, error: BaseException | None) -> None:
        """A call made by this process returned a result (``error`` is None) or raised."""


class Observers:
    """The observers of a Master, an RPC or the whole process, in order.

    False while empty, so a hot path asks ``if observers:`` and nothing more.
    """

    __slots__ = ("_items",)

    def __init__(self, observers: Iterable[Observer] = ()) -> None:
        self._items: list[Observer] = []
        for observer in observers:
            self.add(observer)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __iter__(self) -> Iterator[Observer]:
        return iter(self._items)

    def __repr__(self) -> str:
        return f"<Observers {self._items!r}>"

    @classmethod
    def of(cls, given: Observers | Iterable[Observer] | None) -> Observers:
        """What a Master, RPC or App observes with: ``None`` is the process-wide
        :data:`default_observers`, an :class:`Observers` itself, anything else a new one."""
        if given is None:
            return default_observers
        return given if isinstance(given, Observers) else cls(given)

    def add(self, observer: Observer) -> None:
        """Start telling ``observer`` what happens (once, however often it is added)."""
        if observer not in self._items:
            self._items.append(observer)

    def remove(self, observer: Observer) -> None:
        if observer in self._items:
            self._items.remove(observer)

    def send_headers(
        self, kind: Kind, name: str, headers: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        """The headers to publish with, after the observers had their say."""
        extended = dict(headers or {})
        for observer in self._items:
            try:
                observer.on_send(kind, name, extended)
            except Exception:
                log.exception("observer %r failed in on_send", observer)
        return extended or None

    def start(self, kind: Kind, name: str, delivery: Delivery) -> list[tuple[Observer, Any]]:
        """Tell each observer handling starts; what :meth:`finish` needs back."""
        started = []
        for observer in self._items:
            try:
                started.append((observer, observer.on_start(kind, name, delivery)))
            except Exception:
                log.exception("observer %r failed in on_start", observer)
                started.append((observer, None))
        return started

    @staticmethod
    def finish(
        started: list[tuple[Observer, Any]],
        kind: Kind,
        name: str,
        outcome: Outcome,
        error: BaseException | None,
    ) -> None:
        # Reversed: an observer that started last (and set a context) finishes first.
        for observer, token in reversed(started):
            try:
                observer.on_finish(kind, name, token, outcome, error)
            except Exception:
                log.exception("observer %r failed in on_finish", observer)

    def called(self, name: str, seconds: float, error: BaseException | None) -> None:
        for observer in self._items:
            try:
                observer.on_call(name, seconds, error)
            except Exception:
                log.exception("observer %r failed in on_call", observer)


#: The process-wide observers: those of every Master and RPC made without ``observers=``.
default_observers = Observers()


def add_observer(observer: Observer) -> None:
    """Tell ``observer`` about every task and call of this process (see :class:`Observers`)."""
    default_observers.add(observer)


def remove_observer(observer: Observer) -> None:
    default_observers.remove(observer)
