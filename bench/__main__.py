"""``python -m bench``: run the benchmarks, then chart and tabulate them.

Runs ``bench/amqp_bench.py`` (leveret.amqp vs aiormq), ``bench/patterns_bench.py``
(leveret.patterns vs aio-pika) and ``bench/peers_bench.py`` (leveret and aio-pika
beside Celery, Dramatiq, FastStream and taskiq) one after the other with a progress
display, then reads their ``*-latest.json`` and writes ``bench/results/chart.png``
and ``bench/results/summary.md`` (the tables the README shows). ``--chart-only``
redraws from the last results; ``--quick`` runs everything small, to check that
it all works (its figures mean little). Needs the ``bench`` extra.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench._report import chart, pairs, peer_rows, shown_rows, summary
from bench._results import RESULTS_DIR

HERE = Path(__file__).resolve().parent

#: Small runs of each benchmark, to see that everything works.
QUICK = {
    "amqp_bench.py": ["--n", "5000", "--warmup", "500"],
    "patterns_bench.py": [
        *("--tasks", "3000", "--calls", "1000", "--warmup", "200"),
        *("--memory-tasks", "20000", "--memory-checkpoint", "2000"),
    ],
    "peers_bench.py": ["--quick"],
}


def _run(script: str, args: list[str], console: Console) -> None:
    command = [sys.executable, str(HERE / script), *args]
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console
    ) as progress:
        progress.add_task(f"{script} {' '.join(args)}".strip(), total=None)
        result = subprocess.run(command, capture_output=True, text=True)
    # as printed: no markup (the settings say [default]), no wrapping of the tables
    console.out(result.stdout, highlight=False)
    if result.returncode != 0:
        console.out(result.stderr, style="red", highlight=False)
        raise SystemExit(f"{script} failed ({result.returncode})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--chart-only", action="store_true", help="redraw from the last results")
    parser.add_argument("--rounds", default="1", help="rounds per benchmark run")
    parser.add_argument("--quick", action="store_true", help="small runs: check that it all works")
    parser.add_argument("--no-peers", action="store_true", help="skip the peers benchmark")
    parser.add_argument(
        "--peer-tasks", help="tasks per peer run (peers_bench.py --tasks; default its own)"
    )
    args = parser.parse_args()
    console = Console()
    if not args.chart_only:
        started = time.monotonic()
        scripts = ["amqp_bench.py", "patterns_bench.py"]
        if not args.no_peers:
            scripts.append("peers_bench.py")
        for script in scripts:
            options = ["--rounds", args.rounds]
            if args.quick:
                options += QUICK[script]
            if script == "peers_bench.py" and args.peer_tasks:
                options += ["--tasks", args.peer_tasks]
            _run(script, options, console)
        console.print(f"benchmarks took {time.monotonic() - started:.0f} s")
    found = pairs()
    peers_report, peers = peer_rows()
    if not found and not peers:
        raise SystemExit("no results under bench/results: run without --chart-only")
    chart(found, peers, RESULTS_DIR / "chart.png")
    (RESULTS_DIR / "summary.md").write_text(summary(found, peers_report, peers))
    if found:
        shown = Table(title="leveret vs aiormq / aio-pika (bench/results/summary.md)")
        for column in ("scenario", "leveret", "compared with", "ratio", "latency"):
            shown.add_column(column)
        for row in shown_rows(found):
            shown.add_row(*row)
        console.print(shown)
    if peers:
        shown = Table(title="peers (bench/results/summary.md)")
        for column in (
            "scenario",
            "library",
            "per s",
            "p50 ms",
            "CPU µs: producer",
            "worker",
            "broker",
        ):
            shown.add_column(column)
        for peer in peers:
            shown.add_row(*peer.cells())
        console.print(shown)
    console.print(f"chart: {RESULTS_DIR / 'chart.png'}")


if __name__ == "__main__":
    main()
