"""``python -m bench``: run both benchmarks, then chart and tabulate them.

Runs ``bench/amqp_bench.py`` (leveret.amqp vs aiormq) and
``bench/patterns_bench.py`` (leveret.patterns vs aio-pika) one after the other
with a progress display, then reads their ``*-latest.json`` and writes
``bench/results/chart.png`` (leveret vs the other library, per scenario) and
``bench/results/summary.md`` (the table the README shows). ``--chart-only``
redraws from the last results. Needs the ``bench`` extra (matplotlib, rich).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def _run(script: str, args: list[str], console: Console) -> None:
    command = [sys.executable, str(HERE / script), *args]
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console
    ) as progress:
        progress.add_task(f"{script} {' '.join(args)}".strip(), total=None)
        result = subprocess.run(command, capture_output=True, text=True)
    console.print(result.stdout)
    if result.returncode != 0:
        console.print(result.stderr, style="red")
        raise SystemExit(f"{script} failed ({result.returncode})")


def rows() -> list[tuple[str, str, float, str, float, str]]:
    """(scenario, unit, leveret, other library, its figure, note) from the latest results."""
    found: list[tuple[str, str, float, str, float, str]] = []
    amqp_file = RESULTS / "amqp-latest.json"
    if amqp_file.exists():
        amqp = json.loads(amqp_file.read_text())
        for scenario in amqp["scenarios"]:
            summary = scenario["summary"]
            found.append(
                (
                    f"AMQP {scenario['name']} publish+consume",
                    "msgs/s",
                    summary["leveret"]["end_to_end_msgs_per_s"],
                    "aiormq",
                    summary["aiormq"]["end_to_end_msgs_per_s"],
                    f"N={amqp['n']:,}, confirms + acks",
                )
            )
    patterns_file = RESULTS / "patterns-latest.json"
    if patterns_file.exists():
        patterns = json.loads(patterns_file.read_text())
        for scenario in patterns["scenarios"]:
            cases = scenario.get("cases", [])
            by_library: dict[str, list[dict[str, Any]]] = {}
            for case in cases:
                by_library.setdefault(case["library"], []).append(case)
            for ours, theirs in _pairs(by_library):
                unit = "tasks/s" if scenario["name"] == "master" else "calls/s"
                found.append(
                    (
                        f"{scenario['name']} ({ours['variant']})",
                        unit,
                        ours["summary"]["per_s"],
                        f"aio-pika ({theirs['variant']})",
                        theirs["summary"]["per_s"],
                        _latency(ours["summary"]),
                    )
                )
    return found


def _pairs(by_library: dict[str, list[dict[str, Any]]]) -> list[tuple[dict[str, Any], ...]]:
    """leveret cases matched with the aio-pika case of the same queue shape."""
    theirs = by_library.get("aio-pika", [])
    pairs = []
    for ours in by_library.get("leveret", []):
        if ours["options"].get("prefetch") is not None:
            continue  # the prefetch sweep has no aio-pika counterpart
        durable = ours["options"].get("durable")
        match = [case for case in theirs if case["options"].get("durable") == durable]
        if match:
            pairs.append((ours, match[0]))
    return pairs


def _latency(summary: dict[str, Any]) -> str:
    if summary.get("p50_ms") is None:
        return ""
    return f"p50 {summary['p50_ms']:.2f} ms, p99 {summary['p99_ms']:.2f} ms"


def chart(found: list[tuple[str, str, float, str, float, str]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{name}\n[{unit}]" for name, unit, *_ in found]
    ours = [row[2] for row in found]
    theirs = [row[4] for row in found]
    figure, axis = plt.subplots(figsize=(11, 0.8 + 0.75 * len(found)))
    positions = range(len(found))
    axis.barh([p + 0.2 for p in positions], ours, 0.4, label="leveret", color="#2a7f62")
    axis.barh([p - 0.2 for p in positions], theirs, 0.4, label="aiormq / aio-pika", color="#b0b0b0")
    for position, value, other in zip(positions, ours, theirs, strict=True):
        ratio = f"  {value:,.0f}  ({value / other:.1f}x)" if other else f"  {value:,.0f}"
        axis.text(value, position + 0.2, ratio, va="center", fontsize=8)
    axis.set_yticks(list(positions), labels, fontsize=8)
    axis.invert_yaxis()
    axis.set_xlabel("per second, higher is better (same broker, same run)")
    axis.set_title("leveret vs aiormq / aio-pika on one 2-core machine")
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def table(found: list[tuple[str, str, float, str, float, str]]) -> str:
    lines = [
        "| scenario | leveret | compared with | ratio | latency (leveret) |",
        "|---|---:|---|---:|---|",
    ]
    for name, unit, ours, other, theirs, note in found:
        ratio = f"{ours / theirs:.1f}x" if theirs else ""
        lines.append(f"| {name} | {ours:,.0f} {unit} | {other}: {theirs:,.0f} | {ratio} | {note} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--chart-only", action="store_true", help="redraw from the last results")
    parser.add_argument("--rounds", default="1", help="rounds per benchmark run")
    args = parser.parse_args()
    console = Console()
    if not args.chart_only:
        started = time.monotonic()
        _run("amqp_bench.py", ["--rounds", args.rounds], console)
        _run("patterns_bench.py", ["--rounds", args.rounds], console)
        console.print(f"benchmarks took {time.monotonic() - started:.0f} s")
    found = rows()
    if not found:
        raise SystemExit("no results under bench/results: run without --chart-only")
    chart(found, RESULTS / "chart.png")
    (RESULTS / "summary.md").write_text(table(found))
    shown = Table(title="leveret vs aiormq / aio-pika (bench/results/summary.md)")
    for column in ("scenario", "leveret", "compared with", "ratio", "latency"):
        shown.add_column(column)
    for name, unit, ours, other, theirs, note in found:
        shown.add_row(
            name,
            f"{ours:,.0f} {unit}",
            f"{other}: {theirs:,.0f}",
            f"{ours / theirs:.1f}x" if theirs else "",
            note,
        )
    console.print(shown)
    console.print(f"chart: {RESULTS / 'chart.png'}")


if __name__ == "__main__":
    main()
