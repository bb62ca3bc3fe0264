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


def chart(found: Sequence[Pair], path: Path) -> None:
    """Draw the chart: leveret against the other library, per scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(11, 0.8 + 0.75 * len(found)))
    _draw_pairs(axis, found)
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


def summary(found: Sequence[Pair]) -> str:
    """``bench/results/summary.md``: the tables the README shows."""
    return pairs_table(found)
