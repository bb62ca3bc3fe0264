"""Benchmark leveret.amqp against aiormq on the local RabbitMQ broker.

One invocation runs the same scenarios for both libraries and prints a table:

1. ``same-process``: publish N small JSON messages with publisher confirms,
   pipelined over a fixed number of producer coroutines ("lanes"), then consume
   them all with manual acks (prefetch 1000) in the same process.
2. ``two-process``: a publisher process and a consumer process (multiprocessing,
   spawn) run at the same time against one queue.

Results go to ``bench/results/amqp-<timestamp>.json`` and
``bench/results/amqp-latest.json``. Nothing here asserts a time: the numbers
depend on the machine and on whatever else runs on it (``other_load_cores`` in
the JSON, "other load" in the table, says how much CPU other work took).

    python bench/amqp_bench.py [--n 100000] [--only leveret|aiormq]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import threading
import traceback
from collections.abc import Awaitable, Callable
from multiprocessing.synchronize import Barrier
from typing import TYPE_CHECKING, Any, Final, Protocol

from _common import (
    DEFAULT_URL,
    Phase,
    Profiler,
    clock,
    fmt,
    fmt_ratio,
    loadavg,
    locate_broker,
    machine_info,
    median,
    phase_numbers,
    profiling,
    ratio,
    report_profile,
    run_lanes,
    utc_now,
    write_results,
)

if TYPE_CHECKING:  # imported where used, so --only needs just the one library
    import aiormq.abc

    from leveret import amqp

BODY: Final = b'{"task_id": 1}'
LIBRARIES: Final = ("leveret", "aiormq")
SCENARIOS: Final = ("same-process", "two-process")


# -- the two clients behind one small interface ---------------------------------------


class BenchClient(Protocol):
    """What a scenario needs from a library: one connection, a confirming
    publisher channel and a consumer channel with the given prefetch."""

    broker_version: str

    async def declare_fresh(self, queue: str) -> None:
        """Declare a plain (non-durable) queue and purge it."""

    async def delete(self, queue: str) -> int:
        """Delete the queue; return how many messages were still in it."""

    async def publish(self, queue: str, n: int, lanes: int) -> None:
        """Publish ``n`` messages, ``lanes`` coroutines each awaiting its own confirm."""

    async def consume(self, queue: str, n: int, timeout: float) -> tuple[float, float]:
        """Consume and ack ``n`` messages; return (first delivery, last ack) times."""

    async def close(self) -> None: ...


class LeveretClient:
    def __init__(
        self, connection: amqp.Connection, publisher: amqp.Channel, consumer: amqp.Channel
    ) -> None:
        self._connection = connection
        self._publisher = publisher
        self._consumer = consumer
        version = connection.server_properties.get("version", "?")
        self.broker_version = version.decode() if isinstance(version, bytes) else str(version)

    @classmethod
    async def open(cls, url: str, prefetch: int) -> LeveretClient:
        from leveret import amqp

        connection = await amqp.connect(url, name="amqp_bench leveret")
        publisher = await connection.channel(publisher_confirms=True)
        consumer = await connection.channel(publisher_confirms=False)
        await consumer.qos(prefetch)
        return cls(connection, publisher, consumer)

    async def declare_fresh(self, queue: str) -> None:
        await self._publisher.queue_declare(queue)
        await self._publisher.queue_purge(queue)

    async def delete(self, queue: str) -> int:
        count: int = await self._publisher.queue_delete(queue)
        return count

    async def publish(self, queue: str, n: int, lanes: int) -> None:
        publish = self._publisher.publish

        def publish_one(_: int) -> Awaitable[None]:
            result: Awaitable[None] = publish(BODY, routing_key=queue)
            return result

        await run_lanes(n, lanes, publish_one)

    async def consume(self, queue: str, n: int, timeout: float) -> tuple[float, float]:
        done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        count = 0
        first = 0.0

        def on_delivery(delivery: amqp.Delivery) -> None:
            nonlocal count, first
            if count == 0:
                first = clock()
            delivery.ack()
            count += 1
            if count == n and not done.done():
                done.set_result(clock())

        tag = await self._consumer.consume(queue, on_delivery)
        try:
            async with asyncio.timeout(timeout):
                last = await done
        finally:
            await self._consumer.cancel(tag)
        return first, last

    async def close(self) -> None:
        await self._connection.close()


class AiormqClient:
    def __init__(
        self,
        connection: aiormq.abc.AbstractConnection,
        publisher: aiormq.abc.AbstractChannel,
        consumer: aiormq.abc.AbstractChannel,
    ) -> None:
        self._connection = connection
        self._publisher = publisher
        self._consumer = consumer
        version = connection.server_properties.get("version", "?")
        self.broker_version = version.decode() if isinstance(version, bytes) else str(version)

    @classmethod
    async def open(cls, url: str, prefetch: int) -> AiormqClient:
        import aiormq

        connection = await aiormq.connect(url)
        publisher = await connection.channel(publisher_confirms=True)
        consumer = await connection.channel(publisher_confirms=False)
        await consumer.basic_qos(prefetch_count=prefetch)
        return cls(connection, publisher, consumer)

    async def declare_fresh(self, queue: str) -> None:
        await self._publisher.queue_declare(queue)
        await self._publisher.queue_purge(queue)

    async def delete(self, queue: str) -> int:
        reply = await self._publisher.queue_delete(queue)
        return reply.message_count or 0

    async def publish(self, queue: str, n: int, lanes: int) -> None:
        from pamqp.commands import Basic

        basic_publish = self._publisher.basic_publish

        async def publish_one(_: int) -> None:
            confirmation = await basic_publish(BODY, routing_key=queue)
            if not isinstance(confirmation, Basic.Ack):
                raise RuntimeError(f"aiormq publish not acked: {confirmation!r}")

        await run_lanes(n, lanes, publish_one)

    async def consume(self, queue: str, n: int, timeout: float) -> tuple[float, float]:
        done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        count = 0
        first = 0.0
        channel = self._consumer

        async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
            nonlocal count, first
            if count == 0:
                first = clock()
            delivery_tag = message.delivery_tag
            assert delivery_tag is not None  # a basic.deliver always carries one
            await channel.basic_ack(delivery_tag)
            count += 1
            if count == n and not done.done():
                done.set_result(clock())

        consume_ok = await channel.basic_consume(queue, on_message)
        tag = consume_ok.consumer_tag
        assert tag is not None
        try:
            async with asyncio.timeout(timeout):
                last = await done
        finally:
            await channel.basic_cancel(tag)
        return first, last

    async def close(self) -> None:
        await self._connection.close()


async def open_client(library: str, url: str, prefetch: int) -> BenchClient:
    if library == "leveret":
        return await LeveretClient.open(url, prefetch)
    if library == "aiormq":
        return await AiormqClient.open(url, prefetch)
    raise ValueError(f"unknown library {library!r}")


async def warm_up(client: BenchClient, queue: str, n: int, lanes: int) -> None:
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


# -- scenario 1: same process ------------------------------------------------------------


async def same_process(
    library: str,
    url: str,
    n: int,
    lanes: int,
    prefetch: int,
    warmup: int,
    profile: Profiler | None = None,
) -> dict[str, Any]:
    client = await open_client(library, url, prefetch)
    queue = f"amqp-bench.{library}.same.{os.getpid()}"
    try:
        await warm_up(client, queue, warmup, lanes)
        await client.declare_fresh(queue)
        load_before = loadavg()
        total = Phase()
        publish = Phase()
        with profiling(profile, library, "publish"):
            await client.publish(queue, n, lanes)
        publish.stop()
        consume = Phase()
        with profiling(profile, library, "consume"):
            first, last = await client.consume(queue, n, consume_timeout(n))
        consume.stop(last)
        total.stop(last)
        left = await client.delete(queue)
        return {
            "library": library,
            "broker_version": client.broker_version,
            "publish": phase_numbers(n, publish),
            "consume": phase_numbers(n, consume),
            "end_to_end": phase_numbers(n, total),
            "consume_first_delivery_after_s": round(first - consume.start, 4),
            "left_in_queue": left,
            "load_before": load_before,
            "load_after": loadavg(),
        }
    finally:
        await client.close()


# -- scenario 2: two processes -----------------------------------------------------------


def _child(
    role: str,
    library: str,
    url: str,
    queue: str,
    n: int,
    lanes: int,
    prefetch: int,
    warmup: int,
    barrier: Barrier,
    results: multiprocessing.Queue[dict[str, Any]],
) -> None:
    """Entry point of the publisher or consumer process (spawned)."""
    try:
        result = asyncio.run(
            _child_main(role, library, url, queue, n, lanes, prefetch, warmup, barrier)
        )
    except BaseException:
        barrier.abort()
        result = {"role": role, "error": traceback.format_exc()}
    results.put(result)


async def _child_main(
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
    client = await open_client(library, url, prefetch)
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
                "role": role,
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
            "role": role,
            "start": phase.start,
            "first_delivery": first,
            "end": last,
            **phase_numbers(n, phase),
        }
    finally:
        await client.close()


async def two_process(
    library: str, url: str, n: int, lanes: int, prefetch: int, warmup: int
) -> dict[str, Any]:
    client = await open_client(library, url, prefetch)
    queue = f"amqp-bench.{library}.procs.{os.getpid()}"
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(3)
    results: multiprocessing.Queue[dict[str, Any]] = ctx.Queue()
    processes = [
        ctx.Process(
            target=_child,
            args=(role, library, url, queue, n, lanes, prefetch, warmup, barrier, results),
            name=f"amqp-bench-{library}-{role}",
        )
        for role in ("consumer", "publisher")
    ]
    try:
        await client.declare_fresh(queue)
        for process in processes:
            process.start()
        load_before = loadavg()
        machine = Phase()
        by_role: dict[str, dict[str, Any]] = {}
        try:
            await asyncio.to_thread(barrier.wait, 120.0)
            machine = Phase()  # from the go signal
            for _ in processes:
                result = await asyncio.to_thread(results.get, True, consume_timeout(n) + 120.0)
                by_role[result["role"]] = result
        except threading.BrokenBarrierError:
            for _ in processes:
                result = await asyncio.to_thread(results.get, True, 30.0)
                by_role[result["role"]] = result
        machine.stop()
        errors = {role: r["error"] for role, r in by_role.items() if "error" in r}
        if errors:
            raise RuntimeError(f"{library} two-process run failed: {errors}")
        publisher, consumer = by_role["publisher"], by_role["consumer"]
        seconds = consumer["end"] - publisher["start"]
        left = await client.delete(queue)
        return {
            "library": library,
            "broker_version": client.broker_version,
            "publish": _strip_times(publisher),
            "consume": _strip_times(consumer),
            "end_to_end": {
                **phase_numbers(
                    n,
                    machine,
                    client_cpu_seconds=(
                        publisher["client_cpu_us_per_msg"] + consumer["client_cpu_us_per_msg"]
                    )
                    * n
                    / 1e6,
                ),
                # first publish to last ack, both processes' clocks (see ``clock``)
                "seconds": round(seconds, 4),
                "msgs_per_s": round(n / seconds) if seconds > 0 else None,
            },
            "consume_first_delivery_after_publish_start_s": round(
                consumer["first_delivery"] - publisher["start"], 4
            ),
            "left_in_queue": left,
            "load_before": load_before,
            "load_after": loadavg(),
        }
    finally:
        for process in processes:
            await asyncio.to_thread(process.join, 30.0)
            if process.is_alive():
                process.terminate()  # our own child, by its handle
                await asyncio.to_thread(process.join, 5.0)
        await client.close()


def _strip_times(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in ("role", "start", "end", "first_delivery")}


# -- report -------------------------------------------------------------------------------


def median_of(runs: list[dict[str, Any]], phase: str, key: str = "msgs_per_s") -> float | None:
    return median(r[phase].get(key) for r in runs)


def summarize(report: dict[str, Any]) -> None:
    """Add each scenario's medians over rounds and leveret/aiormq ratios to the report."""
    for scenario in report["scenarios"]:
        summary: dict[str, Any] = {}
        for library, runs in scenario["libraries"].items():
            summary[library] = {
                "publish_msgs_per_s": median_of(runs, "publish"),
                "consume_msgs_per_s": median_of(runs, "consume"),
                "end_to_end_msgs_per_s": median_of(runs, "end_to_end"),
                "publish_client_cpu_us_per_msg": median_of(
                    runs, "publish", "client_cpu_us_per_msg"
                ),
                "consume_client_cpu_us_per_msg": median_of(
                    runs, "consume", "client_cpu_us_per_msg"
                ),
                "broker_cpu_us_per_msg": median_of(runs, "end_to_end", "broker_cpu_us_per_msg"),
                "other_load_cores": median_of(runs, "end_to_end", "other_load_cores"),
                "quietest_round": quietest_round(runs),
            }
        if "leveret" in summary and "aiormq" in summary:
            summary["leveret_over_aiormq"] = {
                key: ratio(summary["leveret"][key], summary["aiormq"][key])
                for key in ("publish_msgs_per_s", "consume_msgs_per_s", "end_to_end_msgs_per_s")
            }
        scenario["summary"] = summary


