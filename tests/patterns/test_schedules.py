"""Schedules: when ticks fall (cron in a timezone across DST, intervals), and the
scheduler firing each tick once however many processes run one."""

from __future__ import annotations

import datetime
import itertools
import json
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import leveret
from leveret.amqp import Delivery
from leveret.exceptions import ConfigurationError
from leveret.patterns import Schedule, ScheduledTask, Scheduler, read_token, scheduler_queue
from tests.patterns.conftest import Cleanup, ConnectBroker
from tests.support.waiting import wait_until

UTC = datetime.UTC
BERLIN = ZoneInfo("Europe/Berlin")
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=UTC)


def _utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime.datetime:
    return datetime.datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


def _hhmm(ticks: list[datetime.datetime]) -> list[str]:
    return [tick.astimezone(BERLIN).strftime("%d %H:%M%z") for tick in ticks]


def _gaps(ticks: list[datetime.datetime]) -> list[float]:
    return [(b - a).total_seconds() for a, b in itertools.pairwise(ticks)]


# -- when ticks fall --------------------------------------------------------------------


def test_an_interval_ticks_at_multiples_of_itself_since_the_epoch() -> None:
    every = Schedule(every=datetime.timedelta(minutes=5))
    ticks = every.next_ticks(_utc(2026, 1, 1, 10, 7, 30), 3)
    assert ticks == [_utc(2026, 1, 1, 10, 10), _utc(2026, 1, 1, 10, 15), _utc(2026, 1, 1, 10, 20)]


def test_a_gap_of_many_ticks_makes_only_the_latest_due() -> None:
    every = Schedule(every=1)
    after = _utc(2026, 1, 1, 0, 0, 0)
    assert every.due(after, _utc(2026, 1, 1, 0, 0, 0)) is None
    assert every.due(after, _utc(2026, 1, 1, 3, 0, 0, 500000)) == _utc(2026, 1, 1, 3, 0, 0)
    dense = Schedule(cron="* * * * * *")  # each second, a day of them missed
    assert dense.due(after, _utc(2026, 1, 2, 0, 0, 0, 1)) == _utc(2026, 1, 2, 0, 0, 0)


def test_a_fixed_time_in_berlin_on_the_spring_forward_day_fires_once_after_the_gap() -> None:
    nightly = Schedule(cron="30 2 * * *", timezone="Europe/Berlin")
    ticks = nightly.next_ticks(datetime.datetime(2026, 3, 28, 12, tzinfo=BERLIN), 2)
    # 02:30 does not exist on 29 March: cronsim fires at 03:00 CEST, once.
    assert _hhmm(ticks) == ["29 03:00+0200", "30 02:30+0200"]


def test_a_fixed_time_in_berlin_on_the_fall_back_day_fires_once() -> None:
    nightly = Schedule(cron="30 2 * * *", timezone="Europe/Berlin")
    ticks = nightly.next_ticks(datetime.datetime(2026, 10, 24, 12, tzinfo=BERLIN), 2)
    # 02:30 happens twice on 25 October: the first (CEST) fires, the second does not.
    assert _hhmm(ticks) == ["25 02:30+0200", "26 02:30+0100"]


def test_every_half_hour_in_berlin_follows_the_clock_through_the_repeated_hour() -> None:
    half = Schedule(cron="*/30 * * * *", timezone="Europe/Berlin")
    ticks = half.next_ticks(datetime.datetime(2026, 10, 25, 1, 45, tzinfo=BERLIN), 4)
    assert _hhmm(ticks) == ["25 02:00+0200", "25 02:30+0200", "25 02:00+0100", "25 02:30+0100"]
    assert _gaps(ticks) == [1800] * 3


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({}, "not neither"),
        ({"cron": "* * * * *", "every": 5}, "not both"),
        ({"every": 0}, "an interval is positive"),
        ({"every": "5"}, "seconds \\(a number\\) or a timedelta"),
        ({"every": 5, "timezone": "Europe/Berlin"}, "applies to cron schedules"),
        ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, "not an IANA timezone"),
        ({"cron": "61 * * * *"}, "is not a cron expression: Bad minute"),
        ({"every": 5, "kwargs": [1]}, "must be a mapping"),
    ],
)
def test_a_schedule_that_cannot_be_is_refused_in_words(options: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigurationError, match=words):
        Schedule(**options)


