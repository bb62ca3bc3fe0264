"""``leveret run`` fires an app's schedules; ``leveret schedule list`` shows them."""

from __future__ import annotations

import datetime
import signal
import textwrap
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from leveret import connect
from leveret.amqp import Delivery
from leveret.patterns import dead_letter_queue, revoked_queue, scheduler_queue
from tests.cli.conftest import Reaper, base_env, leveret, spawn
from tests.conftest import AMQP_URL
from tests.support.waiting import wait_until

pytestmark = pytest.mark.rabbitmq_only

SCHEDULED_APP = textwrap.dedent(
    """
    import os
    from leveret import App, Schedule

    app = App(prefix=os.environ["APP_PREFIX"])

    @app.task(schedule="0 3 * * *")
    async def nightly() -> None: ...

    app.schedule(os.environ["APP_PREFIX"] + ".ticks", every=0.5, name="ticks")
    app.schedule(nightly, cron="30 2 * * *", timezone="Europe/Berlin")
    """
)


@pytest.fixture
async def scheduled(tmp_path: Path) -> AsyncIterator[tuple[dict[str, str], list[str]]]:
    """The app's environment, and the message ids of the ticks that reach its queue."""
    prefix = f"app-{uuid.uuid4().hex[:8]}"
    (tmp_path / "schedapp.py").write_text(SCHEDULED_APP)
    env = base_env(AMQP_URL=AMQP_URL, APP_PREFIX=prefix, PYTHONPATH=str(tmp_path))
    ids: list[str] = []

    def record(delivery: Delivery) -> None:
        ids.append(delivery.properties.message_id or "")
        delivery.ack()

    async with await connect(AMQP_URL) as conn:
        channel = await conn.channel()
        await channel.queue_declare(f"{prefix}.ticks", durable=True)
        await channel.consume(f"{prefix}.ticks", record)
        yield env, ids
        cleanup = await conn.channel()
        nightly = f"{prefix}.nightly"  # the app's other task: its worker's queues
        for queue in (
            f"{prefix}.ticks",
            scheduler_queue(prefix),
            nightly,
            dead_letter_queue(nightly),
            revoked_queue(nightly),
        ):
            await cleanup.queue_delete(queue)


def _section(output: str, schedule_id: str) -> str:
    return output.partition(schedule_id + "\n")[2].split("\n\n")[0]


async def test_run_fires_the_schedules_and_list_shows_them_without_taking_the_token(
    scheduled: tuple[dict[str, str], list[str]], reaper: Reaper
) -> None:
    env, ids = scheduled
    never = leveret("schedule", "list", "schedapp:app", env=env)
    assert never.returncode == 0, never.stderr
    assert "last:     never" in never.stdout

    runner = reaper(spawn("run", "schedapp:app", env=env))
    await wait_until(lambda: len(ids) >= 2, 30, "ticks from leveret run")
    while_running = leveret("schedule", "list", "schedapp:app", env=env)
    assert "not shown: a running scheduler holds it" in while_running.stdout
    count = len(ids)
    await wait_until(lambda: len(ids) > count + 1, 10, "ticks after the listing")
    assert len(ids) == len(set(ids))

    runner.send_signal(signal.SIGINT)
    _, err = runner.communicate(timeout=30)
    assert runner.returncode == 0, err
    assert "3 schedules" in err  # the serving line counts them

    after = leveret("schedule", "list", "schedapp:app", env=env)
    last_tick = ids[-1].rpartition("@")[2]
    shown = datetime.datetime.fromisoformat(last_tick).isoformat(" ")
    assert f"last:     {shown}" in after.stdout


def test_list_shows_timing_timezone_and_the_next_fire_times(
    scheduled: tuple[dict[str, str], list[str]],
) -> None:
    env, _ = scheduled
    listed = leveret("schedule", "list", "schedapp:app", "--count", "2", env=env)
    assert listed.returncode == 0, listed.stderr
    berlin = _section(listed.stdout, f"{env['APP_PREFIX']}.nightly cron 30 2 * * * Europe/Berlin")
    assert "timing:   30 2 * * * (Europe/Berlin)" in berlin
    next_line = next(line for line in berlin.splitlines() if line.startswith("  next:"))
    times = [datetime.datetime.fromisoformat(t.strip()) for t in next_line[8:].split(", ")]
    assert len(times) == 2 and all(t.strftime("%H:%M") in ("02:30", "03:00") for t in times)
    assert "timing:   every 0.5 s (UTC)" in _section(listed.stdout, "ticks")


def test_list_of_an_app_without_schedules_says_so(tmp_path: Path) -> None:
    (tmp_path / "plain.py").write_text("from leveret import App\napp = App()\n")
    listed = leveret("schedule", "list", "plain:app", env=base_env(PYTHONPATH=str(tmp_path)))
    assert (listed.returncode, listed.stdout.strip()) == (0, "plain:app has no schedules")
