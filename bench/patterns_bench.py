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

``--speed`` runs each leveret case of 1-3 twice: without the speed extra (the event
loop of asyncio, JSON on stock ``json``) and with it (uvloop, JSON on orjson: the
variant ending in ``, speed``); it needs ``pip install -e '.[speed]'``.

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
import dataclasses
import os
import queue as queue_module
import sys
import threading
from pathlib import Path
from typing import Any, Final

# python bench/patterns_bench.py: import the bench package from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._clients import DEFAULT_URL, Admin, broker_version
from bench._measure import Phase, loadavg, locate_broker, phase_numbers, us_per
from bench._processes import Children
from bench._report import Column, print_rows, rate_cells
from bench._results import (
    REFERENCE,
    finish,
    fmt,
    fmt_ratio,
    machine_info,
    median_at,
    quietest,
    ratio,
    read_reference,
    utc_now,
)
from bench._roles import (
    Case,
    Sync,
    make_calls,
    run_timeout,
    send_tasks,
    serve_calls,
    serve_tasks,
)

LIBRARIES: Final = ("leveret", "aio-pika")
SCENARIOS: Final = ("master", "rpc-sequential", "rpc-in-flight", "memory")
#: What the patterns are asked to reach; printed, never asserted.
TARGETS: Final = (
    "master >= 15,000 tasks/s and >= 10x aio-pika; RPC sequential p50 <= 0.5 ms; "
    "RPC 64 in flight >= 8,000 calls/s and >= 10x aio-pika; "
    "worker peak RSS after 1M tasks within 20% of after 10k"
)


# -- one run, seen from the main process --------------------------------------------------


async def run_case(case: Case, url: str, round_no: int) -> dict[str, Any]:
    """Start the two children, time the measured part, collect, clean up."""
    slug = "".join(c if c.isalnum() else "-" for c in case.variant)
    queue = f"patterns-bench.{case.library}.{case.scenario}.{slug}.{os.getpid()}.{round_no}"
    if case.is_master:
        server_role, driver_role, server, driver = "worker", "producer", serve_tasks, send_tasks
    else:
        server_role, driver_role, server, driver = "callee", "caller", serve_calls, make_calls
    sync = Sync.create(ready=3, go=2 if case.is_master else 3)
    # What the run declares: the task or method queue, and leveret's dead-letter
    # queue beside a worker's queue (it stays empty unless a task fails).
    queues = [queue]
    if case.library == "leveret" and case.is_master:
        from leveret import patterns

        # getattr: so the benchmark also runs on revisions from before dead-letter queues
        dead_letter_queue = getattr(patterns, "dead_letter_queue", None)
        if dead_letter_queue is not None:
            queues.append(dead_letter_queue(queue))
    admin = await Admin.open(url, "patterns_bench admin")
    left: dict[str, int] | None = None
    try:
        async with Children() as children:
            for role, main in ((server_role, server), (driver_role, driver)):
                children.start(role, main, (case, url, queue, sync), sync.barriers)
            load_before = loadavg()
            try:
                await asyncio.to_thread(sync.ready.wait, 180.0)
                await asyncio.to_thread(sync.go.wait, run_timeout(case))
                machine = Phase()
                await children.collect(2 if case.is_master else 1, run_timeout(case) + 60.0)
                machine.stop()
                sync.stop.set()
                if not case.is_master:
                    await children.collect(1, 60.0)
            except (threading.BrokenBarrierError, queue_module.Empty) as exc:
                await children.collect_after_failure()
                raise RuntimeError(f"{case.key} failed: {children.errors() or exc!r}") from None
            finally:
                sync.stop.set()
            if children.errors():
                raise RuntimeError(f"{case.key} failed: {children.errors()}")
        # the children have closed their connections and exited
        left = await admin.delete(queues)
        by_role = children.by_role
        return summarize_run(case, by_role[server_role], by_role[driver_role], machine) | {
            "left_in_queues": left,
            "load_before": load_before,
            "load_after": loadavg(),
        }
    finally:
        if left is None:  # the run failed: clean up what may be there
            with contextlib.suppress(Exception):
                await admin.delete(queues)
        await admin.close()