def quietest_round(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The round with the least other load on the machine: the least noisy numbers."""
    loaded = [
        (run["end_to_end"]["other_load_cores"], index)
        for index, run in enumerate(runs)
        if run["end_to_end"].get("other_load_cores") is not None
    ]
    if not loaded:
        return None
    load, index = min(loaded)
    run = runs[index]
    return {
        "round": index + 1,
        "other_load_cores": load,
        "publish_msgs_per_s": run["publish"]["msgs_per_s"],
        "consume_msgs_per_s": run["consume"]["msgs_per_s"],
        "end_to_end_msgs_per_s": run["end_to_end"]["msgs_per_s"],
    }


def print_table(report: dict[str, Any]) -> None:
    print()
    print(
        f"N={report['n']}  lanes={report['lanes']}  prefetch={report['prefetch']}  "
        f"rounds={report['rounds']}  broker RabbitMQ {report['broker_version']}  "
        "(msgs/s, median over rounds; cpu = CPU µs per message; "
        "other load = cores busy with neither this benchmark nor the broker)"
    )
    header = (
        f"{'scenario':<14}{'library':<9}{'publish/s':>11}{'consume/s':>11}{'end-to-end/s':>14}"
        f"{'pub cpu':>9}{'con cpu':>9}{'broker cpu':>12}{'other load':>12}"
    )
    print(header)
    print("-" * len(header))
    for scenario in report["scenarios"]:
        name = scenario["name"]
        for library, row in scenario["summary"].items():
            if library == "leveret_over_aiormq":
                print(
                    f"{name:<14}{'ratio':<9}{fmt_ratio(row['publish_msgs_per_s']):>11}"
                    f"{fmt_ratio(row['consume_msgs_per_s']):>11}"
                    f"{fmt_ratio(row['end_to_end_msgs_per_s']):>14}"
                )
                continue
            print(
                f"{name:<14}{library:<9}{fmt(row['publish_msgs_per_s']):>11}"
                f"{fmt(row['consume_msgs_per_s']):>11}{fmt(row['end_to_end_msgs_per_s']):>14}"
                f"{fmt(row['publish_client_cpu_us_per_msg'], 1):>9}"
                f"{fmt(row['consume_client_cpu_us_per_msg'], 1):>9}"
                f"{fmt(row['broker_cpu_us_per_msg'], 1):>12}"
                f"{fmt(row['other_load_cores'], 2):>12}"
            )
    if report["rounds"] > 1:
        print("\nquietest round of each (least other load; the least noisy numbers):")
        for scenario in report["scenarios"]:
            for library, row in scenario["summary"].items():
                quiet = row.get("quietest_round")
                if quiet is None:
                    continue
                print(
                    f"  {scenario['name']:<14}{library:<9}round {quiet['round']} "
                    f"(other load {quiet['other_load_cores']:.2f} cores): "
                    f"publish {fmt(quiet['publish_msgs_per_s'])}/s, "
                    f"consume {fmt(quiet['consume_msgs_per_s'])}/s, "
                    f"end-to-end {fmt(quiet['end_to_end_msgs_per_s'])}/s"
                )
    print()


# -- main ---------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    broker_pid = locate_broker(args.url)
    libraries = [args.only] if args.only else list(LIBRARIES)
    scenarios = [args.scenario] if args.scenario else list(SCENARIOS)
    runners: dict[str, Callable[..., Awaitable[dict[str, Any]]]] = {
        "same-process": same_process,
        "two-process": two_process,
    }
    report: dict[str, Any] = {
        "started": utc_now(),
        "machine": machine_info(("leveret", "aiormq", "pamqp")),
        "broker_version": None,
        "url": args.url.split("@")[-1],  # no credentials in the results
        "n": args.n,
        "lanes": args.lanes,
        "prefetch": args.prefetch,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "body": BODY.decode(),
        "load_at_start": loadavg(),
        "broker_pid_found": broker_pid is not None,
        "scenarios": [],
    }
    for scenario in scenarios:
        entry: dict[str, Any] = {
            "name": scenario,
            "libraries": {library: [] for library in libraries},
        }
        report["scenarios"].append(entry)
        # Libraries alternate within each round, so slow drifts in the machine's
        # load hit both alike.
        for round_no in range(1, args.rounds + 1):
            for library in libraries:
                print(f"[{scenario}] round {round_no}: {library} ...", flush=True, end=" ")
                result = await runners[scenario](
                    library, args.url, args.n, args.lanes, args.prefetch, args.warmup
                )
                report["broker_version"] = result.pop("broker_version")
                entry["libraries"][library].append(result)
                print(
                    f"publish {fmt(result['publish']['msgs_per_s'])}/s, "
                    f"consume {fmt(result['consume']['msgs_per_s'])}/s, "
                    f"end-to-end {fmt(result['end_to_end']['msgs_per_s'])}/s",
                    flush=True,
                )
    report["finished"] = utc_now()
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=100_000, help="messages per run")
    parser.add_argument("--only", choices=LIBRARIES, help="run one library only")
    parser.add_argument("--scenario", choices=SCENARIOS, help="run one scenario only")
    parser.add_argument("--lanes", type=int, default=256, help="concurrent publishers")
    parser.add_argument("--prefetch", type=int, default=1000, help="consumer prefetch")
    parser.add_argument("--warmup", type=int, default=2000, help="warm-up messages per run")
    parser.add_argument("--rounds", type=int, default=1, help="repeat each run (median shown)")
    parser.add_argument("--url", default=os.environ.get("AMQP_URL", DEFAULT_URL))
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile the same-process phases with cProfile instead of benchmarking "
        "(numbers are distorted by the profiler; nothing but .pstats files is saved)",
    )
    args = parser.parse_args(argv)
    if args.n < 1 or args.lanes < 1 or args.rounds < 1 or not 0 <= args.prefetch <= 65535:
        parser.error("--n, --lanes and --rounds must be >= 1; --prefetch within 0..65535")
    return args


async def run_profiles(args: argparse.Namespace) -> None:
    for library in [args.only] if args.only else list(LIBRARIES):
        await same_process(
            library,
            args.url,
            args.n,
            args.lanes,
            args.prefetch,
            args.warmup,
            profile=report_profile,
        )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.profile:
        asyncio.run(run_profiles(args))
        return
    report = asyncio.run(run(args))
    summarize(report)
    print_table(report)
    if not args.no_save:
        path = write_results("amqp", report)
        print(f"results: {path} (and {path.with_name('amqp-latest.json')})")


if __name__ == "__main__":
    main()
