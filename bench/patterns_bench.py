"""Benchmark leveret.patterns against aio-pika's JsonMaster / JsonRPC on the local broker.

One invocation runs the same scenarios for both libraries, every client in its own
process (multiprocessing, spawn), and prints a table:

1. ``master``: a producer process sends N JSON tasks (pipelined over a fixed number
   of coroutines, "lanes", each awaiting its own confirmed ``create_task``) to a
   worker process; tasks/s end to end (first publish to last task done in the
   worker) and the producer's confirmed-publish rate. Variants: a non-durable and
   a durable queue; for leveret also a sweep of worker prefetch values.
2. ``rpc-sequential``: one caller awaits one call at a time; calls/s, p50/p99.
3. ``rpc-in-flight``: 64 caller coroutines keep 64 calls in flight; calls/s.
   leveret's RPC runs on default (confirming) channels and on channels opened with
   ``publisher_confirms=False``; aio-pika's on its default channels.
4. ``memory``: peak RSS (VmHWM) of a leveret worker process after 10k and after 1M
   tasks, read from /proc by the worker itself.

Results go to ``bench/results/patterns-<timestamp>.json`` and
``bench/results/patterns-latest.json``. Nothing here asserts a time: the numbers
depend on the machine and on whatever else runs on it ("other load" in the
table says how much CPU other work took).

    python bench/patterns_bench.py [--tasks 50000] [--calls 20000]
        [--only leveret|aio-pika] [--rounds R] [--no-memory]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import dataclasses
import multiprocessing
import os
import queue as queue_module
import statistics
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from _common import (
    DEFAULT_URL,
    Phase,
    clock,
    fmt,
    fmt_ratio,
    loadavg,
    locate_broker,
    machine_info,
    median,
    memory_status,
    phase_numbers,
    ratio,
    report_profile,
    run_lanes,
    utc_now,
    write_results,
)

if TYPE_CHECKING:  # imported where used, so --only needs just the one library
    import aio_pika.abc
    import aio_pika.patterns

    import leveret
    from leveret import patterns

LIBRARIES: Final = ("leveret", "aio-pika")
SCENARIOS: Final = ("master", "rpc-sequential", "rpc-in-flight", "memory")
#: The broker-side ceiling measured with amqplib (see that file); printed for comparison.
REFERENCE: Final = Path(__file__).resolve().parents[2] / "shared" / "reference" / "README.md"
#: What issue 3 ("Performance") asks of leveret; printed, never asserted.
TARGETS: Final = (
    "master >= 15,000 tasks/s and >= 10x aio-pika; RPC sequential p50 <= 0.5 ms; "
    "RPC 64 in flight >= 8,000 calls/s and >= 10x aio-pika; "
    "worker peak RSS after 1M tasks within 20% of after 10k"
)

TaskFunc = Callable[..., Awaitable[Any]]
#: ``create_task(name, kwargs)`` or ``call(name, kwargs)`` of either library.
Send = Callable[[str, dict[str, Any]], Awaitable[Any]]


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

    @property
    def is_master(self) -> bool:
        return self.scenario in ("master", "memory")

    @property
    def key(self) -> str:
        return f"{self.scenario}/{self.library}/{self.variant}"


# -- the two libraries behind one small interface ---------------------------------------


class PatternsClient(Protocol):
    """What a scenario needs from a library: one robust connection with one channel,
    and the Master/Worker and RPC calls of its patterns."""

    async def start_worker(
        self, queue: str, func: TaskFunc, durable: bool, prefetch: int | None
    ) -> None: ...

    async def task_creator(self) -> Send: ...

    async def start_callee(self, queue: str, func: TaskFunc, prefetch: int | None) -> None: ...

    async def rpc_caller(self) -> Send: ...

    async def close(self) -> None: ...


class LeveretPatterns:
    def __init__(self, connection: leveret.RobustConnection, channel: leveret.Channel) -> None:
        self._connection = connection
        self._channel = channel
        self._master: patterns.Master | None = None
        self._rpc: patterns.RPC | None = None

    @classmethod
    async def open(cls, url: str, name: str, confirms: bool) -> LeveretPatterns:
        import leveret

        connection = await leveret.connect_robust(url, name=name)
        channel = await connection.channel(publisher_confirms=confirms)
        return cls(connection, channel)

    async def start_worker(
        self, queue: str, func: TaskFunc, durable: bool, prefetch: int | None
    ) -> None:
        from leveret.patterns import Master

        self._master = Master(self._channel)
        await self._master.create_worker(queue, func, durable=durable, prefetch_count=prefetch)

    async def task_creator(self) -> Send:
        from leveret.patterns import Master

        self._master = Master(self._channel)
        return self._master.create_task

    async def start_callee(self, queue: str, func: TaskFunc, prefetch: int | None) -> None:
        from leveret.patterns import RPC

        self._rpc = await RPC.create(self._channel)
        await self._rpc.register(queue, func, prefetch_count=prefetch)

    async def rpc_caller(self) -> Send:
        from leveret.patterns import RPC

        self._rpc = await RPC.create(self._channel)
        return self._rpc.call

    async def close(self) -> None:
        try:
            if self._master is not None:
                await self._master.close()
            if self._rpc is not None:
                await self._rpc.close()
        finally:
            await self._connection.close()


class AioPikaPatterns:
    def __init__(
        self,
        connection: aio_pika.abc.AbstractRobustConnection,
        channel: aio_pika.abc.AbstractChannel,
    ) -> None:
        self._connection = connection
        self._channel = channel
        self._worker: aio_pika.patterns.master.Worker | None = None
        self._rpc: aio_pika.patterns.RPC | None = None

    @classmethod
    async def open(cls, url: str, name: str, confirms: bool) -> AioPikaPatterns:
        import aio_pika

        connection = await aio_pika.connect_robust(url, client_properties={"connection_name": name})
        channel = await connection.channel(publisher_confirms=confirms)
        return cls(connection, channel)

    async def start_worker(
        self, queue: str, func: TaskFunc, durable: bool, prefetch: int | None
    ) -> None:
        from aio_pika.patterns import JsonMaster

        if prefetch is not None:  # by default aio-pika sends no basic.qos: no limit
            await self._channel.set_qos(prefetch_count=prefetch)
        master = JsonMaster(self._channel)
        self._worker = await master.create_worker(queue, func, durable=durable)

    async def task_creator(self) -> Send:
        from aio_pika.patterns import JsonMaster

        return JsonMaster(self._channel).create_task

    async def start_callee(self, queue: str, func: TaskFunc, prefetch: int | None) -> None:
        from aio_pika.patterns import JsonRPC

        if prefetch is not None:
            await self._channel.set_qos(prefetch_count=prefetch)
        self._rpc = await JsonRPC.create(self._channel)
        await self._rpc.register(queue, func)

    async def rpc_caller(self) -> Send:
        from aio_pika.patterns import JsonRPC

        self._rpc = await JsonRPC.create(self._channel)
        return self._rpc.call

    async def close(self) -> None:
        try:
            if self._worker is not None:
                await self._worker.close()
            if self._rpc is not None:
                await self._rpc.close()
        finally:
            await self._connection.close()


async def open_client(case: Case, url: str, role: str) -> PatternsClient:
    name = f"patterns_bench {case.library} {role}"
    if case.library == "leveret":
        return await LeveretPatterns.open(url, name, case.confirms)
    if case.library == "aio-pika":
        return await AioPikaPatterns.open(url, name, case.confirms)
    raise ValueError(f"unknown library {case.library!r}")


def run_timeout(case: Case) -> float:
    """A bound so a lost message cannot hang the benchmark (not a time assertion)."""
    return max(180.0, (case.n + case.warmup) / 100)


# -- the child processes ----------------------------------------------------------------


@dataclasses.dataclass
class Sync:
    """What the main process and its two children meet on.

    ``ready``: all three are connected and the worker/callee consumes. ``go``: the
    warm-up is over, the measured run starts (master: main + producer; RPC: all
    three). ``warmed``: the worker has done the warm-up tasks. ``stop``: the callee
    may stop serving.
    """

    ready: Barrier
    go: Barrier
    warmed: Event
    stop: Event
    results: multiprocessing.Queue[dict[str, Any]]


def _child(role: str, case: Case, url: str, queue: str, sync: Sync) -> None:
    """Entry point of a spawned child."""
    try:
        result = asyncio.run(ROLES[role](case, url, queue, sync))
        result["role"] = role
    except BaseException:
        sync.ready.abort()
        sync.go.abort()
        result = {"role": role, "error": traceback.format_exc()}
    sync.results.put(result)


@contextlib.contextmanager
def _profiled(case: Case, role: str) -> Iterator[cProfile.Profile | None]:
    """A cProfile for the measured part if the case asks for one (the block enables
    and disables it); its report when the block ends."""
    if not case.profile:
        yield None
        return
    profiler = cProfile.Profile()
    try:
        yield profiler
    finally:
        profiler.disable()
        report_profile(case.library, f"{case.scenario}-{role}", profiler, top=25)


@dataclasses.dataclass
class Measured:
    """Wall clock (``clock``) and this process's CPU time over a measured part."""

    start: float = 0.0
    end: float = 0.0
    cpu_seconds: float = 0.0


