"""How results are shown: fixed-width text tables (every benchmark's printout), and
from the latest result files the summary table (``bench/results/summary.md``, the
one the README shows) and the chart (``bench/results/chart.png``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from bench._results import fmt, read_latest


@dataclasses.dataclass(frozen=True)
class Column:
    title: str
    width: int
    align: Literal["<", ">"] = ">"


def print_rows(columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> None:
    """Print a header, a rule and the rows (a row may have fewer cells than columns)."""

    def line(cells: Sequence[str]) -> str:
        return "".join(
            f"{cell:{column.align}{column.width}}"
            for column, cell in zip(columns, cells, strict=False)
        ).rstrip()

    header = line([column.title for column in columns])
    print(header)
    print("-" * len(header))
    for row in rows:
        print(line(row))


def rate_cells(summary: dict[str, Any], producer_key: str) -> list[str]:
    """The rate, producer rate, latency and CPU cells of a patterns or peers case."""
    return [
        fmt(summary["per_s"]),
        fmt(summary[producer_key]),
        fmt(summary["p50_ms"], 3),
        fmt(summary["p99_ms"], 3),
        fmt(summary["driver_cpu_us_per_msg"], 1),
        fmt(summary["server_cpu_us_per_msg"], 1),
        fmt(summary["broker_cpu_us_per_msg"], 1),
    ]


# -- leveret against aiormq / aio-pika --------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pair:
    """One scenario: leveret's figure beside the other library's."""

    scenario: str
    unit: str
    leveret: float
    other: str
    theirs: float
    note: str


def pairs() -> list[Pair]:
    """leveret against aiormq and aio-pika, from the latest amqp and patterns results."""
    found: list[Pair] = []
    amqp = read_latest("amqp")
    if amqp is not None:
        for scenario in amqp["scenarios"]:
            summary = scenario["summary"]
            if "leveret" not in summary or "aiormq" not in summary:
                continue
            found.append(
                Pair(
                    f"AMQP {scenario['name']} publish+consume",
                    "msgs/s",
                    summary["leveret"]["end_to_end_msgs_per_s"],
                    "aiormq",
                    summary["aiormq"]["end_to_end_msgs_per_s"],
                    f"N={amqp['n']:,}, confirms + acks",
                )
            )
    patterns = read_latest("patterns")
    if patterns is not None:
        for scenario in patterns["scenarios"]:
            by_library: dict[str, list[dict[str, Any]]] = {}
            for case in scenario.get("cases", []):
                by_library.setdefault(case["library"], []).append(case)
            unit = "tasks/s" if scenario["name"] == "master" else "calls/s"
            for ours, theirs in _matched(by_library):
                found.append(
                    Pair(
                        f"{scenario['name']} ({ours['variant']})",
                        unit,
                        ours["summary"]["per_s"],
                        f"aio-pika ({theirs['variant']})",
                        theirs["summary"]["per_s"],
                        latency(ours["summary"]),
                    )
                )
    return found


def _matched(
    by_library: dict[str, list[dict[str, Any]]],
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """leveret cases matched with the aio-pika case of the same queue shape."""
    theirs = by_library.get("aio-pika", [])
    matched = []
    for ours in by_library.get("leveret", []):
        if ours["options"].get("prefetch") is not None:
            continue  # the prefetch sweep has no aio-pika counterpart
        durable = ours["options"].get("durable")
        match = [case for case in theirs if case["options"].get("durable") == durable]
        if match:
            matched.append((ours, match[0]))
    return matched


def latency(summary: dict[str, Any]) -> str:
    if summary.get("p50_ms") is None:
        return ""
    return f"p50 {summary['p50_ms']:.2f} ms, p99 {summary['p99_ms']:.2f} ms"


def pairs_table(found: Sequence[Pair]) -> str:
    lines = [
        "| scenario | leveret | compared with | ratio | latency (leveret) |",
        "|---|---:|---|---:|---|",
    ]
    for pair in found:
        ratio = f"{pair.leveret / pair.theirs:.1f}x" if pair.theirs else ""
        lines.append(
            f"| {pair.scenario} | {pair.leveret:,.0f} {pair.unit} | {pair.other}: "
            f"{pair.theirs:,.0f} | {ratio} | {pair.note} |"
        )
    return "\n".join(lines) + "\n"


def _draw_pairs(axis: Any, found: Sequence[Pair]) -> None:
    labels = [f"{pair.scenario}\n[{pair.unit}]" for pair in found]
    positions = range(len(found))
    ours = [pair.leveret for pair in found]
    theirs = [pair.theirs for pair in found]
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


# -- the peers ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PeerRow:
    """One library in one scenario of the latest peers run (medians over rounds)."""

    scenario: str
    name: str
    summary: dict[str, Any]

    @property
    def failed(self) -> str | None:
        errors: list[str] = self.summary["errors"]
        return None if self.summary["completed_rounds"] else errors[0].splitlines()[0]

    def cells(self) -> list[str]:
        """The row as text cells, for the terminal."""
        if self.failed:
            return [self.scenario, self.name, f"failed: {self.failed}", "", "", "", ""]
        summary = self.summary
        return [
            self.scenario,
            self.name,
            fmt(summary["per_s"]),
            fmt(summary["p50_ms"], 2),
            fmt(summary["driver_cpu_us_per_msg"], 1),
            fmt(summary["server_cpu_us_per_msg"], 1),
            fmt(summary["broker_cpu_us_per_msg"], 1),
        ]

    def cpu(self, key: str) -> float:
        value: float | None = self.summary.get(f"{key}_cpu_us_per_msg")
        return value or 0.0


def peer_rows() -> tuple[dict[str, Any] | None, list[PeerRow]]:
    """The latest peers report and its rows."""
    report = read_latest("peers")
    if report is None:
        return None, []
    return report, [
        PeerRow(case["scenario"], f"{case['library']} ({case['variant']})", case["summary"])
        for case in report["cases"]
    ]


def peers_table(report: dict[str, Any], rows: Sequence[PeerRow]) -> str:
    """The peers' tasks table, their RPC table and each one's settings, in Markdown."""
    lines = [
        f"Peers: {report['tasks']:,} tasks per library (after {report['warmup']:,} warm-up), "
        "one producer and one worker process, durable queue, persistent messages; "
        "CPU in µs per task (the worker's whole process tree).",
        "",
        "| library | tasks/s | producer sends/s | producer CPU | worker CPU | broker CPU "
        "| lost / doubled |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        if row.scenario != "tasks":
            continue
        summary = row.summary
        if row.failed:
            lines.append(f"| {row.name} | failed: {row.failed} | | | | | |")
            continue
        lines.append(
            f"| {row.name} | {fmt(summary['per_s'])} | {fmt(summary['producer_per_s'])} "
            f"| {fmt(summary['driver_cpu_us_per_msg'], 1)} "
            f"| {fmt(summary['server_cpu_us_per_msg'], 1)} "
            f"| {fmt(summary['broker_cpu_us_per_msg'], 1)} "
            f"| {fmt(summary.get('lost'))} / {fmt(summary.get('doubled'))} |"
        )
    by_name: dict[str, dict[str, PeerRow]] = {}
    for row in rows:
        if row.scenario != "tasks":
            by_name.setdefault(row.name, {})[row.scenario] = row
    lines += [
        "",
        f"RPC: {report['calls']:,} calls `multiply(x, y)` per library.",
        "",
        "| library | sequential calls/s | p50 ms | 64 in flight calls/s | p50 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for peer in report["peers"]:
        name = f"{peer['library']} ({peer['variant']})"
        if not peer["rpc"]:
            lines.append(f"| {name} | {peer['no_rpc']} | | | |")
            continue
        cells = []
        for scenario in ("rpc-sequential", "rpc-in-flight"):
            call = by_name.get(name, {}).get(scenario)
            if call is None:
                cells += [peer["no_rpc"] or "-", ""]
            elif call.failed:
                cells += [f"failed: {call.failed}", ""]
            else:
                cells += [fmt(call.summary["per_s"]), fmt(call.summary["p50_ms"], 2)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Settings (the library's default in brackets where it differs):", ""]
    lines += [f"- {p['library']} ({p['variant']}): {p['settings']}" for p in report["peers"]]
    return "\n".join(lines) + "\n"


def _draw_peers(rate_axis: Any, cpu_axis: Any, rows: Sequence[PeerRow]) -> None:
    shown = [row for row in rows if row.scenario == "tasks" and not row.failed]
    names = [row.name for row in shown]
    positions = list(range(len(shown)))
    colours = ["#2a7f62" if row.name.startswith("leveret") else "#b0b0b0" for row in shown]
    rates = [row.summary["per_s"] or 0 for row in shown]
    rate_axis.barh(positions, rates, 0.6, color=colours)
    for position, value in zip(positions, rates, strict=True):
        rate_axis.text(value, position, f"  {value:,.0f}", va="center", fontsize=8)
    rate_axis.set_yticks(positions, names, fontsize=8)
    rate_axis.invert_yaxis()
    rate_axis.margins(x=0.2)
    rate_axis.set_xlabel("tasks/s end to end, higher is better")
    rate_axis.set_title("peers: N tasks, one producer, one worker process", fontsize=10)
    left = [0.0] * len(shown)
    for key, label, colour in (
        ("driver", "producer", "#4c72b0"),
        ("server", "worker", "#dd8452"),
        ("broker", "broker", "#8c8c8c"),
    ):
        values = [row.cpu(key) for row in shown]
        cpu_axis.barh(positions, values, 0.6, left=left, label=label, color=colour)
        left = [a + b for a, b in zip(left, values, strict=True)]
    for position, total in zip(positions, left, strict=True):
        cpu_axis.text(total, position, f"  {total:,.0f}", va="center", fontsize=8)
    cpu_axis.set_yticks(positions, [""] * len(shown))
    cpu_axis.invert_yaxis()
    cpu_axis.margins(x=0.15)
    cpu_axis.set_xlabel("CPU µs per task, lower is better")
    cpu_axis.set_title("where the CPU goes", fontsize=10)
    cpu_axis.legend(loc="upper right", fontsize=8)


def chart(found: Sequence[Pair], peers: Sequence[PeerRow], path: Path) -> None:
    """Draw the chart: leveret against the other library per scenario, then the
    peers' rates and CPU per task (each part only if there are results for it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [row for row in peers if row.scenario == "tasks" and not row.failed]
    heights = []
    if found:
        heights.append(0.8 + 0.75 * len(found))
    if tasks:
        heights.append(1.2 + 0.45 * len(tasks))
    figure = plt.figure(figsize=(11, sum(heights)))
    grid = figure.add_gridspec(len(heights), 2, height_ratios=heights)
    if found:
        _draw_pairs(figure.add_subplot(grid[0, :]), found)
    if tasks:
        last = len(heights) - 1
        _draw_peers(figure.add_subplot(grid[last, 0]), figure.add_subplot(grid[last, 1]), tasks)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def shown_rows(found: Sequence[Pair]) -> list[list[str]]:
    """The summary's rows as text cells, for the terminal."""
    return [
        [
            pair.scenario,
            f"{pair.leveret:,.0f} {pair.unit}",
            f"{pair.other}: {fmt(pair.theirs)}",
            f"{pair.leveret / pair.theirs:.1f}x" if pair.theirs else "",
            pair.note,
        ]
        for pair in found
    ]


def summary(
    found: Sequence[Pair], peers_report: dict[str, Any] | None, peers: Sequence[PeerRow]
) -> str:
    """``bench/results/summary.md``: the tables the README shows."""
    parts = []
    if found:
        parts.append(pairs_table(found))
    if peers_report is not None and peers:
        parts.append(peers_table(peers_report, peers))
    return "\n".join(parts)
