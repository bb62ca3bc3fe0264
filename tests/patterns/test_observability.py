"""Structured logs, Prometheus metrics and OpenTelemetry traces of tasks and calls."""

import asyncio
import socket
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from leveret.amqp import Channel, Connection
from leveret.metrics import disable_metrics, enable_metrics
from leveret.patterns import (
    RPC,
    Kind,
    Master,
    Observer,
    Outcome,
    RetryPolicy,
    default_observers,
)
from leveret.tracing import disable_tracing, enable_tracing
from tests.patterns.conftest import Cleanup, dead_letters
from tests.support.waiting import wait_until


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


async def test_log_lines_name_the_task_its_message_and_attempt(
    channel: Channel, unique: str, cleanup: Cleanup, caplog: pytest.LogCaptureFixture
) -> None:
    async def explode(*, n: int) -> None:
        raise ValueError("nope")

    master = Master(channel)
    await master.create_worker(cleanup.queue(unique), explode)
    await master.create_task(unique, kwargs={"n": 1}, message_id="msg-1")
    await dead_letters(channel, unique, 1)
    records = [r for r in caplog.records if getattr(r, "task", None) == unique]
    assert records
    assert all((r.__dict__["message_id"], r.__dict__["attempt"]) == ("msg-1", 1) for r in records)
    assert f"task '{unique}' (message msg-1, attempt 1)" in records[0].getMessage()


async def test_metrics_count_tasks_and_calls_and_are_served_over_http(
    connection: Connection, unique: str, cleanup: Cleanup
) -> None:
    port = _free_port()
    observer = enable_metrics(port, addr="127.0.0.1", registry=CollectorRegistry())
    try:

        async def task(*, n: int) -> None:
            if n < 0:
                raise ValueError("negative")

        async def halve(*, x: int) -> float:
            return x / 2 if x else 1 / x

        master = Master(await connection.channel())
        policy = RetryPolicy(max_attempts=2, backoff=0.01)
        await master.create_worker(cleanup.queue(unique), task, retries=policy)
        rpc = await RPC.create(await connection.channel())
        await rpc.register(cleanup.queue(unique + ".halve"), halve)
        for n in (1, 2, 3, -1):
            await master.create_task(unique, kwargs={"n": n})
        assert await rpc.call(unique + ".halve", {"x": 4}) == 2
        with pytest.raises(ZeroDivisionError):
            await rpc.call(unique + ".halve", {"x": 0})
        await dead_letters(await connection.channel(), unique, 1)

        def scraped() -> dict[str, float]:
            return _scrape(port)

        label = f'{{task="{unique}"}}'
        await wait_until(
            lambda: (
                scraped().get(f"leveret_tasks_dead_lettered_total{label}") is None
                and scraped().get(f"leveret_tasks_failed_total{label}") == 1
            ),
            5,
            "the failed task to be counted",
        )
        values = await asyncio.to_thread(scraped)
        assert values[f"leveret_tasks_received_total{label}"] == 5  # 4 tasks + 1 retry
        assert values[f"leveret_tasks_succeeded_total{label}"] == 3
        assert values[f"leveret_tasks_retried_total{label}"] == 1
        assert values[f"leveret_tasks_in_flight{label}"] == 0
        assert values[f"leveret_task_duration_seconds_count{label}"] == 5
        method = f'{{method="{unique}.halve"}}'
        assert values[f"leveret_rpc_calls_total{method}"] == 2
        assert (
            values[f'leveret_rpc_errors_total{{error="ZeroDivisionError",method="{unique}.halve"}}']
            == 1
        )
        assert values[f'leveret_rpc_served_total{{method="{unique}.halve",outcome="failed"}}'] == 1
        await rpc.close()
    finally:
        disable_metrics(observer)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    observer = enable_tracing(provider)
    try:
        yield exporter
    finally:
        disable_tracing(observer)
        provider.shutdown()


async def test_a_task_span_is_the_child_of_the_span_that_sent_it(
    connection: Connection, unique: str, cleanup: Cleanup, spans: InMemorySpanExporter
) -> None:
    tracer = TracerProvider().get_tracer("test")  # a parent outside leveret's provider
    done = asyncio.Event()
    master = Master(await connection.channel())

    async def first(*, n: int) -> None:
        await master.create_task(unique + ".second", kwargs={"n": n})

    async def second(*, n: int) -> None:
        done.set()

    await master.create_worker(cleanup.queue(unique), first)
    await master.create_worker(cleanup.queue(unique + ".second"), second)
    rpc = await RPC.create(await connection.channel())
    await rpc.register(cleanup.queue(unique + ".echo"), lambda *, v: v)
    with tracer.start_as_current_span("request") as request:
        await master.create_task(unique, kwargs={"n": 1})
        assert await rpc.call(unique + ".echo", {"v": 3}) == 3
    await asyncio.wait_for(done.wait(), 5)
    await wait_until(lambda: len(spans.get_finished_spans()) == 3, 5, "three spans")
    by_name = {span.name: span for span in spans.get_finished_spans()}
    trace_id = request.get_span_context().trace_id
    task_span = by_name[f"task {unique}"]

    def parent_of(name: str) -> int:
        parent = by_name[name].parent
        assert parent is not None, f"span {name!r} has no parent"
        return parent.span_id

    assert task_span.context is not None
    assert parent_of(f"task {unique}") == request.get_span_context().span_id
    assert parent_of(f"call {unique}.echo") == request.get_span_context().span_id
    assert parent_of(f"task {unique}.second") == task_span.context.span_id
    assert {span.context.trace_id for span in by_name.values()} == {trace_id}
    await rpc.close()


def test_no_observer_is_registered_unless_one_is_enabled() -> None:
    assert not default_observers
    assert list(default_observers) == []


class Recorder(Observer):
    """Notes each task it starts and each send it sees."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def on_send(self, kind: Kind, name: str, headers: dict[str, Any]) -> None:
        self.events.append(("send", name))

    def on_finish(
        self, kind: Kind, name: str, token: Any, outcome: Outcome, error: BaseException | None
    ) -> None:
        self.events.append((outcome, name))


async def test_observers_given_to_a_master_see_its_tasks_and_no_others(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    recorder = Recorder()
    watched = Master(channel, observers=[recorder])
    unwatched = Master(channel)
    await watched.create_worker(cleanup.queue(unique + ".a"), lambda: None)
    worker = await unwatched.create_worker(cleanup.queue(unique + ".b"), lambda: None)
    await unwatched.create_task(unique + ".b")
    await watched.create_task(unique + ".a")
    await wait_until(lambda: ("succeeded", unique + ".a") in recorder.events, 5, "the task")
    await wait_until(lambda: worker.in_flight == 0, 5, "the other task")
    assert recorder.events == [("send", unique + ".a"), ("succeeded", unique + ".a")]
