"""``leveret demo``: its summary, its rates, its width, and Ctrl-C."""

from __future__ import annotations

import importlib.util
import re
import signal

import pytest

from tests.cli.conftest import Reaper, base_env, leveret, spawn
from tests.conftest import AMQP_URL


def _rates(output: str) -> dict[str, tuple[str, str]]:
    """The rate each progress bar ended on, and the summary's, by stream."""
    bars = {
        match["name"]: match["rate"]
        for match in re.finditer(r"^(?P<name>sent|done|calls) .* (?P<rate>[\d,]+/s) ", output, re.M)
    }
    table = {
        match["name"]: match["rate"]
        for match in re.finditer(
            r"^│ (?P<name>tasks sent|tasks done|RPC calls) .*?│ +(?P<rate>[\d,]+/s) │", output, re.M
        )
    }
    return {
        "sent": (bars["sent"], table["tasks sent"]),
        "done": (bars["done"], table["tasks done"]),
        "calls": (bars["calls"], table["RPC calls"]),
    }


def test_leveret_demo_runs_on_the_in_memory_broker_in_80_columns_with_rates_that_agree() -> None:
    result = leveret("demo", "--tasks", "500", "--calls", "50", "--url", "memory://")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    assert lines[0] == f"leveret demo against memory:// (event loop {loop})"
    assert max(len(line) for line in lines) <= 80
    assert any(re.match(r"│ tasks sent +│ +500 │", line) for line in lines)
    assert any(re.match(r"│ tasks done +│ +500 │", line) for line in lines)
    assert any(re.match(r"│ RPC calls +│ +50 │", line) for line in lines)
    for bar, summary in _rates(result.stdout).values():
        assert bar == summary


def test_leveret_demo_runs_against_rabbitmq_and_prints_a_summary(amqp_url: str) -> None:
    result = leveret("demo", "--tasks", "300", "--calls", "50", "--url", AMQP_URL, timeout=120)
    assert result.returncode == 0, result.stderr
    assert re.search(r"│ tasks done +│ +300 │", result.stdout)
    assert result.stderr == ""


@pytest.mark.parametrize("broker", ["memory", "rabbitmq"])
def test_ctrl_c_during_the_demo_stops_it_with_one_line(
    broker: str, reaper: Reaper, request: pytest.FixtureRequest
) -> None:
    url = "memory://" if broker == "memory" else request.getfixturevalue("amqp_url")
    demo = reaper(spawn("demo", "--tasks", "1000000", "--url", url, env=base_env()))
    assert demo.stdout is not None
    first = demo.stdout.readline()  # printed once it is connected, before the first task
    assert first.startswith("leveret demo against ")
    demo.send_signal(signal.SIGINT)
    out, err = demo.communicate(timeout=30)
    assert (demo.returncode, err) == (130, "leveret demo: interrupted\n")
    assert "Traceback" not in out
