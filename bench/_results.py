"""What every benchmark records beside its figures (the machine, leveret's commit,
package versions), the numbers' helpers (medians, ratios, formatting) and the
result files under ``bench/results``."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path
from typing import Any, Final

RESULTS_DIR: Final = Path(__file__).resolve().parent / "results"
#: The broker ceiling measured with amqplib (see that file); printed for comparison.
REFERENCE: Final = Path(__file__).resolve().parents[2] / "shared" / "reference" / "README.md"


def machine_info(packages: Iterable[str]) -> dict[str, Any]:
    """CPU, Python and the installed versions of ``packages``."""
    cpu_model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "leveret_commit": git_revision(),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "packages": versions,
    }


def git_revision() -> str | None:
    """The checkout's commit, with ``+dirty`` when tracked files have changes."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args],
            cwd=Path(__file__).resolve().parents[1],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit


def read_reference() -> str | None:
    """The broker-ceiling paragraph of the shared reference README, if it is there."""
    try:
        text = REFERENCE.read_text()
    except OSError:
        return None
    start = text.find("Seen on")
    return " ".join(text[start:].split()) if start >= 0 else None


# -- numbers ------------------------------------------------------------------------------


def median(values: Iterable[float | None]) -> float | None:
    """The median of the values that are not ``None`` (``None`` if there are none)."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def median_at(rounds: list[dict[str, Any]], *path: str) -> float | None:
    """The median over rounds of the value at ``path`` (nested keys) in each."""
    values: list[float | None] = []
    for entry in rounds:
        value: Any = entry
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        values.append(value)
    return median(values)


def quietest(rounds: list[dict[str, Any]], *path: str) -> int | None:
    """The index of the round with the least other load (the value at ``path``):
    the least noisy numbers."""
    loaded = []
    for index, entry in enumerate(rounds):
        value: Any = entry
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            loaded.append((value, index))
    return min(loaded)[1] if loaded else None


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


# -- files --------------------------------------------------------------------------------


def timestamp() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def write_results(prefix: str, report: dict[str, Any]) -> Path:
    """Write ``<prefix>-<timestamp>.json`` and ``<prefix>-latest.json`` under bench/results."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{prefix}-{timestamp()}.json"
    text = json.dumps(report, indent=2) + "\n"
    path.write_text(text)
    (RESULTS_DIR / f"{prefix}-latest.json").write_text(text)
    return path


def finish(
    prefix: str, report: dict[str, Any], *, save: bool, show: Callable[[dict[str, Any]], None]
) -> None:
    """Write the results if ``save`` (first, so a failing printout loses nothing), show
    them, and say where they went."""
    path = write_results(prefix, report) if save else None
    show(report)
    if path is not None:
        print(f"results: {path} (and {path.with_name(f'{prefix}-latest.json')})")


def read_latest(prefix: str) -> dict[str, Any] | None:
    """The last ``<prefix>-latest.json`` written, if any."""
    path = RESULTS_DIR / f"{prefix}-latest.json"
    if not path.exists():
        return None
    report: dict[str, Any] = json.loads(path.read_text())
    return report
