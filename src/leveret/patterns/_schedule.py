"""Schedules: when a periodic task is due, as cron in a timezone or a fixed interval.

Cron expressions are parsed and stepped by cronsim (the optional extra
``leveret[cron]``), DST included: on a day the clocks skip an hour a time inside
the gap fires at the first minute after it, and on a day they repeat an hour a
fixed time fires once, in its first occurrence (cronsim follows Debian cron).
An interval schedule ticks at whole multiples of its interval since the Unix
epoch, so every process computes the same ticks without talking to the others.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..exceptions import ConfigurationError

UTC: Final = datetime.UTC
CRON_EXTRA: Final = "pip install 'leveret[cron]'"
_EPOCH: Final = datetime.datetime(1970, 1, 1, tzinfo=UTC)

# Stepping a dense cron from a long-past tick is cut short past this many ticks:
# only the latest tick of a gap is wanted, so the search restarts near the present.
_MAX_STEPS: Final = 10_000


@dataclasses.dataclass(frozen=True)
class Schedule:
    """When a task runs: ``Schedule(cron="*/5 * * * *", timezone="Europe/Berlin")``, or
    ``Schedule(every=30)`` (seconds or a :class:`~datetime.timedelta`).

    ``kwargs`` are the task's keyword arguments at each tick. ``name`` names the
    schedule (by default its task and timing; two schedules of one task with the
    same timing need names of their own). ``timezone`` (an IANA name) is the one
    a cron expression reads in; an interval has none.

    Raises:
        ConfigurationError: neither or both of ``cron`` and ``every``, an interval
            that is not positive, an unknown timezone, a malformed cron expression,
            or cron without cronsim installed (``pip install 'leveret[cron]'``).
    """

    cron: str | None = None
    every: float | datetime.timedelta | None = None
    timezone: str = "UTC"
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    name: str | None = None

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise ConfigurationError(
                "a schedule has either cron='...' or every=seconds, not "
                + ("both" if self.cron is not None else "neither")
            )
        if not isinstance(self.kwargs, Mapping):
            raise ConfigurationError(
                f"schedule kwargs must be a mapping of keyword arguments, "
                f"not {type(self.kwargs).__name__}"
            )
        object.__setattr__(self, "kwargs", MappingProxyType(dict(self.kwargs)))
        if self.every is not None:
            if isinstance(self.every, datetime.timedelta):
                seconds = self.every.total_seconds()
            elif isinstance(self.every, int | float) and not isinstance(self.every, bool):
                seconds = float(self.every)
            else:
                raise ConfigurationError(
                    f"every={self.every!r}: an interval is seconds (a number) or a timedelta"
                )
            if not math.isfinite(seconds) or seconds < 1e-6:
                raise ConfigurationError(
                    f"every={self.every!r}: an interval is positive (a microsecond at least)"
                )
            if self.timezone != "UTC":
                raise ConfigurationError(
                    f"timezone={self.timezone!r} applies to cron schedules; an interval "
                    "schedule ticks at multiples of its interval since the Unix epoch"
                )
            object.__setattr__(self, "every", seconds)
            return
        assert self.cron is not None
        self._zone()
        cronsim = _cronsim()
        try:
            cronsim(self.cron, datetime.datetime.now(UTC))
        except Exception as exc:  # cronsim's CronSimError names the field
            raise ConfigurationError(
                f"cron={self.cron!r} is not a cron expression: {exc}"
            ) from None

    @property
    def spec(self) -> str:
        """The timing in words: ``cron */5 * * * * Europe/Berlin`` or ``every 30s``."""
        if self.cron is not None:
            return f"cron {self.cron} {self.timezone}"
        return f"every {self.every:g}s"

    def _zone(self) -> datetime.tzinfo:
        if self.timezone == "UTC":
            return UTC  # cronsim applies no DST handling to UTC itself
        try:
            return ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigurationError(
                f"timezone={self.timezone!r} is not an IANA timezone (e.g. 'Europe/Berlin')"
            ) from None

    def ticks_after(self, when: datetime.datetime) -> Iterator[datetime.datetime]:
        """The ticks strictly after ``when`` (timezone-aware), in order, endlessly, in UTC."""
        if self.every is not None:
            assert isinstance(self.every, float)
            # timedelta arithmetic is exact (whole microseconds): floats would make a
            # tick fall a hair before itself and fire twice.
            step = datetime.timedelta(seconds=self.every)
            n = (when - _EPOCH) // step + 1
            while True:
                yield _EPOCH + n * step
                n += 1
        assert self.cron is not None
        local = when.astimezone(self._zone())
        for tick in _cronsim()(self.cron, local):
            # In UTC: Python compares and subtracts times of one zone by their wall
            # clock, so the repeated hour of a fall-back day would run backwards.
            utc = tick.astimezone(UTC)
            if utc > when:  # cronsim starts from whole seconds
                yield utc

    def next_ticks(self, after: datetime.datetime, count: int) -> list[datetime.datetime]:
        """The next ``count`` ticks after ``after``."""
        ticks = self.ticks_after(after)
        return [next(ticks) for _ in range(count)]

    def due(self, after: datetime.datetime, now: datetime.datetime) -> datetime.datetime | None:
        """The latest tick in ``(after, now]``, or ``None``: however many ticks a gap
        holds, one is due (the missed ones are not made up)."""
        latest = None
        for steps, tick in enumerate(self.ticks_after(after), 1):
            if tick > now:
                return latest
            latest = tick
            if steps == _MAX_STEPS:
                # Dense ticks, long ago: look again from shortly before now.
                span = (tick - after) / _MAX_STEPS * 100
                return self.due(max(tick, now - span), now) or tick
        return latest  # pragma: no cover - the ticks never end


@dataclasses.dataclass(frozen=True)
class ScheduledTask:
    """A task on a schedule: what :meth:`leveret.App.schedule` declares."""

    task: str
    schedule: Schedule

    @property
    def id(self) -> str:
        """Names the schedule across processes, and its ticks' message ids
        (``<id>@<tick in UTC, ISO 8601>``)."""
        return self.schedule.name or f"{self.task} {self.schedule.spec}"

    def message_id(self, tick: datetime.datetime) -> str:
        return f"{self.id}@{tick.astimezone(UTC).isoformat()}"


def _cronsim() -> Any:
    """cronsim's ``CronSim``, imported when a cron schedule needs it."""
    try:
        from cronsim import CronSim
    except ImportError:
        raise ConfigurationError(f"cron schedules need cronsim: {CRON_EXTRA}") from None
    return CronSim