@contextlib.contextmanager
def _measured(case: Case, role: str) -> Iterator[Measured]:
    """Time the block (and profile it if the case asks)."""
    measured = Measured()
    with _profiled(case, role) as profiler:
        measured.start, start_cpu = clock(), time.process_time()
        if profiler is not None:
            profiler.enable()
        try:
            yield measured
        finally:
            if profiler is not None:
                profiler.disable()
            measured.end = clock()
            measured.cpu_seconds = time.process_time() - start_cpu


async def serve_tasks(case: Case, url: str, queue: str, sync: Sync) -> dict[str, Any]:
    """The worker process: consume until warm-up + N tasks are done."""
    loop = asyncio.get_running_loop()
    target = case.warmup + case.n
    done: asyncio.Future[None] = loop.create_future()
    count = 0
    start_cpu = start = end = end_cpu = 0.0
    memory: dict[str, dict[str, int]] = {}
    checkpoints = set(case.checkpoints)
    with _profiled(case, "worker") as profiler:

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

        client = await open_client(case, url, "worker")
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
    client = await open_client(case, url, "producer")
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
        with _measured(case, "producer") as measured:
            await run_lanes(case.n, case.lanes, lambda i: send(case.warmup + i))
    finally:
        await client.close()
    return dataclasses.asdict(measured)


