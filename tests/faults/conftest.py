"""Fixtures of the fault-injection suite: the figures report, task queues, a TCP proxy.

Every fault test fills a ``figures`` dict (sent, processed, duplicates, lost, ...).
At the end of the session the rows are written as JSON lines to
``$LEVERET_FAULT_REPORT`` (default ``/tmp/leveret-fault-report.jsonl``) and
printed as a short table.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from leveret.patterns import dead_letter_queue, delay_queues, parked_queue, revoked_queue
from tests.conftest import AMQP_URL
from tests.faults.support import delete_queues
from tests.support.proxy import TCPProxy

REPORT_PATH = os.environ.get("LEVERET_FAULT_REPORT", "/tmp/leveret-fault-report.jsonl")
_ROWS = pytest.StashKey[list[dict[str, Any]]]()
_OUTCOME = pytest.StashKey[str]()

#: Columns of the printed table (every figure is in the JSON lines).
_COLUMNS = ("sent", "confirmed", "processed", "duplicates", "lost", "seconds", "outcome")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call" or report.failed:
        item.stash[_OUTCOME] = report.outcome
    return report


@pytest.fixture(scope="session")
def fault_report(request: pytest.FixtureRequest) -> Iterator[list[dict[str, Any]]]:
    """The rows of the report; written to ``REPORT_PATH`` when the session ends."""
    rows = request.config.stash.setdefault(_ROWS, [])
    yield rows
    if rows:
        with open(REPORT_PATH, "w") as out:
            for row in rows:
                out.write(json.dumps(row, sort_keys=True) + "\n")


@pytest.fixture
def figures(
    fault_report: list[dict[str, Any]], request: pytest.FixtureRequest
) -> Iterator[dict[str, Any]]:
    """A dict the test fills with its figures; it goes to the report even if the test fails."""
    row: dict[str, Any] = {"test": request.node.name}
    started = time.monotonic()
    yield row
    row["seconds"] = round(time.monotonic() - started, 1)
    row["outcome"] = request.node.stash.get(_OUTCOME, "error")
    fault_report.append(row)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    rows = config.stash.get(_ROWS, [])
    if not rows:
        return
    terminalreporter.section("fault-injection figures")
    width = max(len(row["test"]) for row in rows)
    terminalreporter.write_line(
        f"{'test':<{width}} " + " ".join(f"{column:>10}" for column in _COLUMNS)
    )
    for row in rows:
        cells = " ".join(f"{row.get(column, '-')!s:>10}" for column in _COLUMNS)
        terminalreporter.write_line(f"{row['test']:<{width}} {cells}")
    terminalreporter.write_line(f"(all figures: {REPORT_PATH})")


def task_queues(name: str) -> list[str]:
    """A task queue and the dead-letter, delay and revocation queues a worker may
    declare for it."""
    return [
        name,
        dead_letter_queue(name),
        parked_queue(name),
        revoked_queue(name),
        *delay_queues(name),
    ]


@pytest.fixture
async def task_queue(amqp_url: str) -> AsyncIterator[str]:
    """A task name no other test uses; its queues on the shared broker are deleted afterwards."""
    name = f"leveret-fault-{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        await delete_queues(amqp_url, task_queues(name))


@pytest.fixture
async def proxy(amqp_url: str) -> AsyncIterator[TCPProxy]:
    """A TCP proxy of the test's own in front of the shared broker."""
    parts = urlsplit(AMQP_URL)
    started = await TCPProxy(parts.hostname or "127.0.0.1", parts.port or 5672).start()
    try:
        yield started
    finally:
        await started.close()


@pytest.fixture
def logs(tmp_path: Path) -> Callable[[str], Path]:
    """``logs(name)``: a fresh log path for a process of this test."""
    return lambda name: tmp_path / f"{name}.log"
