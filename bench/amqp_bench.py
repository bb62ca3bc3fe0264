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
import os
import queue as queue_module
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

# python bench/amqp_bench.py: import the bench package from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._clients import BODY, DEFAULT_URL, open_amqp_client
from bench._measure import Phase, loadavg, locate_broker, phase_numbers
from bench._processes import Children, spawn
from bench._profiling import Profiler, profiling, report_profile
from bench._report import Column, print_rows
from bench._results import (
    finish,
    fmt,
    fmt_ratio,
    machine_info,
    median,
    quietest,
    ratio,
    utc_now,
)
from bench._roles import amqp_role, consume_timeout, warm_up

LIBRARIES: Final = ("leveret", "aiormq")
SCENARIOS: Final = ("same-process", "two-process")
PHASES: Final = ("publish", "consume", "end_to_end")


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
    client = await open_amqp_client(library, url, prefetch)
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


async def two_process(
    library: str, url: str, n: int, lanes: int, prefetch: int, warmup: int
) -> dict[str, Any]:
    client = await open_amqp_client(library, url, prefetch)
    queue = f"amqp-bench.{library}.procs.{os.getpid()}"
    barrier = spawn.Barrier(3)
    try:
        await client.declare_fresh(queue)
        async with Children() as children:
            for role in ("consumer", "publisher"):
                args = (role, library, url, queue, n, lanes, prefetch, warmup, barrier)
                children.start(role, amqp_role, args, (barrier,))
            load_before = loadavg()
            machine = Phase()
            try:
                await asyncio.to_thread(barrier.wait, 120.0)
                machine = Phase()  # from the go signal
                await children.collect(2, consume_timeout(n) + 120.0)
            except (threading.BrokenBarrierError, queue_module.Empty):
                await children.collect_after_failure()
            machine.stop()
            if children.errors() or len(children.by_role) < 2:
                raise RuntimeError(f"{library} two-process run failed: {children.errors()}")
        publisher, consumer = children.by_role["publisher"], children.by_role["consumer"]
        seconds = consumer["end"] - publisher["start"]
        left = await client.delete(queue)
        client_cpu_us = publisher["client_cpu_us_per_msg"] + consumer["client_cpu_us_per_msg"]
        return {
            "library": library,
            "broker_version": client.broker_version,
            "publish": _strip_times(publisher),
            "consume": _strip_times(consumer),
            "end_to_end": {
                **phase_numbers(n, machine, client_cpu_seconds=client_cpu_us * n / 1e6),
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
                for key in (f"{phase}_msgs_per_s" for phase in PHASES)
            }
        scenario["summary"] = summary


def quietest_round(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The round with the least other load on the machine: the least noisy numbers."""
    index = quietest(runs, "end_to_end", "other_load_cores")
    if index is None:
        return None
    run = runs[index]
    return {
        "round": index + 1,
        "other_load_cores": run["end_to_end"]["other_load_cores"],
        "publish_msgs_per_s": run["publish"]["msgs_per_s"],
        "consume_msgs_per_s": run["consume"]["msgs_per_s"],
        "end_to_end_msgs_per_s": run["end_to_end"]["msgs_per_s"],
    }


COLUMNS: Final = (
    Column("scenario", 14, "<"),
    Column("library", 9, "<"),
    Column("publish/s", 11),
    Column("consume/s", 11),
    Column("end-to-end/s", 14),
    Column("pub cpu", 9),
    Column("con cpu", 9),
    Column("broker cpu", 12),
    Column("other load", 12),
)


def print_table(report: dict[str, Any]) -> None:
    print()
    print(
        f"N={report['n']}  lanes={report['lanes']}  prefetch={report['prefetch']}  "
        f"rounds={report['rounds']}  broker RabbitMQ {report['broker_version']}  "
        "(msgs/s, median over rounds; cpu = CPU µs per message; "
        "other load = cores busy with neither this benchmark nor the broker)"
    )
    rows: list[list[str]] = []
    for scenario in report["scenarios"]:
        name = scenario["name"]
        for library, row in scenario["summary"].items():
            if library == "leveret_over_aiormq":
                rows.append(
                    [name, "ratio"] + [fmt_ratio(row[f"{phase}_msgs_per_s"]) for phase in PHASES]
                )
                continue
            rows.append(
                [name, library]
                + [fmt(row[f"{phase}_msgs_per_s"]) for phase in PHASES]
                + [
                    fmt(row["publish_client_cpu_us_per_msg"], 1),
                    fmt(row["consume_client_cpu_us_per_msg"], 1),
                    fmt(row["broker_cpu_us_per_msg"], 1),
                    fmt(row["other_load_cores"], 2),
                ]
            )
    print_rows(COLUMNS, rows)
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
    finish("amqp", report, save=not args.no_save, show=print_table)


if __name__ == "__main__":
    main()
