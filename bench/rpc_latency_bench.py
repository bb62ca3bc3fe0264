"""RPC latency: leveret's patterns against amqplib (Node.js), side by side in one run.

Each round runs, one after another on the local broker, each leveret variant right after
its own run of the reference:

- **amqplib**: ``bench/node/rpc_latency.js``, a callee and a caller in one Node process
  on two connections, direct reply-to, no publisher confirms (amqplib's plain channel);
- **leveret**: the ``rpc-sequential`` and ``rpc-in-flight`` cases of
  ``patterns_bench.py`` (a callee process serving ``RPC.register``, a caller process
  awaiting ``RPC.call``), on a channel without publisher confirms, with and without the
  speed extra, and on a default (confirming) channel with it.

All do ``multiply(x, y)``: ``--warmup`` calls, ``--calls`` one at a time (each call's
latency), then ``--calls`` with ``--in-flight`` at once (calls/s). The table shows the
medians over ``--rounds``, and for each leveret variant the median of its p50 over the
p50 of the amqplib run just before it (the machine's pace drifts over minutes). Node and
amqplib are needed for the reference (``npm ci`` in ``bench/node`` is run when amqplib
is missing; ``--no-node`` leaves it out). Results go to
``bench/results/rpc-latency-<timestamp>.json`` (and ``rpc-latency-latest.json``).
Nothing is asserted.

    python bench/rpc_latency_bench.py [--rounds 5] [--calls 5000] [--in-flight 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Final

# python bench/rpc_latency_bench.py: import the bench package from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._clients import DEFAULT_URL, Admin, LeveretPatterns
from bench._measure import clock, latency_summary, locate_broker, run_lanes
from bench._node import node_ready, run_node
from bench._report import Column, print_rows
from bench._results import finish, fmt, machine_info, median, utc_now
from bench._roles import Case, multiply
from bench.patterns_bench import run_case

REFERENCE: Final = "amqplib (Node), no confirms"
#: leveret's cases: (name, channel with publisher confirms, speed extra); ``None``:
#: callee and caller in one process, as the reference runs them
LEVERET: Final = (
    ("leveret, no confirms, speed", False, True),
    ("leveret, one process, no confirms, speed", None, True),
    ("leveret, no confirms", False, False),
    ("leveret, default channel, speed", True, True),
)


def run_reference(url: str, args: argparse.Namespace, round_no: int) -> dict[str, Any]:
    queue = f"rpc-latency-bench.amqplib.{os.getpid()}.{round_no}"
    measured, _ = run_node(
        "rpc_latency.js",
        url,
        queue,
        args.calls,
        args.in_flight,
        args.warmup,
        timeout=max(300, args.calls / 50),
    )
    return {
        "latency_ms": latency_summary(measured["latencies_ns"]),
        "in_flight_per_s": round(measured["in_flight_calls_per_s"]),
    }


async def one_process(url: str, queue: str, args: argparse.Namespace) -> dict[str, Any]:
    """The reference's shape in leveret (run in a child, ``--one-process``): a callee
    and a caller in this process, each on its own connection, no confirms."""
    callee = await LeveretPatterns.open(url, "rpc_latency_bench callee", False, True)
    caller = await LeveretPatterns.open(url, "rpc_latency_bench caller", False, True)
    try:
        await callee.start_callee(queue, multiply, None)
        call = await caller.rpc_caller()
        latencies: list[int] = []
        for i in range(args.warmup):
            await call(queue, {"x": i, "y": 2})
        for i in range(args.calls):
            started = time.perf_counter_ns()
            result = await call(queue, {"x": i, "y": 2})
            latencies.append(time.perf_counter_ns() - started)
            if result != i * 2:
                raise RuntimeError(f"call {i} returned {result!r}")
        started_s = clock()
        await run_lanes(args.calls, args.in_flight, lambda i: call(queue, {"x": i, "y": 2}))
        seconds = clock() - started_s
    finally:
        await caller.close()
        await callee.close()
    return {
        "latency_ms": latency_summary(latencies),
        "in_flight_per_s": round(args.calls / seconds),
    }


async def run_one_process(url: str, args: argparse.Namespace, round_no: int) -> dict[str, Any]:
    queue = f"rpc-latency-bench.leveret-one-process.{os.getpid()}.{round_no}"
    command = [sys.executable, __file__, "--one-process", queue, "--url", url]
    command += ["--calls", str(args.calls), "--in-flight", str(args.in_flight)]
    command += ["--warmup", str(args.warmup)]
    admin = await Admin.open(url, "rpc_latency_bench admin")
    try:
        child = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
        output, _ = await asyncio.wait_for(child.communicate(), max(300, args.calls / 50))
        if child.returncode:
            raise RuntimeError(f"the one-process leveret run failed ({child.returncode})")
    finally:
        await admin.delete([queue])
        await admin.close()
    result: dict[str, Any] = json.loads(output.decode().strip().splitlines()[-1])
    return result


async def run_leveret(
    url: str, args: argparse.Namespace, confirms: bool | None, speed: bool, round_no: int
) -> dict[str, Any]:
    if confirms is None:
        return await run_one_process(url, args, round_no)
    variant = f"{'confirms' if confirms else 'no-confirms'}{', speed' if speed else ''}"
    results = []
    for scenario, lanes in (("rpc-sequential", 1), ("rpc-in-flight", args.in_flight)):
        case = Case(
            scenario,
            "leveret",
            variant,
            args.calls,
            args.warmup,
            lanes,
            confirms=confirms,
            speed=speed,
        )
        results.append(await run_case(case, url, round_no))
    sequential, in_flight = results
    return {
        "latency_ms": sequential["latency_ms"],
        "sequential_per_s": sequential["per_s"],
        "in_flight_per_s": in_flight["per_s"],
        "in_flight_latency_ms": in_flight["latency_ms"],
        "caller_cpu_us_per_call": sequential["driver_cpu_us_per_msg"],
        "callee_cpu_us_per_call": sequential["server_cpu_us_per_msg"],
        "broker_cpu_us_per_call": sequential["machine"].get("broker_cpu_us_per_msg"),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    locate_broker(args.url)  # so the leveret runs count the broker's CPU
    missing = "--no-node" if args.no_node else node_ready()
    if missing:
        print(f"amqplib reference left out: {missing}", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {}
    for round_no in range(1, args.rounds + 1):
        for name, confirms, speed in LEVERET:
            # amqplib right before each leveret run: the machine's pace drifts over
            # minutes, so each p50 is compared with the reference's of the moment.
            reference = None
            if missing is None:
                reference = await asyncio.to_thread(run_reference, args.url, args, round_no)
                runs.setdefault(REFERENCE, []).append(reference)
                show(REFERENCE, round_no, reference)
            result = await run_leveret(args.url, args, confirms, speed, round_no)
            if reference is not None:
                result["vs_amqplib"] = round(
                    result["latency_ms"]["p50"] / reference["latency_ms"]["p50"], 3
                )
            runs.setdefault(name, []).append(result)
            show(name, round_no, result)
    return {
        "started": utc_now(),
        "machine": machine_info(["orjson", "uvloop"]),
        "calls": args.calls,
        "in_flight": args.in_flight,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "reference_left_out": missing,
        "runs": runs,
    }


def show(name: str, round_no: int, result: dict[str, Any]) -> None:
    latency = result["latency_ms"]
    print(
        f"[{name}] round {round_no} ... p50 {latency['p50']:.3f} ms, p99 {latency['p99']:.3f} "
        f"ms, {fmt(result['in_flight_per_s'])} calls/s in flight",
        flush=True,
    )


def print_table(report: dict[str, Any]) -> None:
    print(
        f"\ncalls={report['calls']}  in flight={report['in_flight']}  "
        f"warmup={report['warmup']}  rounds={report['rounds']}  (medians; p50 and p99 of one "
        "call at a time; vs amqplib: each p50 over amqplib's measured just before it; cpu = "
        "µs per sequential call)"
    )
    runs = report["runs"]
    columns = [
        Column("client", 42, "<"),
        Column("p50 ms", 8),
        Column("p99 ms", 8),
        Column("vs amqplib", 11),
        Column("in flight/s", 12),
        Column("caller", 8),
        Column("callee", 8),
        Column("broker", 8),
    ]
    rows = []
    for name, entries in runs.items():
        p50 = median(r["latency_ms"]["p50"] for r in entries)
        vs = median(r.get("vs_amqplib") for r in entries)
        rows.append(
            [
                name,
                fmt(p50, 3),
                fmt(median(r["latency_ms"]["p99"] for r in entries), 3),
                "1.00x" if name == REFERENCE else f"{vs:.2f}x" if vs is not None else "-",
                fmt(median(r["in_flight_per_s"] for r in entries)),
                *(
                    fmt(median(r.get(f"{side}_cpu_us_per_call") for r in entries), 1)
                    if name != REFERENCE
                    else "-"
                    for side in ("caller", "callee", "broker")
                ),
            ]
        )
    print_rows(columns, rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=5000, help="calls per run and phase")
    parser.add_argument("--in-flight", type=int, default=64, help="calls at once")
    parser.add_argument("--warmup", type=int, default=500, help="warm-up calls per run")
    parser.add_argument("--no-node", action="store_true", help="leave the amqplib row out")
    parser.add_argument("--url", default=os.environ.get("AMQP_URL", DEFAULT_URL))
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results")
    parser.add_argument("--one-process", metavar="QUEUE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.rounds, args.calls, args.in_flight) < 1 or args.warmup < 0:
        parser.error("--rounds, --calls and --in-flight must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.one_process:  # the child of run_one_process: on uvloop, as the speed extra runs
        import uvloop

        print(json.dumps(uvloop.run(one_process(args.url, args.one_process, args))))
        return
    report = asyncio.run(run(args))
    finish("rpc-latency", report, save=not args.no_save, show=print_table)


if __name__ == "__main__":
    main()