def test_cron_without_cronsim_installed_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cronsim", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'leveret\[cron\]'"):
        Schedule(cron="*/5 * * * *")
    Schedule(every=5)  # intervals need nothing


def test_the_app_declares_schedules_from_the_decorator_and_from_schedule() -> None:
    app = leveret.App(prefix="shop")

    @app.task(schedule="0 3 * * *")
    async def sweep() -> None: ...

    @app.task(schedule=Schedule(every=60, kwargs={"size": 1}))
    async def report(*, size: int) -> None: ...

    app.schedule(report, cron="0 9 * * MON", timezone="Europe/Berlin", kwargs={"size": 7})
    assert sorted(app.schedules) == [
        "shop.report cron 0 9 * * MON Europe/Berlin",
        "shop.report every 60s",
        "shop.sweep cron 0 3 * * * UTC",
    ]
    assert app.schedules["shop.report every 60s"].schedule.kwargs == {"size": 1}
    assert len(set(app.schedules.values())) == 3  # hashable, as frozen values are


def test_the_app_refuses_schedule_kwargs_the_task_cannot_take_and_twice_the_same() -> None:
    app = leveret.App()

    @app.task
    async def report(*, size: int) -> None: ...

    with pytest.raises(TypeError, match="unexpected"):
        app.schedule(report, every=60, kwargs={"colour": "red"})
    app.schedule(report, every=60, kwargs={"size": 1})
    with pytest.raises(ConfigurationError, match="pass name="):
        app.schedule(report, every=60, kwargs={"size": 2})
    app.schedule(report, every=60, kwargs={"size": 2}, name="big report")
    assert "big report" in app.schedules


# -- the scheduler on a broker ------------------------------------------------------------