async def multiply(*, x: int, y: int) -> int:
    return x * y


async def serve_calls(case: Case, url: str, queue: str, sync: Sync) -> dict[str, Any]:
    """The callee process: serve until the main process says stop."""
    client = await open_client(case, url, "callee")
    try:
        await client.start_callee(queue, multiply, case.prefetch)
        await asyncio.to_thread(sync.ready.wait, 120.0)
        await asyncio.to_thread(sync.go.wait, 120.0)
        with _measured(case, "callee") as measured:
            stopped = await asyncio.to_thread(sync.stop.wait, run_timeout(case))
        if not stopped:
            raise RuntimeError("the callee was not told to stop in time")
    finally:
        await client.close()
    return dataclasses.asdict(measured)


async def make_calls(case: Case, url: str, queue: str, sync: Sync) -> dict[str, Any]:
    """The caller process: warm up, then N calls with ``case.lanes`` in flight."""
    client = await open_client(case, url, "caller")
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
        with _measured(case, "caller") as measured:
            async with asyncio.timeout(run_timeout(case)):
                await run_lanes(case.n, case.lanes, lambda i: timed(case.warmup + i))
    finally:
        await client.close()
    latencies.sort()
    return {
        **dataclasses.asdict(measured),
        "latency_ms": {
            "p50": round(_percentile(latencies, 50) / 1e6, 3),
            "p90": round(_percentile(latencies, 90) / 1e6, 3),
            "p99": round(_percentile(latencies, 99) / 1e6, 3),
            "max": round(latencies[-1] / 1e6, 3),
            "mean": round(statistics.fmean(latencies) / 1e6, 3),
        },
    }


