"""Prometheus metrics for tasks and calls (``pip install 'leveret[metrics]'``).

::

    from leveret.metrics import enable_metrics
    enable_metrics(port=9100)   # or: leveret run myapp:app --metrics-port 9100

Exposed (all prefixed ``leveret_``):

- ``tasks_received_total{task}``, ``tasks_succeeded_total{task}``,
  ``tasks_failed_total{task}``, ``tasks_retried_total{task}``,
  ``tasks_dead_lettered_total{task}``, ``tasks_in_flight{task}``,
  ``task_duration_seconds{task}`` (a histogram of handling time);
- callee side: ``rpc_served_total{method,outcome}``, ``rpc_handling_seconds{method}``;
- caller side: ``rpc_calls_total{method}``, ``rpc_errors_total{method,error}``,
  ``rpc_call_seconds{method}`` (round trip); ``error`` is the remote type name for
  exceptions raised by the callee (``ValueError``), the local one otherwise
  (``TimeoutError``, ``UnroutableError``).
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import start_http_server as _start_http_server

from .amqp import Delivery
from .exceptions import RemoteError
from .patterns import Kind, Observer, Observers, Outcome, default_observers

#: The task outcomes counted, each into ``tasks_<outcome>_total``.
_TASK_OUTCOMES: tuple[Outcome, ...] = ("succeeded", "failed", "retried", "dead_lettered")


class PrometheusObserver(Observer):
    """Counts tasks and calls into a Prometheus registry."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.server: Any = None  # the HTTP server, when enable_metrics() started one

        def counter(name: str, text: str, labels: list[str]) -> Counter:
            return Counter(name, text, labels, namespace="leveret", registry=registry)

        self.received = counter("tasks_received", "Tasks received by workers.", ["task"])
        self.outcomes: dict[str, Counter] = {
            outcome: counter(f"tasks_{outcome}", f"Tasks {outcome.replace('_', ' ')}.", ["task"])
            for outcome in _TASK_OUTCOMES
        }
        self.in_flight = Gauge(
            "tasks_in_flight",
            "Tasks being handled now.",
            ["task"],
            namespace="leveret",
            registry=registry,
        )
        self.task_seconds = Histogram(
            "task_duration_seconds",
            "Time to handle a task.",
            ["task"],
            namespace="leveret",
            registry=registry,
        )
        self.served = counter("rpc_served", "Calls served, by outcome.", ["method", "outcome"])
        self.handling_seconds = Histogram(
            "rpc_handling_seconds",
            "Time to serve a call.",
            ["method"],
            namespace="leveret",
            registry=registry,
        )
        self.calls = counter("rpc_calls", "Calls made by this process.", ["method"])
        self.errors = counter(
            "rpc_errors", "Calls that raised, by error type.", ["method", "error"]
        )
        self.call_seconds = Histogram(
            "rpc_call_seconds",
            "Round trip of calls made.",
            ["method"],
            namespace="leveret",
            registry=registry,
        )

    def on_start(self, kind: Kind, name: str, delivery: Delivery) -> Any:
        if kind == "task":
            self.received.labels(name).inc()
            self.in_flight.labels(name).inc()
        return time.perf_counter()

    def on_finish(
        self, kind: Kind, name: str, token: Any, outcome: Outcome, error: BaseException | None
    ) -> None:
        seconds = time.perf_counter() - token
        if kind == "task":
            self.in_flight.labels(name).dec()
            self.task_seconds.labels(name).observe(seconds)
            counter = self.outcomes.get(outcome)
            if counter is not None:
                counter.labels(name).inc()
        else:
            self.served.labels(name, outcome).inc()
            self.handling_seconds.labels(name).observe(seconds)

    def on_call(self, name: str, seconds: float, error: BaseException | None) -> None:
        self.calls.labels(name).inc()
        self.call_seconds.labels(name).observe(seconds)
        if error is not None:
            kind = error.remote_type if isinstance(error, RemoteError) else type(error).__name__
            self.errors.labels(name, kind).inc()


def enable_metrics(
    port: int | None = None,
    *,
    addr: str = "0.0.0.0",
    registry: CollectorRegistry = REGISTRY,
    observers: Observers = default_observers,
) -> PrometheusObserver:
    """Count tasks and calls; with ``port``, serve them over HTTP.

    ``observers`` are those of one Master, RPC or App; by default the
    process-wide ones, so every task and call of the process is counted.
    """
    observer = PrometheusObserver(registry)
    observers.add(observer)
    if port is not None:
        observer.server, _ = _start_http_server(port, addr=addr, registry=registry)
    return observer


def disable_metrics(
    observer: PrometheusObserver, *, observers: Observers = default_observers
) -> None:
    """Stop counting and stop serving (the metrics stay registered)."""
    observers.remove(observer)
    if observer.server is not None:
        observer.server.shutdown()
        observer.server.server_close()
        observer.server = None


__all__ = ["PrometheusObserver", "disable_metrics", "enable_metrics"]
