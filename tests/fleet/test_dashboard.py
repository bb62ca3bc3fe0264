"""The dashboard in a real browser (headless Chromium from the system's packages),
over ``leveret run`` and ``leveret dashboard`` processes on the real broker."""

from __future__ import annotations

import os
import shutil
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from leveret import connect
from leveret.patterns import Master, dead_letter_queue, revoked_queue
from tests.cli.conftest import Project, Reaper, free_port, spawn
from tests.conftest import AMQP_URL

pytestmark = [pytest.mark.browser, pytest.mark.rabbitmq_only]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

BOARD_APP = textwrap.dedent(
    """
    import asyncio
    import os
    from pathlib import Path
    from leveret import App

    app = App(prefix=os.environ["APP_PREFIX"])
    broken = Path(os.environ["APP_BROKEN"])

    @app.task(prefetch_count=20)
    async def work(*, n: int) -> None:
        await asyncio.sleep(0.01)

    @app.task
    async def flaky(*, n: int) -> None:
        if broken.exists():
            raise RuntimeError("the flaky service is down")

    @app.task(prefetch_count=4)
    async def nap(*, seconds: float) -> None:
        await asyncio.sleep(seconds)

    @app.rpc
    async def multiply(*, x: int, y: int) -> int:
        return x * y
    """
)
TASKS = ("work", "flaky", "nap")


def _browser() -> Any:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        message = (
            f"{CHROMIUM} and {CHROMEDRIVER} are needed: apt-get install chromium chromium-driver"
        )
        if os.environ.get("CI"):
            pytest.fail(message + " (CI=true: the browser tests must not skip)")
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1400,1100")
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def _until(driver: Any, condition: Callable[[Any], Any], what: str, timeout: float = 60) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition, what)


def _text(driver: Any, css: str) -> str:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        text: str = driver.find_element(By.CSS_SELECTOR, css).text
        return text
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def _click(driver: Any, css: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, css).click()


@pytest.fixture
def board(project: Project, reaper: Reaper) -> Iterator[tuple[Project, str]]:
    """A worker process and a dashboard process for a fresh app; the dashboard's address."""
    (project.folder / "boardapp.py").write_text(BOARD_APP)
    project.env["APP_BROKEN"] = str(project.folder / "broken")
    reaper(spawn("run", "boardapp:app", "--heartbeat-interval", "0.5", env=project.env))
    port = free_port()
    reaper(spawn("dashboard", project.prefix, "--port", str(port), env=project.env))
    address = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(address + "state", timeout=5):
                break
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    try:
        yield project, address
    finally:
        reaper.reap()
        _delete_queues(project)


def _delete_queues(project: Project) -> None:
    import asyncio

    async def delete() -> None:
        async with await connect(AMQP_URL) as conn:
            channel = await conn.channel()
            for name in TASKS:
                task = f"{project.prefix}.{name}"
                for queue in (task, dead_letter_queue(task), revoked_queue(task)):
                    await channel.queue_delete(queue)
            await channel.queue_delete(f"{project.prefix}.multiply")

    asyncio.run(delete())


def _call(project: Project, times: int) -> None:
    import asyncio

    from leveret.patterns import RPC

    async def call() -> None:
        async with await connect(AMQP_URL) as conn:
            rpc = await RPC.create(await conn.channel())
            for n in range(times):
                assert await rpc.call(f"{project.prefix}.multiply", {"x": n, "y": 2}) == 2 * n
            await rpc.close()

    asyncio.run(call())


def _send(project: Project, name: str, tasks: list[dict[str, Any]], **options: Any) -> None:
    import asyncio

    async def send() -> None:
        async with await connect(AMQP_URL) as conn:
            master = Master(await conn.channel())
            for kwargs in tasks:
                await master.create_task(f"{project.prefix}.{name}", kwargs, **options)

    asyncio.run(send())


def test_the_dashboard_shows_the_fleet_live_and_replays_and_cancels_from_the_page(
    board: tuple[Project, str], tmp_path: Path
) -> None:
    project, address = board
    prefix = project.prefix
    driver = _browser()
    try:
        driver.get(address)
        _until(driver, lambda d: _text(d, "#workers tr[data-state=alive]"), "a worker alive")
        assert f"{prefix}.work" in _text(driver, f'#queues tr[data-queue="{prefix}.work"]')
        assert "management plugin" in _text(driver, "#not-shown")  # the shared broker has none

        _send(project, "work", [{"n": n} for n in range(300)])
        rate = f'#queues tr[data-queue="{prefix}.work"] .rate'
        _until(driver, lambda d: _text(d, rate) not in ("", "-", "0.0"), "the rate of work move")

        (project.folder / "broken").touch()
        _send(project, "flaky", [{"n": 1}, {"n": 2}])
        count = f'#dead-letters tr[data-dlq="{prefix}.flaky"] .count'
        _until(driver, lambda d: _text(d, count) == "2", "2 dead letters of flaky")
        assert "the flaky service is down" in _text(
            driver, f'#dead-letters tr[data-dlq="{prefix}.flaky"]'
        )
        (project.folder / "broken").unlink()
        _click(driver, f'#dead-letters tr[data-dlq="{prefix}.flaky"] button.replay')
        _until(driver, lambda d: _text(d, count) == "0", "the dead letters of flaky replayed")

        _call(project, 50)
        latency = f'#rpc tr[data-method="{prefix}.multiply"] .p50'
        _until(driver, lambda d: _text(d, latency).endswith(" ms"), "the RPC method's p50")

        _send(project, "nap", [{"seconds": 300}], message_id="a-long-nap")
        cancel = '#workers button.cancel[data-message-id="a-long-nap"]'
        _until(driver, lambda d: _text(d, cancel), "the long nap running, with a cancel button")
        driver.save_screenshot(str(tmp_path / "dashboard.png"))
        _click(driver, cancel)
        napped = f'#dead-letters tr[data-dlq="{prefix}.nap"]'
        _until(driver, lambda d: "cancelled" in _text(d, napped), "the nap dead-lettered")
        assert _text(driver, f"{napped} .count") == "1"
        assert not _text(driver, cancel)
        shots = os.environ.get("LEVERET_SCREENSHOTS")
        if shots:  # the README's picture: LEVERET_SCREENSHOTS=docs pytest -m browser
            shutil.copy(tmp_path / "dashboard.png", Path(shots) / "dashboard.png")
    finally:
        driver.quit()
