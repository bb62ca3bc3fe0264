"""The roles a spawned child plays, each in a process of its own with its own
connection: the raw AMQP publisher and consumer, and the patterns' worker,
producer, callee and caller (the producer and caller drive every library, the
peers' included, through :class:`bench._clients.TaskDriver`).

Each role times its measured part with :func:`measured` (``clock`` and its own CPU
time) and returns a dict the main process puts together.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import multiprocessing
import time
from collections.abc import Awaitable, Iterator
from multiprocessing.synchronize import Barrier, Event
from typing import Any

from bench._clients import AmqpClient, open_amqp_client, open_driver, open_patterns_client
from bench._measure import Phase, clock, latency_summary, memory_status, phase_numbers, run_lanes
from bench._profiling import reported_profile


@dataclasses.dataclass(frozen=True)
class Case:
    """One run: a scenario, a library and a variant of its options."""

    scenario: str
    library: str
    variant: str
    n: int
    warmup: int
    lanes: int  # producer lanes, or calls in flight (1: sequential)
    durable: bool = False
    prefetch: int | None = None  # None: the library's default
    confirms: bool = True
    checkpoints: tuple[int, ...] = ()  # memory: read RSS after this many tasks
    profile: bool = False
    #: leveret with the speed extra (uvloop, JSON on orjson) or without; None: as installed
    speed: bool | None = None

    @property
    def is_master(self) -> bool:
        return self.scenario in ("master", "memory", "tasks")

    @property
    def key(self) -> str:
        return f"{self.scenario}/{self.library}/{self.variant}"


def run_timeout(case: Case) -> float:
    """A bound so a lost message cannot hang the benchmark (not a time assertion)."""
    return max(180.0, (case.n + case.warmup) / 100)


@dataclasses.dataclass
class Sync:
    """What the main process and its children meet on.

    ``ready``: everyone is connected and the worker/callee consumes. ``go``: the
    warm-up is over, the measured run starts. ``warmed``: the worker has done the
    warm-up tasks. ``stop``: the callee may stop serving.
    """

    ready: Barrier
    go: Barrier
    warmed: Event
    stop: Event

    @classmethod
    def create(cls, ready: int, go: int) -> Sync:
        """Barriers for ``ready`` and ``go`` parties (the main process among them)."""
        ctx = multiprocessing.get_context("spawn")
        return cls(ctx.Barrier(ready), ctx.Barrier(go), ctx.Event(), ctx.Event())

    @property
    def barriers(self) -> tuple[Barrier, ...]:
        return self.ready, self.go


@dataclasses.dataclass
class Measured:
    """Wall clock (``clock``) and this process's CPU time over a measured part."""

    start: float = 0.0
    end: float = 0.0
    cpu_seconds: float = 0.0


@contextlib.contextmanager
def measured(case: Case, role: str) -> Iterator[Measured]:
    """Time the block (and profile it if the case asks)."""
    result = Measured()
    with reported_profile(case.profile, case.library, f"{case.scenario}-{role}") as profiler:
        result.start, start_cpu = clock(), time.process_time()
        if profiler is not None:
            profiler.enable()
        try:
            yield result
        finally:
            if profiler is not None:
                profiler.disable()
            result.end = clock()
            result.cpu_seconds = time.process_time() - start_cpu


def client_name(case: Case, role: str) -> str:
    return f"bench {case.library} {role}"


# -- Master/Worker ----------------------------------------------------------------------


async def serve_tasks(case: Case, url: str, queue: str, sync: Sync) -> dict[str, Any]:
    """The worker process: consume until warm-up + N tasks are done."""
    loop = asyncio.get_running_loop()
    target = case.warmup + case.n
    done: asyncio.Future[None] = loop.create_future()
    count = 0
    start_cpu = start = end = end_cpu = 0.0
    memory: dict[str, dict[str, int]] = {}
    checkpoints = set(case.checkpoints)
    with reported_profile(case.profile, case.library, f"{case.scenario}-worker") as profiler:

        def measure_from_here() -> None:
            nonlocal start, start_cpu
            start, start_cpu = clock(), time.process_time()
            if profiler is not None:
                profiler.enable()

        async def task(*, task_id: int) -> None:
            nonlocal count, end, end_cpu
            count += 1
            if count == case.warmup:
                measure_from_here()
                sync.warmed.set()
            if count in checkpoints:
                memory[str(count)] = memory_status()
            if count == target:
                end, end_cpu = clock(), time.process_time()
                if profiler is not None:
                    profiler.disable()
                if not done.done():
                    done.set_result(None)

        client = await open_patterns_client(
            case.library, url, client_name(case, "worker"), speed=case.speed
        )
        try:
            await client.start_worker(queue, task, case.durable, case.prefetch)
            if case.warmup == 0:  # nothing is sent before everyone is ready
                measure_from_here()
            await asyncio.to_thread(sync.ready.wait, 120.0)
            async with asyncio.timeout(run_timeout(case)):
                await done
            # Let the last acks leave before the worker is closed.
            await asyncio.sleep(0.05)
        finally:
            await client.close()
    return {
        "start": start,
        "end": end,
        "cpu_seconds": end_cpu - start_cpu,
        "tasks_done": count,
        "memory": memory,
    }


