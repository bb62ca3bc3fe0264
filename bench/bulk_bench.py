"""Enqueue rate: ``Master.create_tasks`` (batches) against ``create_task`` one at a time.

One process, one connection, one confirming channel, N JSON tasks ``{"task_id": i}``
(persistent, ``mandatory``, as ``create_task`` sends them) into a queue nobody consumes
yet, so only enqueueing is timed: from the first publish to the last confirm. Modes:

- ``create_task``: ``--lanes`` coroutines (128), each awaiting its own ``create_task``;
- ``create_tasks``: ``create_tasks`` over the same tasks, ``--batch`` (default: all N)
  tasks per call, one call after another;
- ``amqplib``: the broker's ceiling for the same messages, ``bench/node/publish_ceiling.js``
  (amqplib on Node.js, everything in flight on one confirming channel); left out when
  Node is missing or with ``--no-node``.

Each mode runs on a non-durable and a durable queue, ``--rounds`` times, alternating;
the table shows medians: tasks/s, this process's CPU µs per task, the broker's, and
"other load" (cores busy with neither: if well above 0, the run is noise). The queue is
deleted after each run. Results go to ``bench/results/bulk-<timestamp>.json`` (and
``bulk-latest.json``). Nothing is asserted.

    python bench/bulk_bench.py [--tasks 50000] [--lanes 128] [--batch N] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

# python bench/bulk_bench.py: import the bench package from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._clients import DEFAULT_URL
from bench._measure import Phase, locate_broker, phase_numbers, run_lanes
from bench._node import node_ready, run_node
from bench._report import Column, print_rows
from bench._results import finish, fmt, machine_info, median_at, ratio, utc_now
from leveret import connect
from leveret.patterns import Master

MODES = ("create_task", "create_tasks")
REFERENCE = "amqplib"


async def one_run(url: str, mode: str, durable: bool, args: argparse.Namespace) -> dict[str, Any]:
    queue = f"bulk-bench.{mode}.{'durable' if durable else 'transient'}.{os.getpid()}"
    n = args.tasks
    async with await connect(url, name="bulk_bench") as connection:
        channel = await connection.channel()
        await channel.queue_declare(queue, durable=durable)
        master = Master(channel)
        try:
            # warm up: the same calls, on the same queue, then emptied
            await send(master, mode, queue, min(n, 2000), args)
            await channel.queue_delete(queue)
            await channel.queue_declare(queue, durable=durable)
            phase = Phase()
            await send(master, mode, queue, n, args)
            phase.stop()
            queued = (await channel.queue_declare(queue, passive=True)).message_count
        finally:
            await channel.queue_delete(queue)
    return phase_numbers(n, phase) | {"queued": queued}


def reference_run(url: str, durable: bool, args: argparse.Namespace) -> dict[str, Any]:
    """The same N messages published by amqplib (CPU: the Node process's, start-up too)."""
    queue = f"bulk-bench.{REFERENCE}.{'durable' if durable else 'transient'}.{os.getpid()}"
    kind = "durable" if durable else "transient"
    timeout = max(300, args.tasks / 100)
    run_node("publish_ceiling.js", url, queue, min(args.tasks, 2000), kind, timeout=timeout)
    phase = Phase()
    measured, cpu = run_node("publish_ceiling.js", url, queue, args.tasks, kind, timeout=timeout)
    phase.stop(phase.start + measured["seconds"])
    return phase_numbers(args.tasks, phase, client_cpu_seconds=cpu) | {"queued": measured["queued"]}


async def send(master: Master, mode: str, queue: str, n: int, args: argparse.Namespace) -> None:
    if mode == "create_task":
        await run_lanes(n, args.lanes, lambda i: master.create_task(queue, {"task_id": i}))
        return
    batch = args.batch or n
    for start in range(0, n, batch):
        await master.create_tasks(
            queue, [{"task_id": i} for i in range(start, min(start + batch, n))]
        )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    broker_pid = locate_broker(args.url)
    missing = "--no-node" if args.no_node else node_ready()
    if missing:
        print(f"amqplib reference left out: {missing}", flush=True)
    modes = MODES if missing else (*MODES, REFERENCE)
    runs: dict[str, list[dict[str, Any]]] = {}
    for round_no in range(1, args.rounds + 1):
        for durable in (False, True):
            for mode in modes:
                key = f"{mode}/{'durable' if durable else 'non-durable'}"
                if mode == REFERENCE:
                    result = await asyncio.to_thread(reference_run, args.url, durable, args)
                else:
                    result = await one_run(args.url, mode, durable, args)
                runs.setdefault(key, []).append(result)
                print(
                    f"[{key}] round {round_no} ... {fmt(result['msgs_per_s'])}/s, "
                    f"cpu {result['client_cpu_us_per_msg']} µs, "
                    f"other load {result.get('other_load_cores')}",
                    flush=True,
                )
    return {
        "started": utc_now(),
        "machine": machine_info(["orjson", "uvloop"]),
        "broker_pid_found": broker_pid is not None,
        "tasks": args.tasks,
        "lanes": args.lanes,
        "batch": args.batch or args.tasks,
        "rounds": args.rounds,
        "reference_left_out": missing,
        "runs": runs,
    }


def print_table(report: dict[str, Any]) -> None:
    print(
        f"\ntasks={report['tasks']}  lanes={report['lanes']}  batch={report['batch']}  "
        f"rounds={report['rounds']}  (medians; cpu = CPU µs per task)"
    )
    columns = [
        Column("queue", 13, "<"),
        Column("mode", 30, "<"),
        Column("tasks/s", 10),
        Column("cpu", 8),
        Column("broker", 8),
        Column("other", 7),
        Column("vs one at a time", 18),
    ]
    rows = []
    for queue in ("non-durable", "durable"):
        single = median_at(report["runs"][f"create_task/{queue}"], "msgs_per_s")
        for mode in (*MODES, REFERENCE):
            entries = report["runs"].get(f"{mode}/{queue}")
            if not entries:
                continue
            rate = median_at(entries, "msgs_per_s")
            shown = {
                "create_task": f"create_task, {report['lanes']} in flight",
                "create_tasks": f"create_tasks, {report['batch']} per call",
                REFERENCE: "amqplib (Node), all in flight",
            }[mode]
            rows.append(
                [
                    queue,
                    shown,
                    fmt(rate),
                    fmt(median_at(entries, "client_cpu_us_per_msg"), 1),
                    fmt(median_at(entries, "broker_cpu_us_per_msg"), 1),
                    fmt(median_at(entries, "other_load_cores"), 2),
                    f"{ratio(rate, single) or 0:.2f}x",
                ]
            )
    print_rows(columns, rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=50_000, help="tasks per run")
    parser.add_argument("--lanes", type=int, default=128, help="create_task calls in flight")
    parser.add_argument("--batch", type=int, default=0, help="tasks per create_tasks (0: all)")
    parser.add_argument("--rounds", type=int, default=3, help="repeat each run (median shown)")
    parser.add_argument("--no-node", action="store_true", help="leave the amqplib row out")
    parser.add_argument("--url", default=os.environ.get("AMQP_URL", DEFAULT_URL))
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results")
    args = parser.parse_args(argv)
    if min(args.tasks, args.lanes, args.rounds) < 1 or args.batch < 0:
        parser.error("--tasks, --lanes and --rounds must be >= 1, --batch >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = asyncio.run(run(args))
    finish("bulk", report, save=not args.no_save, show=print_table)


if __name__ == "__main__":
    main()
