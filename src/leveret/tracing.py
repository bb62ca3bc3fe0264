"""Tracing with OpenTelemetry (``pip install 'leveret[tracing]'``).

::

    from leveret.tracing import enable_tracing
    enable_tracing()   # uses the global tracer provider

The W3C ``traceparent`` (and ``tracestate``) of the current span travels in the
headers of every task and call; the worker or callee handles it in a span
(``task <name>`` / ``call <name>``) whose parent is the span that sent it, and
which is current while the function runs, so what it sends in turn joins the
same trace.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode, TracerProvider

from . import __version__
from .amqp import Delivery
from .patterns import Kind, Observer, Observers, Outcome, default_observers


class TracingObserver(Observer):
    """Carries trace context through message headers and spans each handling."""

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        self.tracer = trace.get_tracer("leveret", __version__, tracer_provider)

    def on_send(self, kind: Kind, name: str, headers: dict[str, Any]) -> None:
        propagate.inject(headers)

    def on_start(self, kind: Kind, name: str, delivery: Delivery) -> Any:
        parent = propagate.extract(delivery.properties.headers or {})
        span = self.tracer.start_span(
            f"{kind} {name}",
            context=parent,
            kind=SpanKind.CONSUMER if kind == "task" else SpanKind.SERVER,
            attributes={
                "messaging.system": "rabbitmq",
                "messaging.destination.name": name,
                "messaging.message.id": delivery.properties.message_id or "",
                "messaging.message.conversation_id": delivery.properties.correlation_id or "",
            },
        )
        return span, context.attach(trace.set_span_in_context(span))

    def on_finish(
        self, kind: Kind, name: str, token: Any, outcome: Outcome, error: BaseException | None
    ) -> None:
        span, attached = token
        span.set_attribute("leveret.outcome", outcome)
        if error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        context.detach(attached)
        span.end()


def enable_tracing(
    tracer_provider: TracerProvider | None = None, *, observers: Observers = default_observers
) -> TracingObserver:
    """Trace tasks and calls (see the module docstring): those of ``observers`` (one
    Master, RPC or App), by default every one of the process."""
    observer = TracingObserver(tracer_provider)
    observers.add(observer)
    return observer


def disable_tracing(observer: TracingObserver, *, observers: Observers = default_observers) -> None:
    observers.remove(observer)


__all__ = ["TracingObserver", "disable_tracing", "enable_tracing"]