class Fired:
    """The message ids of the tasks a schedule sent, in arrival order."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def __call__(self, delivery: Delivery) -> None:
        assert delivery.properties.message_id is not None
        self.ids.append(delivery.properties.message_id)
        delivery.ack()

    def ticks(self) -> list[datetime.datetime]:
        return [datetime.datetime.fromisoformat(mid.rpartition("@")[2]) for mid in self.ids]

    def assert_none_twice(self) -> None:
        doubled = {mid for mid in self.ids if self.ids.count(mid) > 1}
        assert not doubled, f"ticks fired twice: {sorted(doubled)}"


Start = Callable[..., Awaitable[Scheduler]]


@pytest.fixture
async def setup(
    connect_broker: ConnectBroker, cleanup: Cleanup
) -> AsyncIterator[tuple[str, str, Fired, Start]]:
    """An app name and task queue of the test's own, what arrives on the queue, and a
    way to start schedulers (each on a connection of its own; all closed after)."""
    app = f"leveret-test-sched-{uuid.uuid4().hex[:8]}"
    task = cleanup.queue(f"{app}.tick")
    cleanup.queue(scheduler_queue(app))
    worker = await (await connect_broker()).channel()
    await worker.queue_declare(task, durable=True)
    fired = Fired()
    await worker.consume(task, fired)
    started: list[Scheduler] = []

    async def start(*entries: ScheduledTask, **options: Any) -> Scheduler:
        connection = await connect_broker()
        scheduler = await Scheduler.create(
            await connection.channel(publisher_confirms=False), app, entries, **options
        )
        started.append(scheduler)
        return scheduler

    yield app, task, fired, start
    for scheduler in started:
        await scheduler.close()


def _leader(schedulers: list[Scheduler]) -> Scheduler | None:
    leaders = [scheduler for scheduler in schedulers if scheduler.leading]
    return leaders[0] if len(leaders) == 1 else None


async def test_an_interval_schedule_fires_each_tick_with_its_kwargs_and_id(
    setup: tuple[str, str, Fired, Start],
) -> None:
    _, task, fired, start = setup
    entry = ScheduledTask(task, Schedule(every=0.2, kwargs={"n": 1}))
    await start(entry)
    await wait_until(lambda: len(fired.ids) >= 4, 10, "four ticks")
    assert all(mid.startswith(f"{task} every 0.2s@") for mid in fired.ids)
    ticks = fired.ticks()
    step = datetime.timedelta(seconds=0.2)
    assert all((tick - _EPOCH) % step == datetime.timedelta(0) for tick in ticks)
    assert all(gap > 0 for gap in _gaps(ticks))
    fired.assert_none_twice()


async def test_a_cron_schedule_fires_at_its_ticks(setup: tuple[str, str, Fired, Start]) -> None:
    _, task, fired, start = setup
    await start(ScheduledTask(task, Schedule(cron="* * * * * *", timezone="Europe/Berlin")))
    await wait_until(lambda: len(fired.ids) >= 2, 10, "two ticks")
    ticks = fired.ticks()
    assert (ticks[1] - ticks[0]).total_seconds() == 1 and ticks[0].microsecond == 0


async def test_three_schedulers_fire_each_tick_once(setup: tuple[str, str, Fired, Start]) -> None:
    _, task, fired, start = setup
    entry = ScheduledTask(task, Schedule(every=0.1))
    schedulers = [await start(entry) for _ in range(3)]
    await wait_until(lambda: len(fired.ids) >= 20, 20, "twenty ticks")
    assert _leader(schedulers) is not None  # exactly one leads
    fired.assert_none_twice()
    ticks = fired.ticks()
    assert ticks == sorted(ticks)


async def test_when_the_leader_stops_another_takes_over_and_no_tick_fires_twice(
    setup: tuple[str, str, Fired, Start],
) -> None:
    _, task, fired, start = setup
    entry = ScheduledTask(task, Schedule(every=0.1))
    schedulers = [await start(entry) for _ in range(3)]
    for _ in range(2):
        leader = await wait_until(lambda: _leader(schedulers), 10, "one leader")
        wanted = len(fired.ids) + 5
        await leader.close()
        schedulers.remove(leader)
        await wait_until(lambda: len(fired.ids) >= wanted, 10, "ticks after the handover")  # noqa: B023
    fired.assert_none_twice()


async def test_ticks_due_while_no_scheduler_ran_fire_once_late(
    setup: tuple[str, str, Fired, Start], connect_broker: ConnectBroker
) -> None:
    app, task, fired, start = setup
    entry = ScheduledTask(task, Schedule(every=10))
    now = datetime.datetime.now(UTC)
    last = now - (now - _EPOCH) % datetime.timedelta(seconds=10) - datetime.timedelta(seconds=60)
    # The token of a scheduler that fired a minute ago, and six ticks since, none alive.
    side = await (await connect_broker()).channel()
    await side.queue_declare(
        scheduler_queue(app), durable=True, arguments={"x-single-active-consumer": True}
    )
    token = {"fired": {entry.id: last.isoformat()}}
    await side.publish(json.dumps(token).encode(), routing_key=scheduler_queue(app))
    # Start in the first half of a period, so that the next tick is seconds away.
    await wait_until(
        lambda: (datetime.datetime.now(UTC) - _EPOCH).seconds % 10 < 5, 10, "a period's start"
    )
    before = datetime.datetime.now(UTC)
    await start(entry)
    await wait_until(lambda: fired.ids, 10, "the tick after the gap")
    # One tick for the whole gap, the latest, due before this scheduler started: late.
    assert fired.ticks() == [before - (before - _EPOCH) % datetime.timedelta(seconds=10)]


async def test_a_new_schedule_waits_for_its_next_tick_instead_of_firing_at_once(
    setup: tuple[str, str, Fired, Start],
) -> None:
    _, task, fired, start = setup
    daily = ScheduledTask(task, Schedule(cron="0 4 * * *"))
    often = ScheduledTask(task, Schedule(every=0.1, name="often"))
    await start(daily, often)
    await wait_until(lambda: len(fired.ids) >= 5, 10, "the frequent ticks")
    assert all(mid.startswith("often@") for mid in fired.ids)


async def test_a_second_token_is_dropped_keeping_the_later_ticks(
    setup: tuple[str, str, Fired, Start], connect_broker: ConnectBroker
) -> None:
    app, task, fired, start = setup
    entry = ScheduledTask(task, Schedule(every=0.2))
    await start(entry)
    await wait_until(lambda: fired.ids, 10, "a first tick")
    side = await (await connect_broker()).channel()
    far = datetime.datetime.now(UTC) + datetime.timedelta(seconds=1)
    extra = {"fired": {entry.id: far.isoformat()}, "written": far.isoformat()}
    await side.publish(json.dumps(extra).encode(), routing_key=scheduler_queue(app))

    async def one_token() -> bool:
        ok = await side.queue_declare(scheduler_queue(app), passive=True)
        return bool(ok.message_count == 0)  # the held one is unacked, not counted

    await wait_until(one_token, 10, "the extra token dropped")
    count = len(fired.ids)
    await wait_until(lambda: len(fired.ids) > count, 10, "a tick after the drop")
    assert fired.ticks()[count] > far  # the extra's later tick was kept: none before it
    fired.assert_none_twice()


async def test_a_message_in_the_token_queue_that_is_no_token_stalls_nothing(
    setup: tuple[str, str, Fired, Start],
    connect_broker: ConnectBroker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, task, fired, start = setup
    side = await (await connect_broker()).channel()
    await side.queue_declare(
        scheduler_queue(app), durable=True, arguments={"x-single-active-consumer": True}
    )
    await side.publish(b"hello", routing_key=scheduler_queue(app))  # the only "token"
    await start(ScheduledTask(task, Schedule(every=0.2)))
    await wait_until(lambda: len(fired.ids) >= 2, 10, "ticks")
    assert "a message that is not a token (b'hello')" in caplog.text


async def test_the_leader_rewrites_the_token_with_no_tick_due(
    setup: tuple[str, str, Fired, Start], connect_broker: ConnectBroker
) -> None:
    app, task, fired, start = setup
    scheduler = await start(ScheduledTask(task, Schedule(cron="0 4 1 1 *")), refresh=0.2)
    await wait_until(lambda: scheduler.leading, 10, "the scheduler to lead")
    started = datetime.datetime.now(UTC)
    await wait_until(
        lambda: datetime.datetime.now(UTC) > started + datetime.timedelta(seconds=1),
        5,
        "a second of leading",
    )
    await scheduler.close()  # the token goes back to the queue, as last written
    side = await (await connect_broker()).channel()
    token = await wait_until(
        lambda: side.get(scheduler_queue(app), no_ack=True), 5, "the token back in its queue"
    )
    written = datetime.datetime.fromisoformat(json.loads(token.body)["written"])
    assert written > started + datetime.timedelta(seconds=0.4)  # rewritten while leading
    assert fired.ids == []


async def test_refresh_beyond_a_minute_is_refused(
    setup: tuple[str, str, Fired, Start],
) -> None:
    _, task, _, start = setup
    with pytest.raises(ConfigurationError, match=r"refresh=61: it is in \(0, 60\]"):
        await start(ScheduledTask(task, Schedule(every=1)), refresh=61)


async def test_an_app_fires_its_schedule_at_its_own_worker(
    connection: Any, cleanup: Cleanup
) -> None:
    app = leveret.App(prefix=f"leveret-test-app-{uuid.uuid4().hex[:8]}")
    ran: list[int] = []

    @app.task(schedule=Schedule(every=0.2, kwargs={"n": 7}))
    async def tick(*, n: int) -> None:
        ran.append(n)

    cleanup.queue(tick.name)
    cleanup.queue(scheduler_queue(app.name))
    master, rpc = await app.start(connection)
    scheduler = await app.start_scheduler(connection)
    assert scheduler is not None
    await wait_until(lambda: len(ran) >= 2, 10, "the scheduled task to run twice")
    assert set(ran) == {7}
    for service in (scheduler, master, rpc):
        await service.close()


async def test_an_app_without_schedules_starts_no_scheduler(connection: Any) -> None:
    assert await leveret.App().start_scheduler(connection) is None


def test_a_token_body_reads_back_or_is_refused() -> None:
    tick = _utc(2026, 1, 1, 12)
    assert read_token(json.dumps({"fired": {"a": tick.isoformat()}}).encode()) == {"a": tick}
    assert read_token(b"not json") is None
    assert read_token(b'{"fired": {"a": "yesterday"}}') is None
    assert read_token(b'{"fired": {"a": "2026-01-01T12:00:00"}}') is None  # no timezone