async def send_tasks(case: Case, url: str, queue: str, sync: Sync) -> dict[str, Any]:
    """The producer process: warm up, then send N tasks over ``case.lanes`` lanes."""
    name = client_name(case, "producer")
    client = await open_driver(case.library, url, name, case.confirms, case.speed)
    try:
        create_task = await client.task_creator()

        def send(i: int) -> Awaitable[Any]:
            return create_task(queue, {"task_id": i})

        await asyncio.to_thread(sync.ready.wait, 120.0)
        if case.warmup:
            await run_lanes(case.warmup, case.lanes, send)
            if not await asyncio.to_thread(sync.warmed.wait, 120.0):
                raise RuntimeError("the worker did not finish the warm-up tasks")
        await asyncio.to_thread(sync.go.wait, 120.0)
        with measured(case, "producer") as result:
            await run_lanes(case.n, case.lanes, lambda i: send(case.warmup + i))
    finally:
        await client.close()
    return dataclasses.asdict(result)


# -- RPC --------------------------------------------------------------------------------


async def multiply(*, x: int, y: int) -> int:
    return x * y


async def serve_calls(case: Case, url: str, queue: str, sync: Sync) -> dict[str, Any]:
    """The callee process: serve until the main process says stop."""
    client = await open_patterns_client(
        case.library, url, client_name(case, "callee"), case.confirms, case.speed
    )
    try:
        await client.start_callee(queue, multiply, case.prefetch)
        await asyncio.to_thread(sync.ready.wait, 120.0)
        await asyncio.to_thread(sync.go.wait, 120.0)
        with measured(case, "callee") as result:
            stopped = await asyncio.to_thread(sync.stop.wait, run_timeout(case))
        if not stopped:
            raise RuntimeError("the callee was not told to stop in time")
    finally:
        await client.close()
    return dataclasses.asdict(result)


async def make_calls(case: Case, url: str, queue: str, sync: Sync) -> dict[str, Any]:
    """The caller process: warm up, then N calls with ``case.lanes`` in flight."""
    name = client_name(case, "caller")
    client = await open_driver(case.library, url, name, case.confirms, case.speed)
    try:
        call = await client.rpc_caller()
        latencies: list[int] = []
        now = time.perf_counter_ns

        async def timed(i: int) -> None:
            sent = now()
            result = await call(queue, {"x": i, "y": 2})
            latencies.append(now() - sent)
            if result != i * 2:
                raise RuntimeError(f"call {i} returned {result!r}")

        await asyncio.to_thread(sync.ready.wait, 120.0)
        await run_lanes(case.warmup, case.lanes, timed)
        await asyncio.to_thread(sync.go.wait, 120.0)
        latencies.clear()  # the warm-up's
        with measured(case, "caller") as result:
            async with asyncio.timeout(run_timeout(case)):
                await run_lanes(case.n, case.lanes, lambda i: timed(case.warmup + i))
    finally:
        await client.close()
    return {**dataclasses.asdict(result), "latency_ms": latency_summary(latencies)}


# -- raw AMQP publisher and consumer ------------------------------------------------------


async def warm_up(client: AmqpClient, queue: str, n: int, lanes: int) -> None:
    """Publish and consume a few messages so connections, caches and JIT-less
    first-call costs (imports, struct caches, the broker's queue process) are paid."""
    if n <= 0:
        return
    await client.declare_fresh(queue)
    await client.publish(queue, n, lanes)
    await client.consume(queue, n, timeout=60.0)


def consume_timeout(n: int) -> float:
    """A bound so a lost message cannot hang the benchmark (not a time assertion)."""
    return max(60.0, n / 200)


async def amqp_role(
    role: str,
    library: str,
    url: str,
    queue: str,
    n: int,
    lanes: int,
    prefetch: int,
    warmup: int,
    barrier: Barrier,
) -> dict[str, Any]:
    """The raw publisher or consumer process: warm up on a private queue, meet the
    others at ``barrier``, then publish or consume ``n`` messages on ``queue``."""
    client = await open_amqp_client(library, url, prefetch)
    try:
        # Each process warms up on a queue of its own, so the measured queue
        # sees only the N measured messages.
        private = f"{queue}.warmup.{role}"
        await warm_up(client, private, warmup, lanes)
        await client.delete(private)
        await asyncio.to_thread(barrier.wait, 60.0)
        if role == "publisher":
            phase = Phase()
            await client.publish(queue, n, lanes)
            phase.stop()
            return {
                "start": phase.start,
                "end": phase.start + phase.seconds,
                **phase_numbers(n, phase),
            }
        phase = Phase()
        first, last = await client.consume(queue, n, consume_timeout(n))
        phase.stop(last)
        # The consumer's rate runs from its first delivery to its last ack: the
        # time it waited for the publisher to start is not consuming.
        phase.seconds = last - first
        return {
            "start": phase.start,
            "first_delivery": first,
            "end": last,
            **phase_numbers(n, phase),
        }
    finally:
        await client.close()