def summarize_run(
    case: Case, server: dict[str, Any], driver: dict[str, Any], machine: Phase
) -> dict[str, Any]:
    n = case.n
    client_cpu = server["cpu_seconds"] + driver["cpu_seconds"]
    result: dict[str, Any] = {
        "machine": phase_numbers(n, machine, client_cpu_seconds=client_cpu),
        "driver_cpu_us_per_msg": us_per(driver["cpu_seconds"], n),
        "server_cpu_us_per_msg": us_per(server["cpu_seconds"], n),
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
        if args.speed and scenario != "memory":
            entries = [
                variant
                for case in entries
                for variant in (
                    [
                        dataclasses.replace(case, speed=False),
                        dataclasses.replace(case, variant=f"{case.variant}, speed", speed=True),
                    ]
                    if case.library == "leveret" and case.prefetch is None
                    else [case]
                )
            ]
        if entries:
            cases[scenario] = entries
    return cases


async def run(args: argparse.Namespace) -> dict[str, Any]:
    broker_pid = locate_broker(args.url)
    version = await broker_version(args.url)
    from leveret.patterns import DEFAULT_PREFETCH

    report: dict[str, Any] = {
        "started": utc_now(),
        "machine": machine_info(("leveret", "aio-pika", "aiormq", "pamqp")),
        "broker_version": version,
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
    summary: dict[str, Any] = {
        "per_s": median_at(rounds, "per_s"),
        "producer_confirmed_per_s": median_at(rounds, "producer_confirmed_per_s"),
        "p50_ms": median_at(rounds, "latency_ms", "p50"),
        "p99_ms": median_at(rounds, "latency_ms", "p99"),
        "driver_cpu_us_per_msg": median_at(rounds, "driver_cpu_us_per_msg"),
        "server_cpu_us_per_msg": median_at(rounds, "server_cpu_us_per_msg"),
        "broker_cpu_us_per_msg": median_at(rounds, "machine", "broker_cpu_us_per_msg"),
        "other_load_cores": median_at(rounds, "machine", "other_load_cores"),
    }
    index = quietest(rounds, "machine", "other_load_cores")
    if index is not None:  # the round with the least other load: the least noisy numbers
        summary["quietest_round"] = {
            "round": index + 1,
            "other_load_cores": rounds[index]["machine"]["other_load_cores"],
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


COLUMNS: Final = (
    Column("scenario", 15, "<"),
    Column("library", 9, "<"),
    Column("variant", 28, "<"),
    Column("rate/s", 9),
    Column("producer/s", 11),
    Column("p50 ms", 8),
    Column("p99 ms", 8),
    Column("drv cpu", 9),
    Column("srv cpu", 9),
    Column("brk cpu", 9),
    Column("other", 7),
)


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
    rows: list[list[str]] = []
    for scenario in report["scenarios"]:
        if scenario["name"] == "memory":
            continue
        for case in scenario["cases"]:
            row = case["summary"]
            rows.append(
                [
                    scenario["name"],
                    case["library"],
                    case["variant"],
                    *rate_cells(row, "producer_confirmed_per_s"),
                    fmt(row["other_load_cores"], 2),
                ]
            )
        for pair in scenario["ratios"]:
            label = pair["leveret"].split(",")[0] + " / aio-pika"
            rows.append(
                [
                    scenario["name"],
                    "ratio",
                    label,
                    fmt_ratio(pair["per_s"]),
                    fmt_ratio(pair["producer_confirmed_per_s"]),
                ]
            )
    print_rows(COLUMNS, rows)
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
    print(f"targets (not asserted): {report['targets']}")
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
    parser.add_argument(
        "--speed",
        action="store_true",
        help="run each leveret case without the speed extra (asyncio, stock json) and "
        "again with it (uvloop, orjson: the variant ending in ', speed')",
    )
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
    finish("patterns", report, save=not args.no_save, show=print_table)


if __name__ == "__main__":
    main()