def _percentile(ordered: list[int], pct: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    index = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


ROLES: Final[dict[str, Callable[[Case, str, str, Sync], Coroutine[Any, Any, dict[str, Any]]]]] = {
    "worker": serve_tasks,
    "producer": send_tasks,
    "callee": serve_calls,
    "caller": make_calls,
}


# -- one run, seen from the main process --------------------------------------------------


async def run_case(case: Case, url: str, round_no: int) -> dict[str, Any]:
    """Start the two children, time the measured part, collect, clean up."""
    from leveret import amqp

    slug = "".join(c if c.isalnum() else "-" for c in case.variant)
    queue = f"patterns-bench.{case.library}.{case.scenario}.{slug}.{os.getpid()}.{round_no}"
    server_role, driver_role = ("worker", "producer") if case.is_master else ("callee", "caller")
    ctx = multiprocessing.get_context("spawn")
    sync = Sync(
        ready=ctx.Barrier(3),
        go=ctx.Barrier(2 if case.is_master else 3),
        warmed=ctx.Event(),
        stop=ctx.Event(),
        results=ctx.Queue(),
    )
    processes = {
        role: ctx.Process(
            target=_child, args=(role, case, url, queue, sync), name=f"patterns-bench-{role}"
        )
        for role in (server_role, driver_role)
    }
    # What the run declares: the task or method queue, and leveret's dead-letter
    # queue beside a worker's queue (it stays empty unless a task fails).
    queues = [queue]
    if case.library == "leveret" and case.is_master:
        from leveret import patterns

        # getattr: so the benchmark also runs on revisions from before dead-letter queues
        dead_letter_queue = getattr(patterns, "dead_letter_queue", None)
        if dead_letter_queue is not None:
            queues.append(dead_letter_queue(queue))
    admin = await amqp.connect(url, name="patterns_bench admin")
    left: dict[str, int] | None = None
    by_role: dict[str, dict[str, Any]] = {}

    async def delete_queues() -> dict[str, int]:
        channel = await admin.channel()
        try:
            return {name: await channel.queue_delete(name) for name in queues}
        finally:
            await channel.close()

    async def collect(count: int, timeout: float) -> None:
        for _ in range(count):
            result = await asyncio.to_thread(sync.results.get, True, timeout)
            by_role[result["role"]] = result

    try:
        for process in processes.values():
            process.start()
        load_before = loadavg()
        try:
            await asyncio.to_thread(sync.ready.wait, 180.0)
            await asyncio.to_thread(sync.go.wait, run_timeout(case))
            machine = Phase()
            if case.is_master:
                await collect(2, run_timeout(case) + 60.0)
            else:
                await collect(1, run_timeout(case) + 60.0)
            machine.stop()
            sync.stop.set()
            if not case.is_master:
                await collect(1, 60.0)
        except (threading.BrokenBarrierError, queue_module.Empty) as exc:
            with contextlib.suppress(queue_module.Empty):
                await collect(2 - len(by_role), 10.0)
            errors = {role: r.get("error") for role, r in by_role.items() if "error" in r}
            raise RuntimeError(f"{case.key} failed: {errors or exc!r}") from None
        errors = {role: r["error"] for role, r in by_role.items() if "error" in r}
        if errors:
            raise RuntimeError(f"{case.key} failed: {errors}")
        for process in processes.values():  # closed their connections and exit
            await asyncio.to_thread(process.join, 30.0)
        left = await delete_queues()
        return summarize_run(case, by_role[server_role], by_role[driver_role], machine) | {
            "left_in_queues": left,
            "load_before": load_before,
            "load_after": loadavg(),
        }
    finally:
        sync.stop.set()
        for process in processes.values():
            await asyncio.to_thread(process.join, 30.0)
            if process.is_alive():
                process.terminate()  # our own child, by its handle
                await asyncio.to_thread(process.join, 5.0)
        if left is None:  # the run failed: clean up what may be there
            with contextlib.suppress(Exception):
                await delete_queues()
        await admin.close()


def summarize_run(
    case: Case, server: dict[str, Any], driver: dict[str, Any], machine: Phase
) -> dict[str, Any]:
    n = case.n
    client_cpu = server["cpu_seconds"] + driver["cpu_seconds"]
    result: dict[str, Any] = {
        "machine": phase_numbers(n, machine, client_cpu_seconds=client_cpu),
        "driver_cpu_us_per_msg": round(1e6 * driver["cpu_seconds"] / n, 1),
        "server_cpu_us_per_msg": round(1e6 * server["cpu_seconds"] / n, 1),
    }
    driver_seconds = driver["end"] - driver["start"]
    if case.is_master:
        # first publish to last task done: both processes read CLOCK_MONOTONIC
        seconds = server["end"] - driver["start"]
        result |= {
            "seconds": round(seconds, 4),
            "per_s": round(n / seconds),
            "producer_seconds": round(driver_seconds, 4),
            "producer_confirmed_per_s": round(n / driver_seconds),
            "worker_tasks_done": server["tasks_done"],
            "memory": server["memory"],
        }
    else:
        result |= {
            "seconds": round(driver_seconds, 4),
            "per_s": round(n / driver_seconds),
            "latency_ms": driver["latency_ms"],
        }
    return result


# -- the plan ---------------------------------------------------------------------------


def plan(args: argparse.Namespace) -> dict[str, list[Case]]:
    """The cases of each scenario, in the order they run within a round."""
    libraries = [args.only] if args.only else list(LIBRARIES)
    scenarios = [args.scenario] if args.scenario else list(SCENARIOS)
    if args.no_memory and "memory" in scenarios:
        scenarios.remove("memory")
    from leveret.patterns import DEFAULT_PREFETCH

    profile = args.profile
    cases: dict[str, list[Case]] = {}
    for scenario in scenarios:
        entries: list[Case] = []
        if scenario == "master":
            for durable in (False, True):
                for library in libraries:
                    queue_kind = "durable" if durable else "non-durable"
                    prefetch = f"prefetch {DEFAULT_PREFETCH}" if library == "leveret" else "no qos"
                    entries.append(
                        Case(
                            "master",
                            library,
                            f"{queue_kind}, {prefetch}",
                            args.tasks,
                            args.warmup,
                            args.lanes,
                            durable=durable,
                            profile=profile,
                        )
                    )
            if "leveret" in libraries:
                entries += [
                    Case(
                        "master",
                        "leveret",
                        f"non-durable, prefetch {prefetch}",
                        args.tasks,
                        args.warmup,
                        args.lanes,
                        prefetch=prefetch,
                    )
                    for prefetch in args.prefetch_sweep
                    if prefetch != DEFAULT_PREFETCH  # measured above
                ]
        elif scenario in ("rpc-sequential", "rpc-in-flight"):
            lanes = 1 if scenario == "rpc-sequential" else args.in_flight
            for library in libraries:
                variants = (
                    [("confirms", True), ("no-confirms", False)]
                    if library == "leveret"
                    else [("default", True)]
                )
                entries += [
                    Case(
                        scenario,
                        library,
                        variant,
                        args.calls,
                        args.warmup,
                        lanes,
                        confirms=confirms,
                        profile=profile,
                    )
                    for variant, confirms in variants
                ]
        elif scenario == "memory" and "leveret" in libraries:
            total = max(args.memory_tasks, args.memory_checkpoint)
            entries.append(
                Case(
                    "memory",
                    "leveret",
                    "non-durable",
                    total,
                    0,
                    args.lanes,
                    checkpoints=(args.memory_checkpoint, total),
                )
            )
        if entries:
            cases[scenario] = entries
    return cases


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from leveret import amqp

    broker_pid = locate_broker(args.url)
    probe = await amqp.connect(args.url, name="patterns_bench probe")
    version = probe.server_properties.get("version", "?")
    await probe.close()
    from leveret.patterns import DEFAULT_PREFETCH

    report: dict[str, Any] = {
        "started": utc_now(),
        "machine": machine_info(("leveret", "aio-pika", "aiormq", "pamqp")),
        "broker_version": version.decode() if isinstance(version, bytes) else str(version),
        "url": args.url.split("@")[-1],  # no credentials in the results
        "tasks": args.tasks,
        "calls": args.calls,
        "lanes": args.lanes,
        "in_flight": args.in_flight,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "leveret_default_prefetch": DEFAULT_PREFETCH,
        "aio_pika_default_prefetch": "none (no basic.qos: unlimited)",
        "connections": "connect_robust, one channel per process",
        "load_at_start": loadavg(),
        "broker_pid_found": broker_pid is not None,
        "reference": read_reference(),
        "targets": TARGETS,
        "scenarios": [],
    }
    for scenario, cases in plan(args).items():
        entry: dict[str, Any] = {"name": scenario, "cases": []}
        report["scenarios"].append(entry)
        rounds = 1 if scenario == "memory" else args.rounds
        runs: dict[str, list[dict[str, Any]]] = {case.key: [] for case in cases}
        # Libraries alternate within each round, so slow drifts in the machine's
        # load hit both alike.
        for round_no in range(1, rounds + 1):
            for case in cases:
                print(f"[{case.key}] round {round_no} ...", flush=True, end=" ")
                result = await run_case(case, args.url, round_no)
                runs[case.key].append(result)
                print(describe(result), flush=True)
        for case in cases:
            entry["cases"].append(
                {
                    "library": case.library,
                    "variant": case.variant,
                    "options": {
                        "n": case.n,
                        "warmup": case.warmup,
                        "lanes": case.lanes,
                        "durable": case.durable,
                        "prefetch": case.prefetch,
                        "publisher_confirms": case.confirms,
                    },
                    "rounds": runs[case.key],
                    "summary": summarize_case(runs[case.key]),
                }
            )
        entry["ratios"] = pair_ratios(entry["cases"])
    report["finished"] = utc_now()
    return report


def describe(result: dict[str, Any]) -> str:
    text = f"{fmt(result['per_s'])}/s"
    if "producer_confirmed_per_s" in result:
        text += f" (producer {fmt(result['producer_confirmed_per_s'])}/s)"
    if "latency_ms" in result:
        latency = result["latency_ms"]
        text += f", p50 {latency['p50']:.3f} ms, p99 {latency['p99']:.3f} ms"
    other = result["machine"].get("other_load_cores")
    return text + f", other load {fmt(other, 2)}"


def summarize_case(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds."""

    def of(*path: str) -> float | None:
        values: list[float | None] = []
        for run_result in rounds:
            value: Any = run_result
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            values.append(value)
        return median(values)

    summary: dict[str, Any] = {
        "per_s": of("per_s"),
        "producer_confirmed_per_s": of("producer_confirmed_per_s"),
        "p50_ms": of("latency_ms", "p50"),
        "p99_ms": of("latency_ms", "p99"),
        "driver_cpu_us_per_msg": of("driver_cpu_us_per_msg"),
        "server_cpu_us_per_msg": of("server_cpu_us_per_msg"),
        "broker_cpu_us_per_msg": of("machine", "broker_cpu_us_per_msg"),
        "other_load_cores": of("machine", "other_load_cores"),
    }
    loaded = [
        (run_result["machine"]["other_load_cores"], index)
        for index, run_result in enumerate(rounds)
        if run_result["machine"].get("other_load_cores") is not None
    ]
    if loaded:  # the round with the least other load: the least noisy numbers
        load, index = min(loaded)
        summary["quietest_round"] = {
            "round": index + 1,
            "other_load_cores": load,
            "per_s": rounds[index]["per_s"],
            "producer_confirmed_per_s": rounds[index].get("producer_confirmed_per_s"),
        }
    memory = rounds[0].get("memory") if rounds else None
    if memory:
        ordered = sorted(memory.items(), key=lambda item: int(item[0]))
        (early_tasks, early), (late_tasks, late) = ordered[0], ordered[-1]
        summary["memory"] = {
            "early_tasks": int(early_tasks),
            "early": early,
            "late_tasks": int(late_tasks),
            "late": late,
            "peak_rss_ratio": ratio(late.get("vmhwm_kib"), early.get("vmhwm_kib")),
        }
    return summary


def pair_ratios(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """leveret over aio-pika for each leveret case at its default prefetch, against
    the aio-pika case with the same queue durability."""
    pairs: list[dict[str, Any]] = []
    for ours in cases:
        if ours["library"] != "leveret" or ours["options"]["prefetch"] is not None:
            continue
        for theirs in cases:
            if (
                theirs["library"] == "aio-pika"
                and theirs["options"]["prefetch"] is None
                and theirs["options"]["durable"] == ours["options"]["durable"]
            ):
                a, b = ours["summary"], theirs["summary"]
                pairs.append(
                    {
                        "leveret": ours["variant"],
                        "aio-pika": theirs["variant"],
                        "per_s": ratio(a["per_s"], b["per_s"]),
                        "producer_confirmed_per_s": ratio(
                            a["producer_confirmed_per_s"], b["producer_confirmed_per_s"]
                        ),
                    }
                )
    return pairs


# -- report -------------------------------------------------------------------------------


def read_reference() -> str | None:
    """The broker-ceiling paragraph of the shared reference README, if it is there."""
    try:
        text = REFERENCE.read_text()
    except OSError:
        return None
    start = text.find("Seen on")
    return " ".join(text[start:].split()) if start >= 0 else None


def print_table(report: dict[str, Any]) -> None:
    print()
    print(
        f"tasks={report['tasks']}  calls={report['calls']}  lanes={report['lanes']}  "
        f"in flight={report['in_flight']}  warmup={report['warmup']}  "
        f"rounds={report['rounds']}  broker RabbitMQ {report['broker_version']}  "
        f"leveret {report['machine']['leveret_commit']}"
    )
    print(
        "(rate = tasks/s end to end or calls/s, median over rounds; producer = its confirmed "
        "publishes/s; cpu = CPU µs per task or call of the producer/caller, the "
        "worker/callee and the broker; other load = cores busy with neither this benchmark "
        "nor the broker)"
    )
    header = (
        f"{'scenario':<15}{'library':<9}{'variant':<28}{'rate/s':>9}{'producer/s':>11}"
        f"{'p50 ms':>8}{'p99 ms':>8}{'drv cpu':>9}{'srv cpu':>9}{'brk cpu':>9}{'other':>7}"
    )
    print(header)
    print("-" * len(header))
    for scenario in report["scenarios"]:
        if scenario["name"] == "memory":
            continue
        for case in scenario["cases"]:
            row = case["summary"]
            print(
                f"{scenario['name']:<15}{case['library']:<9}{case['variant']:<28}"
                f"{fmt(row['per_s']):>9}{fmt(row['producer_confirmed_per_s']):>11}"
                f"{fmt(row['p50_ms'], 3):>8}{fmt(row['p99_ms'], 3):>8}"
                f"{fmt(row['driver_cpu_us_per_msg'], 1):>9}"
                f"{fmt(row['server_cpu_us_per_msg'], 1):>9}"
                f"{fmt(row['broker_cpu_us_per_msg'], 1):>9}"
                f"{fmt(row['other_load_cores'], 2):>7}"
            )
        for pair in scenario["ratios"]:
            label = pair["leveret"].split(",")[0] + " / aio-pika"
            print(
                f"{scenario['name']:<15}{'ratio':<9}{label:<28}{fmt_ratio(pair['per_s']):>9}"
                f"{fmt_ratio(pair['producer_confirmed_per_s']):>11}"
            )
    if report["rounds"] > 1:
        print("\nquietest round of each (least other load; the least noisy numbers):")
        for scenario in report["scenarios"]:
            for case in scenario["cases"]:
                quiet = case["summary"].get("quietest_round")
                if quiet and scenario["name"] != "memory":
                    print(
                        f"  {scenario['name']:<15}{case['library']:<9}{case['variant']:<28}"
                        f"round {quiet['round']} (other load {quiet['other_load_cores']:.2f}): "
                        f"{fmt(quiet['per_s'])}/s"
                    )
    print_prefetch(report)
    print_memory(report)
    print("\nbroker ceiling (../shared/reference/README.md):")
    print(f"  {report['reference'] or f'(not found at {REFERENCE})'}")
    print(f"issue 3 targets (not asserted): {report['targets']}")
    print()


def print_prefetch(report: dict[str, Any]) -> None:
    """leveret's worker at its default prefetch and the sweep, non-durable queue."""
    for scenario in report["scenarios"]:
        if scenario["name"] != "master":
            continue
        rows = [
            (case["options"]["prefetch"] or report["leveret_default_prefetch"], case["summary"])
            for case in scenario["cases"]
            if case["library"] == "leveret" and case["variant"].startswith("non-durable")
        ]
        if len(rows) < 2:
            return
        print(
            f"\nleveret worker prefetch (non-durable queue; default "
            f"{report['leveret_default_prefetch']}):"
        )
        for prefetch, row in sorted(rows, key=lambda r: int(r[0])):
            print(
                f"  prefetch {prefetch:>5}: {fmt(row['per_s']):>7} tasks/s end to end, "
                f"producer {fmt(row['producer_confirmed_per_s'])}/s, worker cpu "
                f"{fmt(row['server_cpu_us_per_msg'], 1)} µs/task, other load "
                f"{fmt(row['other_load_cores'], 2)}{_quietest(report, row)}"
            )


def _quietest(report: dict[str, Any], row: dict[str, Any]) -> str:
    quiet = row.get("quietest_round")
    if report["rounds"] < 2 or not quiet:
        return ""
    return f"; quietest round {fmt(quiet['per_s'])}/s (other load {quiet['other_load_cores']:.2f})"


def print_memory(report: dict[str, Any]) -> None:
    for scenario in report["scenarios"]:
        if scenario["name"] != "memory":
            continue
        for case in scenario["cases"]:
            memory = case["summary"].get("memory")
            if not memory:
                continue
            early, late = memory["early"], memory["late"]
            print(
                f"\nleveret worker memory ({case['variant']} queue, default prefetch, "
                f"{fmt(case['summary']['per_s'])} tasks/s):"
            )
            for tasks, status in ((memory["early_tasks"], early), (memory["late_tasks"], late)):
                print(
                    f"  after {tasks:>9,} tasks: peak RSS (VmHWM) "
                    f"{fmt(status.get('vmhwm_kib', 0) / 1024, 1)} MiB, VmRSS "
                    f"{fmt(status.get('vmrss_kib', 0) / 1024, 1)} MiB"
                )
            print(f"  peak RSS ratio late/early: {fmt_ratio(memory['peak_rss_ratio'])}")


# -- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=50_000, help="Master -> Worker tasks")
    parser.add_argument("--calls", type=int, default=20_000, help="RPC calls per run")
    parser.add_argument("--only", choices=LIBRARIES, help="run one library only")
    parser.add_argument("--scenario", choices=SCENARIOS, help="run one scenario only")
    parser.add_argument("--rounds", type=int, default=1, help="repeat each run (median shown)")
    parser.add_argument("--lanes", type=int, default=128, help="concurrent producer coroutines")
    parser.add_argument("--in-flight", type=int, default=64, help="concurrent RPC calls")
    parser.add_argument("--warmup", type=int, default=1000, help="warm-up tasks/calls per run")
    parser.add_argument(
        "--prefetch-sweep",
        type=lambda text: [int(x) for x in text.split(",") if x],
        default=[64, 1024],
        help="other leveret worker prefetch values to compare with the default "
        "(comma-separated; empty to skip)",
    )
    parser.add_argument(
        "--memory-tasks", type=int, default=1_000_000, help="tasks of the memory run"
    )
    parser.add_argument(
        "--memory-checkpoint", type=int, default=10_000, help="the early RSS reading"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the memory run")
    parser.add_argument("--url", default=os.environ.get("AMQP_URL", DEFAULT_URL))
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run cProfile in every child over its measured part, print the top functions "
        "and save .pstats under bench/results (distorts the numbers; use with --no-save)",
    )
    args = parser.parse_args(argv)
    if min(args.tasks, args.calls, args.rounds, args.lanes, args.in_flight) < 1:
        parser.error("--tasks, --calls, --rounds, --lanes and --in-flight must be >= 1")
    if args.warmup < 0 or any(not 0 < p <= 65535 for p in args.prefetch_sweep):
        parser.error("--warmup must be >= 0 and prefetch values within 1..65535")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = asyncio.run(run(args))
    path = None if args.no_save else write_results("patterns", report)
    print_table(report)
    if path is not None:
        print(f"results: {path} (and {path.with_name('patterns-latest.json')})")


if __name__ == "__main__":
    main()
